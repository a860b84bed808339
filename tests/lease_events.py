"""Random lease histories for the reconcile tests: what a datastore's subnets/ prefix goes
through (joins, leaves, changed attributes, nodes holding two leases, overlapping keys, values that
do not decode), as the informer delivers it."""

from __future__ import annotations

import ipaddress
import random

from gingham.dataplane.vxlan import stable_mac
from gingham.store.contract import KeyValue
from gingham.subnet.kinds import LeaseKind
from gingham.subnet.lease import LeaseAttrs
from gingham.sync.informer import Change, Snapshot, decoded
from gingham.sync.kinds import Undecodable

ROOT = "/t"
OWN_IP = "192.168.50.11"
OWN_SUBNET = ipaddress.IPv4Network("10.244.1.0/24")


class LeaseHistory:
    """A store's subnets/ keys, changed at random; each step is the Change it delivers."""

    def __init__(self, seed: int, backend: str) -> None:
        self.rng = random.Random(seed)
        self.backend = backend
        self.kind = LeaseKind(ROOT)
        self.values: dict[str, KeyValue] = {}
        self.revision = 1
        self.put(self.key(OWN_SUBNET), self.attrs(OWN_IP, backend))

    def key(self, subnet: ipaddress.IPv4Network) -> str:
        return f"{ROOT}/subnets/{subnet.network_address}-{subnet.prefixlen}"

    def attrs(self, ip: str, backend: str) -> bytes:
        data = {}
        if backend == "vxlan":
            # A VTEP's MAC is its node's (Gingham derives it from the node name), so two
            # leases of one node share their FDB entry.
            data = {"VNI": 1, "VtepMAC": stable_mac(ip)}
            if self.rng.random() < 0.05:
                data["VtepMAC"] = "not-a-mac"
        attrs = LeaseAttrs(ipaddress.IPv4Address(ip), backend, f"n{ip.split('.')[-1]}", data)
        return attrs.encode()

    def put(self, key: str, value: bytes) -> Change:
        self.revision += 1
        old = self.values.get(key)
        created = old.create_revision if old else self.revision
        kv = KeyValue(key, value, created, self.revision)
        self.values[key] = kv
        return Change(self.kind.name, key, decoded(self.kind, kv), self.revision)

    def delete(self, key: str) -> Change:
        self.revision += 1
        del self.values[key]
        return Change(self.kind.name, key, None, self.revision)

    def step(self) -> Change:
        rng = self.rng
        others = [k for k in self.values if k != self.key(OWN_SUBNET)]
        roll = rng.random()
        if others and roll < 0.3:
            return self.delete(rng.choice(others))
        if roll < 0.36:  # a value that does not decode, on a new or a known key
            key = rng.choice(others) if others and rng.random() < 0.5 else \
                self.key(self.subnet())
            return self.put(key, b"{not json")
        if roll < 0.38:
            return self.put(f"{ROOT}/subnets/garbage-{rng.randrange(3)}", b"{}")
        backend = self.backend if rng.random() < 0.93 else "udp"
        key = rng.choice(others) if others and rng.random() < 0.3 else self.key(self.subnet())
        return self.put(key, self.attrs(self.node_ip(), backend))

    def subnet(self) -> ipaddress.IPv4Network:
        third = self.rng.randrange(0, 40)
        length = 23 if self.rng.random() < 0.06 else 24  # overlapping leases now and then
        return ipaddress.IPv4Network(f"10.244.{third}.0/{length}", strict=False)

    def node_ip(self) -> str:
        if self.rng.random() < 0.07:
            return f"192.168.60.{self.rng.randrange(2, 250)}"  # behind a router
        return f"192.168.50.{self.rng.randrange(12, 60)}"  # node addresses get shared too

    def cleanup(self) -> list[Change]:
        """Delete every key whose value does not decode."""
        bad = [key for key, kv in self.values.items()
               if isinstance(decoded(self.kind, kv), Undecodable)]
        return [self.delete(key) for key in bad]

    def snapshot(self) -> Snapshot:
        return Snapshot(self.kind.name, {k: decoded(self.kind, kv)
                                         for k, kv in self.values.items()}, self.revision)

