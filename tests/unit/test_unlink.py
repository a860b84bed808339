"""Telling, from a datagram of link events, that a link has been unlinked (no root needed)."""

from __future__ import annotations

import struct

from gingham.dataplane.netns import NLMSG_HEADER
from gingham.dataplane.podlink import IFINFO, RTM_DELLINK, RTM_NEWLINK, del_link
from gingham.dataplane.unlink import AF_UNSPEC, is_unlinked

AF_BRIDGE = 7


def event(kind: int, name: str, family: int = AF_UNSPEC) -> bytes:
    """One link event as the kernel sends it: header, ifinfomsg, IFLA_IFNAME."""
    ifname = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(ifname), 3) + ifname
    attr += b"\0" * (-len(attr) % 4)
    body = IFINFO.pack(family, 1, 7, 0, 0) + attr
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, 0, 0, 0) + body


def test_the_links_own_dellink_tells_it_is_unlinked():
    assert is_unlinked(event(RTM_DELLINK, "veth0123456789a"), "veth0123456789a")


def test_other_events_do_not():
    name = "veth0123456789a"
    assert not is_unlinked(event(RTM_DELLINK, "veth0123456789b"), name)
    assert not is_unlinked(event(RTM_NEWLINK, name), name)
    # The bridge tells of its port leaving before the link is gone: not the link's own event.
    assert not is_unlinked(event(RTM_DELLINK, name, family=AF_BRIDGE), name)
    assert not is_unlinked(event(RTM_DELLINK, name + "x"), name)  # a longer name, same start
    assert not is_unlinked(b"", name)
    assert not is_unlinked(event(RTM_DELLINK, name)[:20], name)  # truncated


def test_found_among_several_events_in_one_datagram():
    name = "veth0123456789a"
    datagram = (event(RTM_NEWLINK, "cni0") + event(RTM_DELLINK, name, family=AF_BRIDGE)
                + event(RTM_DELLINK, name))
    assert is_unlinked(datagram, name)


def test_del_link_names_the_link():
    kind, flags, body = del_link("veth0123456789a")
    assert (kind, flags) == (RTM_DELLINK, 0)
    assert IFINFO.unpack_from(body)[2] == 0  # by name, not by index
    assert b"veth0123456789a\0" in body and len(body) % 4 == 0
