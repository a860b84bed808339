"""Routes, neighbours and FDB entries as raw rtnetlink messages, sent in batches and dumped
without pyroute2's message objects: pyroute2 spends ~1 ms of CPU on each request, which at
5000 peers (15000 entries for vxlan) is most of a full resync. A batch is one datagram of
up to BATCH messages, each acknowledged; encoding one is a struct.pack."""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

from pyroute2.netlink.exceptions import NetlinkError

from gingham.dataplane.netns import NLMSG_ERROR, NLMSG_HEADER, Rtnl, attributes, frames

RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLMSG_DONE = 3
AF_BRIDGE = 7
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BxxxiHBB")
BATCH = 256

Message = tuple[int, int, bytes]


def attribute(kind: int, value: bytes) -> bytes:
    size = 4 + len(value)
    return struct.pack("=HH", size, kind) + value + b"\0" * (-size % 4)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def route_message(add: bool, dst: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address | None,
                  oif: int, onlink: bool, table: int, proto: int, exclusive: bool = False,
                  blackhole: bool = False) -> Message:
    """Add (or replace, unless exclusive) / delete one IPv4 route; a blackhole route has no
    device. A delete names the protocol, so the kernel deletes only a route of that
    protocol."""
    if add:
        flags = NLM_F_CREATE | (NLM_F_EXCL if exclusive else NLM_F_REPLACE)
        if blackhole:
            head = RTMSG.pack(2, dst.prefixlen, 0, 0, table, proto, RT_SCOPE_UNIVERSE,
                              RTN_BLACKHOLE, 0)
            return RTM_NEWROUTE, flags, head + attribute(RTA_DST, dst.network_address.packed)
        head = RTMSG.pack(2, dst.prefixlen, 0, 0, table, proto, RT_SCOPE_UNIVERSE,
                          RTN_UNICAST, 4 if onlink else 0)
        body = head + attribute(RTA_DST, dst.network_address.packed) \
            + attribute(RTA_OIF, struct.pack("=I", oif))
        if gateway is not None:
            body += attribute(RTA_GATEWAY, gateway.packed)
        return RTM_NEWROUTE, flags, body
    head = RTMSG.pack(2, dst.prefixlen, 0, 0, table, proto, RT_SCOPE_NOWHERE, 0, 0)
    return RTM_DELROUTE, 0, head + attribute(RTA_DST, dst.network_address.packed)


def neigh_message(add: bool, index: int, ip: ipaddress.IPv4Address, mac: str,
                  state: int) -> Message:
    body = NDMSG.pack(2, index, state, 0, 0) + attribute(NDA_DST, ip.packed) \
        + attribute(NDA_LLADDR, _mac(mac))
    return (RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body) if add else \
        (RTM_DELNEIGH, 0, body)


def fdb_message(add: bool, index: int, mac: str, dst: ipaddress.IPv4Address, state: int,
                flags: int) -> Message:
    body = NDMSG.pack(AF_BRIDGE, index, state, flags, 0) + attribute(NDA_LLADDR, _mac(mac)) \
        + attribute(NDA_DST, dst.packed)
    return (RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body) if add else \
        (RTM_DELNEIGH, 0, body)


def send(rtnl: Rtnl, messages: list[Message], tolerated: frozenset[int] = frozenset()
         ) -> list[int]:
    """Send in batches; the errno of each message (0: done). An error not in `tolerated`
    raises NetlinkError once the batch it was in has run."""
    results: list[int] = []
    for at in range(0, len(messages), BATCH):
        answers = rtnl.request(*messages[at:at + BATCH])
        for error, why, _ in answers:
            if error and error not in tolerated:
                raise NetlinkError(error, why or None)
            results.append(error)
    return results


GONE = frozenset({errno.ESRCH, errno.ENOENT})  # deleting what is not there


_DUMP_SEQ = itertools.count(1 << 30)  # far from Rtnl.request's, which skips other numbers


def dump(rtnl: Rtnl, kind: int, body: bytes) -> Iterator[bytes]:
    """The bodies of a dump's answers (RTM_GETROUTE, RTM_GETNEIGH)."""
    seq = next(_DUMP_SEQ)
    rtnl.sock.send(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind,
                                     NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    while True:
        buf = rtnl.sock.recv(1 << 20)
        for frame in frames(buf):
            if frame.seq != seq:
                continue
            if frame.kind == NLMSG_DONE:
                return
            if frame.kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", buf, frame.at + 16)
                raise NetlinkError(-error)
            yield frame.body(buf)


class RawRoute(NamedTuple):
    table: int
    proto: int
    type: int
    flags: int
    dst: ipaddress.IPv4Network
    oif: int | None
    gateway: ipaddress.IPv4Address | None


def dump_routes(rtnl: Rtnl) -> Iterator[RawRoute]:
    """Every IPv4 route of every table."""
    for body in dump(rtnl, RTM_GETROUTE, RTMSG.pack(2, 0, 0, 0, 0, 0, 0, 0, 0)):
        _, dst_len, _, _, table, proto, _, kind, flags = RTMSG.unpack_from(body)
        attrs = attributes(body, RTMSG.size)
        if RTA_TABLE in attrs:
            (table,) = struct.unpack("=I", attrs[RTA_TABLE])
        dst = ipaddress.IPv4Network((attrs.get(RTA_DST, b"\0\0\0\0"), dst_len))
        oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else None
        gateway = ipaddress.IPv4Address(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
        yield RawRoute(table, proto, kind, flags, dst, oif, gateway)


def dump_neighbours(rtnl: Rtnl, family: int, index: int) -> Iterator[tuple[int, int, dict]]:
    """(state, flags, attributes) of the neighbour (AF_INET) or FDB (AF_BRIDGE) entries of
    device `index`."""
    for body in dump(rtnl, RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0)):
        _, ifindex, state, flags, _ = NDMSG.unpack_from(body)
        if ifindex == index:
            yield state, flags, attributes(body, NDMSG.size)


def rtnl() -> Rtnl:
    """A bare netlink socket in this thread's namespace, with room for a batch's acks."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return Rtnl(sock)
