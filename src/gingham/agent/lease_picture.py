"""The leases as this node knows them, folded in change by change (no I/O): every good
lease by subnet, the keys whose values do not decode, an overlap index, and the node
addresses the leases name (counted, so a node with two leases is dropped with its last)."""

from __future__ import annotations

import ipaddress
from collections import Counter

from gingham.subnet.lease import Lease, LeaseDataError, subnet_of_key
from gingham.subnet.space import SubnetIndex
from gingham.sync.kinds import Undecodable

Net = ipaddress.IPv4Network
Address = ipaddress.IPv4Address


class LeasePicture:
    def __init__(self, root: str) -> None:
        self.root = root
        self.listed = False  # until the first listing nothing is known, not "no leases"
        self.leases: dict[Net, Lease] = {}
        self.bad: dict[str, str] = {}  # key -> why its value does not decode
        self.index = SubnetIndex()
        self.node_ips: Counter[Address] = Counter()
        # Node addresses that appeared (True) or went (False) since the last take.
        self._node_changes: dict[Address, bool] = {}

    def subnet(self, key: str) -> Net | None:
        try:
            return subnet_of_key(self.root, key)
        except LeaseDataError:
            return None

    def replace(self, objects: dict[str, object]) -> None:
        """A full listing. A lease whose value went bad keeps what it last said, as on the
        change path: a value that does not decode says nothing, least of all "remove"."""
        leases, bad = {}, {}
        for key, obj in objects.items():
            if isinstance(obj, Lease):
                leases[obj.subnet] = obj
            elif isinstance(obj, Undecodable):
                bad[key] = obj.why
        for subnet in map(self.subnet, bad):
            if subnet is not None and subnet not in leases and subnet in self.leases:
                leases[subnet] = self.leases[subnet]
        self.leases, self.bad, self.listed = leases, bad, True
        self.index = SubnetIndex()
        for subnet in leases:
            self.index.add(subnet)
        self.node_ips = Counter(lease.attrs.public_ip for lease in leases.values())
        self._node_changes.clear()

    def change(self, key: str, obj: object | None) -> Net | None:
        """Fold one change in; the subnet whose lease it changed, if it changed one."""
        self.bad.pop(key, None)
        if isinstance(obj, Undecodable):
            self.bad[key] = obj.why
            return None
        subnet = self.subnet(key)
        if subnet is None:
            return None  # a key that names no subnet: reported above if it had a value
        old = self.leases.pop(subnet, None)
        if old is not None:
            self._count(old.attrs.public_ip, -1)
        if isinstance(obj, Lease):
            self.leases[subnet] = obj
            self.index.add(subnet)
            self._count(obj.attrs.public_ip, +1)
        else:
            self.index.discard(subnet)
        return subnet

    def _count(self, address: Address, step: int) -> None:
        before = self.node_ips[address] > 0
        self.node_ips[address] += step
        if self.node_ips[address] <= 0:
            del self.node_ips[address]
        now = address in self.node_ips
        if now != before:
            self._node_changes[address] = now

    def has_node_changes(self) -> bool:
        return bool(self._node_changes)

    def take_node_changes(self) -> dict[Address, bool]:
        changes, self._node_changes = self._node_changes, {}
        return changes

    def problems(self) -> list[str]:
        return [f"{key}: {why}" for key, why in self.bad.items()]
