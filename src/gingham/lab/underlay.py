"""The lab's physical network: a bridge per segment, each host plugged into its segment,
routers with forwarding between segments, and every host's routes from the topology."""

from __future__ import annotations

import ipaddress
import os

from gingham.dataplane import netns, sysctl
from gingham.dataplane.bridge import link_index
from gingham.lab import procs
from gingham.lab.plan import HostPlan, LabPlan, netns_name
from gingham.lab.topology import RouterPlan, SegmentPlan, routes_for

BRIDGE = "br0"


def build_segment(lab: str, segment: SegmentPlan) -> None:
    with netns.iproute(procs.netns_path(netns_name(lab, segment.name))) as seg:
        seg.link("add", ifname=BRIDGE, kind="bridge", state="up")
        seg.link("set", index=link_index(seg, "lo"), state="up")


def _plug(lab: str, host: str, segment: str, ifname: str,
          address: ipaddress.IPv4Interface) -> None:
    """A veth from the segment's bridge (port named after the host) to `ifname` in the host."""
    host_ns = procs.netns_path(netns_name(lab, host))
    host_fd = netns.open_netns(host_ns)
    try:
        with netns.iproute(procs.netns_path(netns_name(lab, segment))) as seg:
            seg.link("add", ifname=host[:15], kind="veth", state="up",
                     master=link_index(seg, BRIDGE), peer={"ifname": ifname, "net_ns_fd": host_fd})
    finally:
        os.close(host_fd)
    with netns.iproute(host_ns) as ipr:
        index = link_index(ipr, ifname)
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=index, state="up")


def _route(lab: str, plan: LabPlan, host: str) -> None:
    routes = routes_for(plan.topology(), host)
    with netns.iproute(procs.netns_path(netns_name(lab, host))) as ipr:
        ipr.link("set", index=link_index(ipr, "lo"), state="up")
        for dst, via in routes.routes:
            ipr.route("add", dst=str(dst), gateway=str(via))
        if routes.default is not None:
            ipr.route("add", dst="0.0.0.0/0", gateway=str(routes.default))


def wire_host(plan: LabPlan, host: HostPlan) -> None:
    """A node, the external host or the control plane: `eth0` on its segment, its routes."""
    _plug(plan.name, host.name, host.segment, "eth0", host.address)
    _route(plan.name, plan, host.name)


def wire_router(plan: LabPlan, router: RouterPlan) -> None:
    """eth0, eth1, ... on its segments in order, and forwarding on."""
    for i, (segment, address) in enumerate(router.ports):
        _plug(plan.name, router.name, segment, f"eth{i}", address)
    with netns.entered(procs.netns_path(netns_name(plan.name, router.name))):
        sysctl.ensure("net.ipv4.ip_forward", "1")  # per namespace, from a thread inside it
    _route(plan.name, plan, router.name)
