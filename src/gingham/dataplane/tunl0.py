"""tunl0, the kernel's fallback IPIP device: it exists in every namespace once the ipip
module is loaded, decapsulates any IPIP packet for a local address, and encapsulates
towards the gateway of a route through it. The device is the kernel's, not Gingham's, so
Gingham never deletes it: it owns only the address it puts on it, marked by its label.
"""

from __future__ import annotations

import errno
import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from gingham.dataplane.bridge import link_index

TUNL0 = "tunl0"
LABEL = f"{TUNL0}:gingham"  # an IPv4 address label is the device's name, ':' and a tag
PROBE = "gingham.probe"


def kernel_has_ipip(ipr: IPRoute) -> bool:
    """Whether this namespace has tunl0, loading the ipip module first where it is one
    (making an IPIP device does that). False on kernels without IPIP, and where fallback
    tunnels exist only in the initial namespace (net.core.fb_tunnels_only_for_init_net)."""
    if link_index(ipr, TUNL0) is not None:
        return True
    try:
        ipr.link("add", ifname=PROBE, kind="ipip")
    except NetlinkError as err:
        if err.code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT):
            return False
        if err.code != errno.EEXIST:  # EEXIST: the module, just loaded, made tunl0 first
            raise
    else:
        ipr.link("del", index=link_index(ipr, PROBE))
    return link_index(ipr, TUNL0) is not None


def _ours(ipr: IPRoute, index: int) -> set[ipaddress.IPv4Interface]:
    return {ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=index, family=2) if a.get_attr("IFA_LABEL") == LABEL}


def claim(ipr: IPRoute, address: ipaddress.IPv4Address, mtu: int) -> int:
    """tunl0 up at `mtu`, holding `address`/32 as Gingham's (and no other address of
    Gingham's); its index."""
    index = link_index(ipr, TUNL0)
    if index is None:
        raise LookupError(f"no {TUNL0} in this namespace")
    wanted = ipaddress.IPv4Interface(f"{address}/32")
    have = _ours(ipr, index)
    for stale in have - {wanted}:
        ipr.addr("del", index=index, address=str(stale.ip), prefixlen=stale.network.prefixlen)
    if wanted not in have:
        ipr.addr("add", index=index, address=str(wanted.ip), prefixlen=32, label=LABEL)
    ipr.link("set", index=index, mtu=mtu, state="up")
    return index


def release(ipr: IPRoute) -> bool:
    """Take Gingham's address off tunl0, and tunl0 down if that left it with no address
    (Gingham brought it up); whether there was anything to release."""
    index = link_index(ipr, TUNL0)
    if index is None:
        return False
    ours = _ours(ipr, index)
    for stale in ours:
        ipr.addr("del", index=index, address=str(stale.ip), prefixlen=stale.network.prefixlen)
    if ours and not ipr.get_addr(index=index, family=2):
        ipr.link("set", index=index, state="down")
    return bool(ours)
