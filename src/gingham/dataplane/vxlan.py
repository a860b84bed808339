"""A VXLAN tunnel endpoint (VTEP) and the per-peer entries that steer it.

For each remote node the kernel needs a permanent neighbour entry (the remote subnet's
`.0` → the remote VTEP's MAC, so no ARP crosses the tunnel) and an FDB entry (that MAC →
the remote node's address, so the encapsulated frame knows where to go). The device is
Gingham's by its name, so every neighbour and FDB entry on it is Gingham's too.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from gingham.dataplane import rtmsg
from gingham.dataplane.bridge import link_index
from gingham.dataplane.netns import Rtnl

VTEP_NAME = re.compile(r"^flannel\.\d+$")
NUD_PERMANENT = 0x80
NTF_SELF = 0x02


class VtepError(RuntimeError):
    pass


@dataclass(frozen=True, order=True)
class NeighIntent:
    ip: ipaddress.IPv4Address
    mac: str


@dataclass(frozen=True, order=True)
class FdbIntent:
    mac: str
    dst: ipaddress.IPv4Address


@dataclass(frozen=True)
class VtepSpec:
    name: str
    vni: int
    port: int
    local: ipaddress.IPv4Address
    uplink_index: int
    mac: str
    mtu: int
    address: ipaddress.IPv4Address  # the node subnet's .0, as /32


def stable_mac(seed: str) -> str:
    """A locally administered unicast MAC derived from `seed`: the same VTEP MAC after every
    restart or re-creation, so peers' neighbour and FDB entries stay right."""
    raw = bytearray(hashlib.sha256(seed.encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def _matches(link, spec: VtepSpec) -> bool:
    info = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan" or info is None:
        return False
    return (info.get_attr("IFLA_VXLAN_ID") == spec.vni
            and info.get_attr("IFLA_VXLAN_PORT") == spec.port
            and info.get_attr("IFLA_VXLAN_LOCAL") == str(spec.local)
            and info.get_attr("IFLA_VXLAN_LINK") == spec.uplink_index
            and link.get_attr("IFLA_ADDRESS") == spec.mac)


def ensure_vtep(ipr: IPRoute, spec: VtepSpec) -> int:
    """The VTEP as specified, up, holding exactly spec.address/32; re-created only if its
    identity (VNI, port, local address, uplink, MAC) changed."""
    index = link_index(ipr, spec.name)
    if index is not None and not _matches(ipr.get_links(index)[0], spec):
        ipr.link("del", index=index)
        index = None
    if index is None:
        try:
            ipr.link("add", ifname=spec.name, kind="vxlan", vxlan_id=spec.vni,
                     vxlan_local=str(spec.local), vxlan_link=spec.uplink_index,
                     vxlan_port=spec.port, vxlan_learning=0, address=spec.mac, mtu=spec.mtu)
        except NetlinkError as err:
            if err.code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT):
                raise VtepError("this kernel has no VXLAN support (CONFIG_VXLAN); use "
                                "host-gw, udp or ipip") from err
            raise
        index = link_index(ipr, spec.name)
        assert index is not None
    (link,) = ipr.get_links(index)
    if link.get_attr("IFLA_MTU") != spec.mtu:
        ipr.link("set", index=index, mtu=spec.mtu)
    have = {ipaddress.IPv4Address(a.get_attr("IFA_ADDRESS"))
            for a in ipr.get_addr(index=index, family=2)}
    for stale in have - {spec.address}:
        ipr.addr("del", index=index, address=str(stale), prefixlen=32)
    if spec.address not in have:
        ipr.addr("add", index=index, address=str(spec.address), prefixlen=32)
    if not link["flags"] & 1:
        ipr.link("set", index=index, state="up")
    return index


def neigh_message(add: bool, index: int, neigh: NeighIntent) -> rtmsg.Message:
    return rtmsg.neigh_message(add, index, neigh.ip, neigh.mac, NUD_PERMANENT)


def fdb_message(add: bool, index: int, entry: FdbIntent) -> rtmsg.Message:
    return rtmsg.fdb_message(add, index, entry.mac, entry.dst, NUD_PERMANENT, NTF_SELF)


def apply_neighbours(rtnl: Rtnl, index: int, desired: set[NeighIntent]) -> None:
    have = set()
    for state, _, attrs in rtmsg.dump_neighbours(rtnl, 2, index):
        if state & NUD_PERMANENT and rtmsg.NDA_LLADDR in attrs and rtmsg.NDA_DST in attrs:
            have.add(NeighIntent(ipaddress.IPv4Address(attrs[rtmsg.NDA_DST]),
                                 _mac_text(attrs[rtmsg.NDA_LLADDR])))
    rtmsg.send(rtnl, [neigh_message(False, index, n) for n in sorted(have - desired)]
               + [neigh_message(True, index, n) for n in sorted(desired - have)],
               tolerated=rtmsg.GONE)


def apply_fdb(rtnl: Rtnl, index: int, desired: set[FdbIntent]) -> None:
    have = set()
    for _, _, attrs in rtmsg.dump_neighbours(rtnl, rtmsg.AF_BRIDGE, index):
        mac = _mac_text(attrs.get(rtmsg.NDA_LLADDR, b""))
        if rtmsg.NDA_DST in attrs and mac != "00:00:00:00:00:00":
            have.add(FdbIntent(mac, ipaddress.IPv4Address(attrs[rtmsg.NDA_DST])))
    rtmsg.send(rtnl, [fdb_message(False, index, f) for f in sorted(have - desired)]
               + [fdb_message(True, index, f) for f in sorted(desired - have)],
               tolerated=rtmsg.GONE)


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def remove_vteps(ipr: IPRoute, keep: str | None = None) -> list[str]:
    """Delete every Gingham VTEP (a vxlan device named flannel.<VNI>) but `keep`; their
    neighbour and FDB entries, and routes through them, go with them."""
    removed = []
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME")
        if (VTEP_NAME.match(name) and name != keep
                and link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vxlan"):
            ipr.link("del", index=link["index"])
            removed.append(name)
    return removed
