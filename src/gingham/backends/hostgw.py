"""host-gw: no tunnel, a route per remote subnet via that node's address.

`10.244.5.0/24 via 192.168.50.15 dev eth0 proto 71`. Works only when every node shares one
L2 segment: a next hop behind a router is not on a connected subnet, and the kernel
cannot resolve it. Such leases are refused with the reason, never half-routed.
"""

from __future__ import annotations

from gingham.backends.base import BackendPlan, RoutesOnlyBackend, clear_earlier_tunnels
from gingham.dataplane import netns
from gingham.dataplane.routes import RouteIntent
from gingham.dataplane.uplink import Uplink
from gingham.subnet.lease import Lease

TYPE = "host-gw"


def direct_route(lease: Lease, uplink: Uplink) -> RouteIntent:
    """`<subnet> via <node address> dev <uplink>`: no tunnel, the node is on our segment."""
    return RouteIntent(lease.subnet, lease.attrs.public_ip, uplink.index)


def not_on_segment(lease: Lease, uplink: Uplink) -> str:
    return (f"host-gw: no route to {lease.subnet} of {lease.attrs.node_name or '?'}: next hop "
            f"{lease.attrs.public_ip} is not on a directly connected subnet "
            f"({uplink.address.network} on {uplink.name}); host-gw needs every node on one "
            f"L2 segment, use vxlan across routers")


class HostGwBackend(RoutesOnlyBackend):
    type = TYPE

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink

    def mtu(self, uplink: Uplink) -> int:
        return uplink.mtu

    def lease_data(self) -> dict:
        return {}

    def setup(self, own: Lease) -> None:
        """Nothing of its own, but no tunnel of an earlier backend may linger."""
        with netns.iproute() as ipr:
            clear_earlier_tunnels(ipr)

    def plan_lease(self, own: Lease, lease: Lease) -> BackendPlan:
        refused = self.refused(lease)
        if refused is not None:
            return refused
        if lease.attrs.public_ip not in self.uplink.address.network:
            return BackendPlan(problems=[not_on_segment(lease, self.uplink)])
        return BackendPlan(routes={direct_route(lease, self.uplink)})
