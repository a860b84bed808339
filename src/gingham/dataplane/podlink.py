"""A pod's veth pair: host end on the node (on a bridge, or routed as Calico's `cali*`),
`eth0` in the pod's namespace.

Functions here take netlink handles; they never decide addresses or names. Each step of
`connect` is undone by deleting the host end (the caller's rollback), which takes the pod end
with it and tolerates any half-built state.

`connect` is the hot path of every ADD, so it speaks netlink directly (netns.Rtnl): the
requests below are built by hand and batched, one node and one pod round trip in all. The
host end is created up, with its MTU, on the bridge; the pod end in the pod, with its MTU
and a MAC chosen here (random, locally administered, as the kernel would choose), so that
its index (the host end's IFLA_LINK) and MAC need no lookup in the pod.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from gingham.dataplane.netns import Rtnl, attributes

HOST_PREFIX = "veth"
ROUTED_PREFIX = "cali"
ROUTED_HOST_MAC = bytes.fromhex("eeeeeeeeeeee")
ROUTED_GATEWAY = ipaddress.IPv4Address("169.254.1.1")
ROUTED_GATEWAY_NET = ipaddress.IPv4Network("169.254.1.1/32")
ENODEV = 19
ESRCH = 3
EEXIST = 17

# <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>, <linux/veth.h>
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD, IFLA_EXT_MASK = 18, 20, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_DATA = 1, 2, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a lookup needs no counters
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
RTPROT_BOOT, RT_SCOPE_LINK = 3, 253
RTM_NEWNEIGH, NLM_F_REPLACE = 28, 0x100
NDA_DST, NDA_LLADDR, NUD_PERMANENT = 1, 2, 0x80
NDMSG = struct.Struct("=BxxxiHBB")  # family, index, state, flags, type
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type
U32 = struct.Struct("=I")

Message = tuple[int, int, bytes]  # (type, flags, body) for Rtnl.request


def host_veth_name(container_id: str, ifname: str) -> str:
    """Deterministic, so DEL finds the device without any saved state (15 chars)."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return HOST_PREFIX + digest[:11]


def routed_veth_name(namespace: str, pod: str) -> str:
    """Calico's host end name: cali + 11 hex digits of sha1("<namespace>.<pod>")."""
    return ROUTED_PREFIX + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


class PodNameTaken(Exception):
    """The pod has a link of the name its end of the pair was to get."""


@dataclass
class PodLink:
    host_name: str
    host_mac: str
    pod_name: str
    pod_mac: str
    mtu: int


# -- netlink requests -------------------------------------------------------------------


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


def _name(name: str) -> bytes:
    return _attr(IFLA_IFNAME, name.encode() + b"\0")


def get_link(name: str) -> Message:
    """RTM_GETLINK by name: answered with the link, or ENODEV."""
    return (RTM_GETLINK, 0,
            IFINFO.pack(0, 0, 0, 0, 0) + _name(name)
            + _attr(IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS)))


def del_link(name: str) -> Message:
    """RTM_DELLINK by name: acknowledged once the kernel has freed it (see unlink), or ENODEV."""
    return RTM_DELLINK, 0, IFINFO.pack(0, 0, 0, 0, 0) + _name(name)


def parse_link(bodies: list[bytes]) -> tuple[int, str]:
    """(index, MAC) of a get_link answer."""
    (body,) = bodies
    index = IFINFO.unpack_from(body)[2]
    return index, mac_text(attributes(body, IFINFO.size).get(IFLA_ADDRESS, b""))


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def random_mac() -> bytes:
    """Random, unicast, locally administered: the kernel's eth_random_addr."""
    mac = bytearray(os.urandom(6))
    mac[0] = (mac[0] & 0xFE) | 0x02
    return bytes(mac)


