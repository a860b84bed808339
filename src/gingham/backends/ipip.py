"""ipip: pod packets inside an outer IPv4 header (IP protocol 4), 20 bytes of overhead.

The kernel's IPIP device is used where the kernel has one; where it has none (these
machines), the agent carries the packets itself through the TUN device `flannel.ipip`
and a raw protocol-4 socket — on the wire the same genuine IPIP, so either kind of node
talks to the other.
"""

from __future__ import annotations

import errno

from pyroute2.netlink.exceptions import NetlinkError

from gingham.backends.base import BackendPlan, program_routes
from gingham.backends.hostgw import others_of_type
from gingham.backends.userspace import IpipTransport, Transport, UserspaceBackend
from gingham.backends.vxlan import BackendConfigError
from gingham.dataplane import netns
from gingham.dataplane.bridge import link_index
from gingham.dataplane.routes import RouteIntent, apply_routes
from gingham.dataplane.uplink import Uplink
from gingham.model.network import BackendConfig
from gingham.subnet.lease import Lease

TYPE = "ipip"
DEVICE = "flannel.ipip"
OVERHEAD = 20


def check_options(config: BackendConfig) -> None:
    if config.options:
        raise BackendConfigError(f"unknown ipip option(s): {', '.join(sorted(config.options))}")


def kernel_has_ipip() -> bool:
    """Probe by making (and removing) an IPIP device in this namespace."""
    with netns.iproute() as ipr:
        try:
            ipr.link("add", ifname="gingham.probe", kind="ipip")
        except NetlinkError as err:
            if err.code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT):
                return False
            raise
        ipr.link("del", index=link_index(ipr, "gingham.probe"))
        return True


class UserspaceIpipBackend(UserspaceBackend):
    type = TYPE
    device = DEVICE
    overhead = OVERHEAD

    def transport(self) -> Transport:
        return IpipTransport()


class KernelIpipBackend:
    """`<subnet> via <node address> dev flannel.ipip onlink`: the kernel encapsulates."""

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
            index = link_index(ipr, DEVICE)
            if index is None:
                ipr.link("add", ifname=DEVICE, kind="ipip", ipip_local=str(own.attrs.public_ip),
                         ipip_link=self.uplink.index)
                index = link_index(ipr, DEVICE)
            ipr.link("set", index=index, mtu=self.mtu(self.uplink), state="up")
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}
            if str(own.subnet.network_address) not in have:
                ipr.addr("add", index=index, address=str(own.subnet.network_address),
                         prefixlen=32)
        self.index = index

    def plan(self, own: Lease, leases: list[Lease]) -> BackendPlan:
        assert self.index is not None
        plan = BackendPlan()
        for lease in others_of_type(TYPE, own, leases, plan):
            plan.routes.add(RouteIntent(lease.subnet, lease.attrs.public_ip, self.index,
                                        onlink=True))
        return plan

    def apply(self, plan: BackendPlan) -> list[str]:
        with netns.iproute() as ipr:
            return program_routes(ipr, plan.routes)

    def teardown(self) -> None:
        with netns.iproute() as ipr:
            apply_routes(ipr, set())
            if (index := link_index(ipr, DEVICE)) is not None:
                ipr.link("del", index=index)
