"""A tunnel run in userspace by the agent (Flannel's udp backend, and IPIP where the kernel
has no ipip module): a TUN device takes the packets routed to remote subnets; the engine
(backends/tunnel_engine.py) sends each to the node that holds its subnet over a
transport, and writes what arrives into the TUN device for the kernel to deliver.

Transports: UDP (the packet is the datagram's payload) and raw IP protocol 4 (the kernel
adds the outer IPv4 header itself, so peers see genuine IPIP and kernel IPIP peers can
talk to us).
"""

from __future__ import annotations

from gingham.backends.base import (
    BackendPlan,
    LeaseBackend,
    clear_earlier_tunnels,
    program_routes,
    route_changes,
    send_changes,
)
from gingham.backends.tunnel_engine import IpipTransport, Transport, TunnelEngine, UdpTransport
from gingham.dataplane import netns, rtmsg
from gingham.dataplane.bridge import link_index
from gingham.dataplane.netns import Rtnl
from gingham.dataplane.routes import RouteIntent, apply_routes
from gingham.dataplane.tun import open_tun
from gingham.dataplane.uplink import Uplink
from gingham.subnet.lease import Lease

__all__ = ["IpipTransport", "Transport", "TunnelEngine", "UdpTransport", "UserspaceBackend"]


class UserspaceBackend(LeaseBackend):
    """What udp and userspace ipip share: the TUN device (with the node subnet's `.0`),
    a route per remote subnet into it, and the engine that carries the packets."""

    type = ""
    device = ""
    overhead = 0

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink
        self.engine: TunnelEngine | None = None
        self.index: int | None = None

    def transport(self) -> Transport:
        raise NotImplementedError

    def mtu(self, uplink: Uplink) -> int:
        return uplink.mtu - self.overhead

    def lease_data(self) -> dict:
        return {}

    def setup(self, own: Lease) -> None:
        with netns.iproute() as ipr:
            clear_earlier_tunnels(ipr)
        if self.engine is not None:
            return
        transport = self.transport()  # first: a port in use fails before any device exists
        fd = open_tun(self.device)
        with netns.iproute() as ipr:
            index = link_index(ipr, self.device)
            ipr.addr("add", index=index, address=str(own.subnet.network_address), prefixlen=32)
            ipr.link("set", index=index, mtu=self.mtu(self.uplink), state="up")
        self.index = index
        self.engine = TunnelEngine(fd, transport)
        self.engine.start()

    def plan_lease(self, own: Lease, lease: Lease) -> BackendPlan:
        assert self.index is not None, "setup() first"
        return self.refused(lease) or BackendPlan(
            routes={RouteIntent(lease.subnet, None, self.index)},
            peers={lease.subnet: lease.attrs.public_ip})

    def apply(self, plan: BackendPlan) -> list[str]:
        assert self.engine is not None
        self.engine.update(plan.peers)  # before the routes: no packet meets an unknown peer
        with rtmsg.rtnl() as rtnl:
            return program_routes(rtnl, plan.routes)

    def apply_changes(self, rtnl: Rtnl, added: BackendPlan, removed: BackendPlan) -> None:
        assert self.engine is not None
        for subnet, address in added.peers.items():
            self.engine.change(subnet, address)
        send_changes(rtnl, route_changes(added.routes, removed.routes))
        for subnet in removed.peers.keys() - added.peers.keys():
            self.engine.change(subnet, None)

    def teardown(self) -> None:
        with rtmsg.rtnl() as rtnl:
            apply_routes(rtnl, set())
        if self.engine is not None:
            self.engine.stop()  # closing the fd removes the device
            self.engine = None
