"""The node's uplink: the interface pod traffic leaves by, its address and MTU."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyroute2 import IPRoute

from gingham.dataplane.bridge import link_index


@dataclass(frozen=True)
class Uplink:
    name: str
    index: int
    address: ipaddress.IPv4Interface
    mtu: int


class UplinkError(RuntimeError):
    pass


def find_uplink(ipr: IPRoute, name: str | None = None) -> Uplink:
    """The named interface, or the one holding the default route."""
    if name is None:
        defaults = [r for r in ipr.get_routes(family=2, table=254) if r["dst_len"] == 0]
        if not defaults:
            raise UplinkError("no default route to find the uplink by; pass --iface")
        index = defaults[0].get_attr("RTA_OIF")
    else:
        index = link_index(ipr, name)
        if index is None:
            raise UplinkError(f"interface {name} does not exist")
    (link,) = ipr.get_links(index)
    addrs = ipr.get_addr(index=index, family=2)
    if not addrs:
        raise UplinkError(f"interface {link.get_attr('IFLA_IFNAME')} has no IPv4 address")
    first = addrs[0]
    return Uplink(
        name=link.get_attr("IFLA_IFNAME"),
        index=index,
        address=ipaddress.IPv4Interface(f"{first.get_attr('IFA_ADDRESS')}/{first['prefixlen']}"),
        mtu=link.get_attr("IFLA_MTU"),
    )
