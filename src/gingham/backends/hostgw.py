"""host-gw: no tunnel, a route per remote subnet via that node's address.

`10.244.5.0/24 via 192.168.50.15 dev eth0 proto 71`. Works only when every node shares one
L2 segment: a next hop behind a router is not on a connected subnet, and the kernel
cannot resolve it. Such leases are refused with the reason, never half-routed.
"""

from __future__ import annotations

from gingham.backends.base import BackendPlan
from gingham.dataplane import netns
from gingham.dataplane.routes import RouteIntent, apply_routes
from gingham.dataplane.uplink import Uplink
from gingham.subnet.lease import Lease

TYPE = "host-gw"


def not_on_segment(lease: Lease, uplink: Uplink) -> str:
    return (f"host-gw: no route to {lease.subnet} of {lease.attrs.node_name or '?'}: next hop "
            f"{lease.attrs.public_ip} is not on a directly connected subnet "
            f"({uplink.address.network} on {uplink.name}); host-gw needs every node on one "
            f"L2 segment, use vxlan across routers")


class HostGwBackend:
    type = TYPE

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink

    def mtu(self, uplink: Uplink) -> int:
        return uplink.mtu

    def lease_data(self) -> dict:
        return {}

    def plan(self, own: Lease, leases: list[Lease]) -> BackendPlan:
        plan = BackendPlan()
        for lease in leases:
            if lease.subnet == own.subnet:
                continue
            if lease.attrs.backend_type != TYPE:
                plan.problems.append(f"host-gw: lease {lease.subnet} of "
                                     f"{lease.attrs.node_name} uses backend "
                                     f"{lease.attrs.backend_type}; not routed")
            elif lease.attrs.public_ip not in self.uplink.address.network:
                plan.problems.append(not_on_segment(lease, self.uplink))
            else:
                plan.routes.add(RouteIntent(lease.subnet, lease.attrs.public_ip,
                                            self.uplink.index))
        return plan

    def apply(self, plan: BackendPlan) -> list[str]:
        with netns.iproute() as ipr:
            diff = apply_routes(ipr, plan.routes)
        return [f"route to {dst} exists and is not Gingham's; left alone"
                for dst in diff.blocked]

    def teardown(self) -> None:
        with netns.iproute() as ipr:
            apply_routes(ipr, set())
