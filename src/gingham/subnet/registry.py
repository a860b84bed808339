"""Thin I/O over the datastore for the network's keys: no allocation logic here."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from dataclasses import dataclass, replace

from gingham.model.network import NetworkConfig, NetworkConfigError, parse_network_config
from gingham.store.contract import Store
from gingham.subnet.kinds import LeaseKind
from gingham.subnet.lease import (
    DEFAULT_PREFIX,
    Lease,
    LeaseAttrs,
    LeaseDataError,
    NodeInfo,
    config_key,
    nodes_prefix,
    subnet_key,
    subnet_of_key,
    subnets_prefix,
)


class ConfigMissing(LookupError):
    pass


@dataclass
class LeaseListing:
    leases: list[Lease]
    problems: list[str]  # keys whose values do not parse; their subnets stay taken
    taken: set[ipaddress.IPv4Network]
    revision: int


class SubnetRegistry:
    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")

    # -- config ------------------------------------------------------------------------

    def get_config(self) -> NetworkConfig:
        return self.read_config()[0]

    def read_config(self) -> tuple[NetworkConfig, int]:
        """The config and its modification revision."""
        kv = self.store.get(config_key(self.prefix))
        if kv is None:
            raise ConfigMissing(self.missing_config())
        try:
            return parse_network_config(kv.value), kv.mod_revision
        except NetworkConfigError as err:
            raise NetworkConfigError(f"{config_key(self.prefix)}: {err}") from None

    def missing_config(self) -> str:
        return (f"no network config at {config_key(self.prefix)} "
                "(set one with `gingham config set -f net-conf.json`)")

    def set_config(self, config: NetworkConfig) -> None:
        self.store.put(config_key(self.prefix), json.dumps(config.to_json()).encode())

    def replace_config(self, config: NetworkConfig, expect_revision: int) -> bool:
        """Write the config only if it is still at `expect_revision` (0: absent)."""
        return self.store.compare_and_swap(config_key(self.prefix),
                                           json.dumps(config.to_json()).encode(),
                                           expect_revision)

    # -- leases ------------------------------------------------------------------------

    def leases(self) -> LeaseListing:
        kvs, revision = self.store.range(subnets_prefix(self.prefix))
        listing = LeaseListing([], [], set(), revision)
        kind = LeaseKind(self.prefix)
        for kv in kvs:
            try:
                subnet = subnet_of_key(self.prefix, kv.key)
                listing.taken.add(subnet)
                listing.leases.append(kind.decode(kv))
            except LeaseDataError as err:
                listing.problems.append(f"{kv.key}: {err}")
        return listing

    def write_lease(self, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs, store_lease: int,
                    expect_revision: int, config_revision: int | None = None) -> Lease | None:
        """Create (expect 0) or replace (expect its mod revision) a lease; None if raced.
        With `config_revision`, only while the config is still at that revision."""
        key = subnet_key(self.prefix, subnet)
        guard = None if config_revision is None else (config_key(self.prefix), config_revision)
        if not self.store.compare_and_swap(key, attrs.encode(), expect_revision, store_lease,
                                           guard):
            return None
        kv = self.store.get(key)
        return Lease(subnet, attrs, kv.mod_revision if kv else 0, store_lease,
                     kv.create_revision if kv else 0)

    def delete_lease(self, lease: Lease) -> bool:
        return self.store.compare_and_delete(subnet_key(self.prefix, lease.subnet),
                                             lease.mod_revision)

    # -- nodes -------------------------------------------------------------------------

    def put_node(self, node: NodeInfo, store_lease: int = 0) -> None:
        """Write the node's record; what was set on it since (labels by `gingham label
        nodes`, BGP fields by `gingham apply` of a Node, the VXLAN endpoint) stays; the
        agent's own labels (--label) win."""
        key = nodes_prefix(self.prefix) + node.name
        kv = self.store.get(key)
        with contextlib.suppress(LeaseDataError):
            if kv is not None:
                stored = NodeInfo.decode(kv.value)
                node = replace(node, labels={**stored.labels, **node.labels},
                               vxlan_address=stored.vxlan_address, vxlan_mac=stored.vxlan_mac,
                               ipv4_address=node.ipv4_address or stored.ipv4_address,
                               asn=stored.asn, rr_cluster_id=stored.rr_cluster_id)
        self.store.put(key, node.encode(), store_lease)

    def publish_vxlan(self, name: str, address: str, mac: str) -> None:
        """Set (or with "" clear) the node's VXLAN tunnel endpoint in its record."""
        self._edit_node(name, lambda node: replace(node, vxlan_address=address, vxlan_mac=mac))

    def nodes(self) -> tuple[list[NodeInfo], list[str]]:
        kvs, _ = self.store.range(nodes_prefix(self.prefix))
        nodes, problems = [], []
        for kv in kvs:
            try:
                nodes.append(NodeInfo.decode(kv.value))
            except LeaseDataError as err:
                problems.append(f"{kv.key}: {err}")
        return nodes, problems

    def label_node(self, name: str, edit) -> NodeInfo:
        """Change a node record's labels under compare-and-swap (its lease kept)."""
        return self._edit_node(name, lambda node: replace(node, labels=edit(node.labels)))

    def _edit_node(self, name: str, edit) -> NodeInfo:
        key = nodes_prefix(self.prefix) + name
        for _ in range(100):
            kv = self.store.get(key)
            if kv is None:
                raise LookupError(f"node {name} does not exist")
            node = edit(NodeInfo.decode(kv.value))
            if self.store.compare_and_swap(key, node.encode(), kv.mod_revision, kv.lease):
                return node
        raise RuntimeError(f"node {name} kept changing")

    def delete_node(self, name: str) -> bool:
        return self.store.delete(nodes_prefix(self.prefix) + name)
