"""ipip: pod packets inside an outer IPv4 header (IP protocol 4), 20 bytes of overhead.

Where the kernel has IPIP, its fallback device tunl0 carries them (as Calico uses it):
`<subnet> via <node address> dev tunl0 onlink`. Where it has none (these machines), the
agent carries the packets itself through the TUN device `flannel.ipip` and a raw
protocol-4 socket: on the wire the same genuine IPIP, so either kind of node talks to the
other (tunl0 decapsulates IPIP from any sender).
"""

from __future__ import annotations

from gingham.backends.base import BackendPlan, RoutesOnlyBackend
from gingham.backends.options import BackendConfigError
from gingham.backends.userspace import IpipTransport, Transport, UserspaceBackend
from gingham.dataplane import netns, tunl0
from gingham.dataplane.routes import RouteIntent
from gingham.dataplane.uplink import Uplink
from gingham.dataplane.vxlan import remove_vteps
from gingham.subnet.lease import Lease

TYPE = "ipip"
DEVICE = "flannel.ipip"  # the userspace path's TUN device
OVERHEAD = 20


def kernel_has_ipip() -> bool:
    with netns.iproute() as ipr:
        return tunl0.kernel_has_ipip(ipr)


class UserspaceIpipBackend(UserspaceBackend):
    type = TYPE
    device = DEVICE
    overhead = OVERHEAD

    def transport(self) -> Transport:
        return IpipTransport(self.uplink.mtu)


class KernelIpipBackend(RoutesOnlyBackend):
    """The kernel encapsulates: tunl0 holds `<own subnet>.0/32`, and a route per remote
    subnet goes via that node's address, onlink through tunl0."""

    type = TYPE

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink
        self.index: int | None = None

    def mtu(self, uplink: Uplink) -> int:
        return uplink.mtu - OVERHEAD

    def lease_data(self) -> dict:
        return {}

    def setup(self, own: Lease) -> None:
        with netns.iproute() as ipr:
            remove_vteps(ipr)
            try:
                self.index = tunl0.claim(ipr, own.subnet.network_address,
                                         self.mtu(self.uplink))
            except LookupError as err:
                raise BackendConfigError(f"ipip: {err}") from None

    def plan_lease(self, own: Lease, lease: Lease) -> BackendPlan:
        assert self.index is not None, "setup() first"
        return self.refused(lease) or BackendPlan(routes={
            RouteIntent(lease.subnet, lease.attrs.public_ip, self.index, onlink=True)})

    def teardown(self) -> None:
        super().teardown()
        with netns.iproute() as ipr:
            tunl0.release(ipr)
