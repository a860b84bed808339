"""A pod's veth pair: host end on the node (on a bridge), `eth0` in the pod's namespace.

Functions here take netlink handles; they never decide addresses or names. Each step of
`connect` is undone by `disconnect`, which tolerates any half-built state.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from gingham.dataplane.bridge import link_index

HOST_PREFIX = "veth"
ENODEV = 19
ESRCH = 3


def host_veth_name(container_id: str, ifname: str) -> str:
    """Deterministic, so DEL finds the device without any saved state (15 chars)."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return HOST_PREFIX + digest[:11]


@dataclass
class PodLink:
    host_name: str
    host_mac: str
    pod_name: str
    pod_mac: str
    mtu: int


def _mac(ipr: IPRoute, index: int) -> str:
    (link,) = ipr.get_links(index)
    return link.get_attr("IFLA_ADDRESS")


def pod_has_interface(pod: IPRoute, ifname: str) -> bool:
    return link_index(pod, ifname) is not None


def connect(
    node: IPRoute,
    pod: IPRoute,
    pod_netns_fd: int,
    *,
    host_name: str,
    pod_name: str,
    mtu: int,
    address: ipaddress.IPv4Interface,
    gateway: ipaddress.IPv4Address,
    bridge_index: int | None,
    hairpin: bool,
    routes: list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address | None]],
    alias: str,
) -> PodLink:
    """Create the pair and configure both ends. Raises on any failure, leaving cleanup to
    `disconnect` (the caller's rollback)."""
    extra = {"master": bridge_index} if bridge_index is not None else {}
    node.link(
        "add", ifname=host_name, kind="veth", mtu=mtu, state="up", ifalias=alias, **extra,
        peer={"ifname": pod_name, "net_ns_fd": pod_netns_fd, "mtu": mtu},
    )
    host_index = link_index(node, host_name)
    assert host_index is not None
    if bridge_index is not None and hairpin:
        node.link("set", index=host_index, kind="bridge_slave", mode=1)
    pod_index = link_index(pod, pod_name)
    assert pod_index is not None
    pod.addr("add", index=pod_index, address=str(address.ip), prefixlen=address.network.prefixlen)
    pod.link("set", index=pod_index, state="up")
    lo = link_index(pod, "lo")
    if lo is not None:
        pod.link("set", index=lo, state="up")
    for dst, via in routes:
        pod.route("add", dst=str(dst), gateway=str(via or gateway), oif=pod_index)
    return PodLink(host_name, _mac(node, host_index), pod_name, _mac(pod, pod_index), mtu)


def remove_link(ipr: IPRoute, name: str) -> bool:
    """Delete a link if present; True if it was there."""
    index = link_index(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as err:
        if err.code not in (ENODEV, ESRCH):
            raise
    return True
