"""Entering network namespaces from a thread, and netlink handles bound to one.

setns(CLONE_NEWNET) changes only the calling thread, and a socket stays in the namespace it
was created in. So a netlink socket for any namespace is made by stepping in, creating it and
stepping back: ~1 ms, where pyroute2's own `netns=` forks a helper process.

Two kinds of handle: pyroute2's IPRoute for everything, and `Rtnl`, a bare socket for the
per-pod hot path. Each IPRoute call runs an asyncio loop and costs 0.15-0.3 ms of Python;
`Rtnl` sends several prebuilt requests in one datagram and costs ~20 us a round trip.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors echo only the request's header, not all of it
NETLINK_EXT_ACK = 11  # errors carry the kernel's reason as text
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSG_ERROR = 2
NLMSGERR_ATTR_MSG = 1
NLMSG_HEADER = struct.Struct("=IHHII")
NLA_HEADER = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF  # without the nested / byte-order flag bits


class NetnsNotFound(FileNotFoundError):
    pass


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """An fd for the namespace file; never creates one (a typo must not make a new netns)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise NetnsNotFound(path) from err


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread inside the namespace at `path`."""
    target = open_netns(path)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target)
        try:
            yield
        finally:
            # A thread left in the wrong namespace would corrupt every later call it makes.
            setns(home)
    finally:
        os.close(target)
        os.close(home)


def iproute(path: str | None = None) -> IPRoute:
    """A netlink handle for the namespace at `path`, or for this thread's own."""
    if path is None:
        return IPRoute()
    with entered(path):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    return IPRoute(fileno=sock.detach())


class Rtnl:
    """A bare NETLINK_ROUTE socket. `request` sends its messages in one datagram; the kernel
    runs them in order, each to completion, and acknowledges each one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 0
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            # An old kernel lacks them: plainer errors, same results.
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_NETLINK, option, 1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, *messages: tuple[int, int, bytes]) -> list[tuple[int, str, list[bytes]]]:
        """Send (type, flags, body) messages; per message, in order: its errno (0: done), the
        kernel's reason for an error, and the bodies of the messages it answered with.

        A failed message does not stop the ones after it, so a batch must be built so that
        each later message is harmless, or fails too, when an earlier one failed. Not for
        dumps (NLM_F_DUMP ends in NLMSG_DONE, not the acknowledgement waited for here).
        """
        first = self._seq + 1
        out = []
        for kind, flags, body in messages:
            self._seq += 1
            out.append(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind,
                                         flags | NLM_F_REQUEST | NLM_F_ACK, self._seq, 0))
            out.append(body)
        self.sock.send(b"".join(out))
        answers: list[tuple[int, str, list[bytes]] | None] = [None] * len(messages)
        data: list[list[bytes]] = [[] for _ in messages]
        pending = len(messages)
        while pending:
            buf = self.sock.recv(1 << 17)
            for frame in frames(buf):
                i = frame.seq - first
                # Anything else is a leftover of a request abandoned midway; skip it.
                if 0 <= i < len(messages) and answers[i] is None:
                    if frame.kind == NLMSG_ERROR:
                        (error,) = struct.unpack_from("=i", buf, frame.at + 16)
                        answers[i] = (-error, _ack_text(buf, frame.at, frame.size,
                                                        frame.flags), data[i])
                        pending -= 1
                    else:
                        data[i].append(frame.body(buf))
        return answers  # type: ignore[return-value]

    def call(self, *messages: tuple[int, int, bytes]) -> list[list[bytes]]:
        """`request`, raising NetlinkError for the first message that failed."""
        answers = self.request(*messages)
        for error, why, _ in answers:
            if error:
                raise NetlinkError(error, f"{os.strerror(error)}: {why}" if why else None)
        return [bodies for _, _, bodies in answers]


def _ack_text(buf: bytes, at: int, size: int, flags: int) -> str:
    """NLMSGERR_ATTR_MSG of an error message (NETLINK_EXT_ACK), or ''."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    offset = at + 20  # header, error code
    if flags & NLM_F_CAPPED:
        offset += NLMSG_HEADER.size
    else:
        (echoed,) = struct.unpack_from("=I", buf, offset)
        offset += (echoed + 3) & ~3
    text = attributes(buf[offset:at + size]).get(NLMSGERR_ATTR_MSG, b"")
    return text.rstrip(b"\0").decode(errors="replace")


class Frame(NamedTuple):
    kind: int
    flags: int
    seq: int
    at: int  # where the message starts in the datagram
    size: int

    def body(self, datagram: bytes) -> bytes:
        return datagram[self.at + NLMSG_HEADER.size:self.at + self.size]


def frames(datagram: bytes) -> Iterator[Frame]:
    """Each netlink message in a datagram, up to the first malformed one."""
    at = 0
    while at + NLMSG_HEADER.size <= len(datagram):
        size, kind, flags, seq, _ = NLMSG_HEADER.unpack_from(datagram, at)
        if size < NLMSG_HEADER.size:
            return
        yield Frame(kind, flags, seq, at, size)
        at += (size + 3) & ~3


def messages(datagram: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each netlink message in a datagram, up to the first malformed one."""
    for frame in frames(datagram):
        yield frame.kind, frame.body(datagram)


def attributes(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The netlink attributes in data[offset:], by type (the last of any repeated one)."""
    found = {}
    end = len(data)
    while offset + NLA_HEADER.size <= end:
        size, kind = NLA_HEADER.unpack_from(data, offset)
        if size < NLA_HEADER.size:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + NLA_HEADER.size:offset + size]
        offset += (size + 3) & ~3
    return found


def rtnl_socket(netns_fd: int | None = None, home: int | None = None) -> Rtnl:
    """A bare netlink handle for the namespace open as netns_fd, or this thread's own.
    `home`: this thread's own namespace, open (a caller making many saves opening it)."""
    if netns_fd is None:
        return Rtnl(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
    own = home if home is not None else os.open("/proc/thread-self/ns/net",
                                                 os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(netns_fd)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        finally:
            setns(own)  # as in `entered`: never leave the thread in the pod
    finally:
        if home is None:
            os.close(own)
    return Rtnl(sock)
