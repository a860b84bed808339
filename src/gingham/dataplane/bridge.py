"""The node bridge (cni0): a learning switch holding the pod subnet's gateway address."""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IFF_UP = 0x1
EEXIST = 17


def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_bridge(
    ipr: IPRoute, name: str, gateway: ipaddress.IPv4Interface, mtu: int | None = None
) -> int:
    """Make `name` a bridge that is up with exactly `gateway` as its IPv4 address.

    Other IPv4 addresses on it are removed: the bridge is Gingham's, and a stale gateway
    (an earlier subnet) would answer for pods that are no longer here.
    """
    index = link_index(ipr, name)
    if index is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", **({"mtu": mtu} if mtu else {}))
        except NetlinkError as err:
            if err.code != EEXIST:  # a concurrent caller made it first
                raise
        index = link_index(ipr, name)
        assert index is not None
    (link,) = ipr.get_links(index)
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if kind != "bridge":
        raise RuntimeError(f"{name} exists but is a {kind or 'plain device'}, not a bridge")
    if mtu and link.get_attr("IFLA_MTU") != mtu:
        ipr.link("set", index=index, mtu=mtu)
    have = {
        ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        for a in ipr.get_addr(index=index, family=2)
    }
    for stale in have - {gateway}:
        ipr.addr("del", index=index, address=str(stale.ip), prefixlen=stale.network.prefixlen)
    if gateway not in have:
        try:
            ipr.addr("add", index=index, address=str(gateway.ip),
                     prefixlen=gateway.network.prefixlen)
        except NetlinkError as err:
            if err.code != EEXIST:
                raise
    if not link["flags"] & IFF_UP:
        ipr.link("set", index=index, state="up")
    return index