def _veth(host_name: str, pod_name: str, mtu: int, pod_netns_fd: int,
          bridge_index: int | None, pod_mac: bytes, host_mac: bytes | None) -> Message:
    up = IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP)
    # Not the peer: veth brings it up before pairing it, and a lone end refuses (ENOTCONN).
    peer = IFINFO.pack(0, 0, 0, 0, 0) + _name(pod_name) + _attr(IFLA_MTU, U32.pack(mtu)) \
        + _attr(IFLA_NET_NS_FD, U32.pack(pod_netns_fd)) + _attr(IFLA_ADDRESS, pod_mac)
    info = _attr(IFLA_INFO_KIND, b"veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
    body = up + _name(host_name) + _attr(IFLA_MTU, U32.pack(mtu)) + _attr(IFLA_LINKINFO, info)
    if host_mac is not None:
        body += _attr(IFLA_ADDRESS, host_mac)
    if bridge_index is not None:
        body += _attr(IFLA_MASTER, U32.pack(bridge_index))
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body


def _port_settings(host_name: str, alias: str, hairpin: bool) -> Message:
    """Alias (and hairpin) of the host end: the kernel ignores both in the creating request
    (IFLA_IFALIAS and bridge port options apply to existing links only)."""
    body = IFINFO.pack(0, 0, 0, 0, 0) + _name(host_name) + _attr(IFLA_IFALIAS, alias.encode())
    if hairpin:
        body += _attr(IFLA_LINKINFO, _attr(IFLA_INFO_SLAVE_DATA,
                                           _attr(IFLA_BRPORT_MODE, b"\x01")))
    return RTM_NEWLINK, 0, body  # no NLM_F_CREATE: ENODEV, never a new link, if it is gone


def _add_address(index: int, address: ipaddress.IPv4Interface) -> Message:
    ip = address.ip.packed
    return (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
            IFADDR.pack(socket.AF_INET, address.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
            + _attr(IFA_LOCAL, ip) + _attr(IFA_ADDRESS, ip))


def _set_up(index: int = 0, name: str | None = None) -> Message:
    body = IFINFO.pack(0, 0, index, IFF_UP, IFF_UP)
    return RTM_SETLINK, 0, body + _name(name) if name else body


def _add_route(dst: ipaddress.IPv4Network, via: ipaddress.IPv4Address | None, oif: int,
               protocol: int = RTPROT_STATIC) -> Message:
    """A route through `oif`: via a gateway, or (via None) on the link, scope link."""
    scope = RT_SCOPE_UNIVERSE if via is not None else RT_SCOPE_LINK
    body = RTMSG.pack(socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, protocol, scope,
                      RTN_UNICAST, 0)
    if dst.prefixlen:
        body += _attr(RTA_DST, dst.network_address.packed)
    if via is not None:
        body += _attr(RTA_GATEWAY, via.packed)
    body += _attr(RTA_OIF, U32.pack(oif))
    return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body


def _add_neighbour(address: ipaddress.IPv4Address, mac: bytes, index: int) -> Message:
    """A permanent ARP entry."""
    body = NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0) \
        + _attr(NDA_DST, address.packed) + _attr(NDA_LLADDR, mac)
    return RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body


# -- operations -------------------------------------------------------------------------


def lookup(rtnl: Rtnl, *names: str) -> list[int | None]:
    """The index of each named link, None for one that does not exist; one round trip."""
    found: list[int | None] = []
    for error, why, bodies in rtnl.request(*(get_link(name) for name in names)):
        if error == ENODEV:
            found.append(None)
        elif error:
            raise NetlinkError(error, why or None)
        else:
            found.append(parse_link(bodies)[0])
    return found


def connect(
    node: Rtnl,
    pod: Rtnl,
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
    """Create the pair (the host end on the bridge) and configure the pod end: its address,
    up, and the routes (via the gateway where none is given). Raises on any failure,
    leaving cleanup to the caller's rollback (deleting the host end); PodNameTaken if the
    pod has pod_name already."""
    host_mac, _, pod_mac, pod_index = _create_pair(
        node, pod_netns_fd, host_name, pod_name, mtu, bridge_index,
        hairpin and bridge_index is not None, alias, None)
    # In order: with the address on it and up, eth0 reaches the gateway, so the routes
    # (via the gateway) can follow.
    pod.call(
        _add_address(pod_index, address),
        _set_up(pod_index),
        _set_up(name="lo"),
        *(_add_route(dst, via or gateway, pod_index) for dst, via in routes),
    )
    return PodLink(host_name, host_mac, pod_name, mac_text(pod_mac), mtu)


def connect_routed(
    node: Rtnl,
    pod: Rtnl,
    pod_netns_fd: int,
    *,
    host_name: str,
    pod_name: str,
    mtu: int,
    address: ipaddress.IPv4Address,
    alias: str,
) -> PodLink:
    """Calico's routed pod: no bridge. The host end (MAC ee:ee:ee:ee:ee:ee, no address)
    answers ARP for the pod's gateway 169.254.1.1 by proxy ARP; the pod holds its address
    as a /32, `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1` and a permanent
    neighbour entry for the gateway, so it reaches the node even when the node has no
    route to 169.254.1.1 (proxy ARP answers only for addresses the node can route). The
    node gets `<address> dev <host end> scope link`. Rollback as for connect."""
    _, host_index, pod_mac, pod_index = _create_pair(
        node, pod_netns_fd, host_name, pod_name, mtu, None, False, alias, ROUTED_HOST_MAC)
    pod.call(
        _add_address(pod_index, ipaddress.IPv4Interface(f"{address}/32")),
        _set_up(pod_index),
        _set_up(name="lo"),
        _add_route(ROUTED_GATEWAY_NET, None, pod_index, RTPROT_BOOT),
        _add_neighbour(ROUTED_GATEWAY, ROUTED_HOST_MAC, pod_index),
        _add_route(ipaddress.IPv4Network("0.0.0.0/0"), ROUTED_GATEWAY, pod_index, RTPROT_BOOT),
    )
    # /proc/sys/net is the writing thread's namespace: the node's.
    for key, value in ((f"conf/{host_name}/proxy_arp", "1"),
                       (f"neigh/{host_name}/proxy_delay", "0"),
                       (f"conf/{host_name}/forwarding", "1")):
        with open(f"/proc/sys/net/ipv4/{key}", "w") as knob:
            knob.write(value)
    node.call(_add_route(ipaddress.IPv4Network(f"{address}/32"), None, host_index,
                         RTPROT_BOOT))
    return PodLink(host_name, mac_text(ROUTED_HOST_MAC), pod_name, mac_text(pod_mac), mtu)


def _create_pair(node: Rtnl, pod_netns_fd: int, host_name: str, pod_name: str, mtu: int,
                 bridge_index: int | None, hairpin: bool, alias: str,
                 host_mac: bytes | None) -> tuple[str, int, bytes, int]:
    """Create the pair: the host end's MAC and index, the pod end's MAC and index (in the
    pod). PodNameTaken if
    the pod has pod_name already (the caller checked that host_name is free): found by the
    create failing, not by a lookup first, which would be a pod round trip on every ADD."""
    # One datagram: create, then alias/hairpin and a lookup of the new host end by name.
    # If the create fails, the two after it find no such link and fail too; the create's
    # error is the one raised.
    pod_mac = random_mac()
    try:
        answers = node.call(
            _veth(host_name, pod_name, mtu, pod_netns_fd, bridge_index, pod_mac, host_mac),
            _port_settings(host_name, alias, hairpin),
            get_link(host_name),
        )
    except NetlinkError as err:
        if err.code == EEXIST:
            raise PodNameTaken(pod_name) from err
        raise
    (host,) = answers[2]
    attrs = attributes(host, IFINFO.size)
    # The peer's index, in the pod: for the pod end's address and routes.
    return (mac_text(attrs.get(IFLA_ADDRESS, b"")), IFINFO.unpack_from(host)[2], pod_mac,
            U32.unpack(attrs[IFLA_LINK])[0])


def remove_link(ipr: IPRoute, name: str) -> bool:
    """Delete a link if present; True if it was there. One request: the kernel finds the
    link by name (a lookup first would cost another ~0.2 ms round trip)."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as err:
        if err.code not in (ENODEV, ESRCH):
            raise
        return False
    return True
