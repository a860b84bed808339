"""Entering network namespaces from a thread, and netlink handles bound to one.

setns(CLONE_NEWNET) changes only the calling thread, and a socket stays in the namespace it
was created in. So a netlink socket for any namespace is made by stepping in, creating it and
stepping back: ~1 ms, where pyroute2's own `netns=` forks a helper process.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)


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


def same_netns(path: str) -> bool:
    """Whether `path` names the namespace this thread is in."""
    a, b = os.stat(path), os.stat("/proc/thread-self/ns/net")
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
