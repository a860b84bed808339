"""What an agent has put into a node's kernel, as a benchmark sees it: its routes (protocol
71, main table, or another protocol's: BIRD's 12), permanent neighbour entries and VXLAN FDB
entries.

Two ways to look: a netlink dump of what is there now, and a monitor of the notifications
of several namespaces, read by one thread that sleeps in select, so each notification is
timestamped as soon as the kernel queues it. Both decode the same messages into `Change`s.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gingham.dataplane import netns
from gingham.dataplane.routes import GINGHAM_PROTO, MAIN_TABLE
from gingham.lab import procs

ROUTE, NEIGH, FDB = "route", "neigh", "fdb"
CHAIN = "chain"  # an nftables chain made or removed (NETLINK_NETFILTER, on its own)
NEW, DEL = "new", "del"
RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE = 0x4, 0x40
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NOBUFS_ERRNO = 105  # ENOBUFS: the reader fell behind and the kernel dropped notifications
RTA_DST, RTA_TABLE = 1, 15
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NLMSG = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BBHiHBB")
NETLINK_NETFILTER, NFNLGRP_NFTABLES = 12, 7
NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN = (10 << 8) | 3, (10 << 8) | 5  # subsystem nftables
NFTA_CHAIN_NAME = 3
NFGENMSG_SIZE = 4
SO_RCVBUFFORCE = 33  # SO_RCVBUF past rmem_max (root); Python's socket module lacks it
RECV_BUFFER = 64 << 20  # a join programs ~3 entries per peer at once; none may be dropped


@dataclass(frozen=True)
class Entry:
    kind: str  # ROUTE, NEIGH or FDB
    key: str  # route: its destination; neighbour: its IP; FDB: its MAC


@dataclass(frozen=True)
class Change:
    op: str  # NEW or DEL
    entry: Entry


def decode_chains(data: bytes) -> list[Change]:
    """The nftables chains made or removed among the notifications in `data`."""
    changes = []
    for kind, body in netns.messages(data):
        if kind in (NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN):
            attrs = netns.attributes(body, NFGENMSG_SIZE)
            if NFTA_CHAIN_NAME in attrs:
                name = attrs[NFTA_CHAIN_NAME].rstrip(b"\0").decode()
                changes.append(Change(NEW if kind == NFT_MSG_NEWCHAIN else DEL,
                                      Entry(CHAIN, name)))
    return changes


def decode(data: bytes, proto: int = GINGHAM_PROTO) -> list[Change]:
    """The agent's entries among the netlink messages in `data` (notifications, or the
    answers of a dump). A neighbour that stops being permanent counts as gone: deleting one
    first marks it failed, then removes it."""
    changes = []
    for kind, body in netns.messages(data):
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            change = _route(kind, body, proto)
        elif kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
            change = _neighbour(kind, body)
        else:
            change = None
        if change is not None:
            changes.append(change)
    return changes


def _route(kind: int, body: bytes, wanted: int) -> Change | None:
    family, dst_len, _, _, table, proto, _, _, _ = RTMSG.unpack_from(body)
    attrs = netns.attributes(body, RTMSG.size)
    if RTA_TABLE in attrs:
        (table,) = struct.unpack("=I", attrs[RTA_TABLE][:4])
    if family != socket.AF_INET or proto != wanted or table != MAIN_TABLE \
            or RTA_DST not in attrs:
        return None
    dst = f"{socket.inet_ntoa(attrs[RTA_DST][:4])}/{dst_len}"
    return Change(NEW if kind == RTM_NEWROUTE else DEL, Entry(ROUTE, dst))


def _neighbour(kind: int, body: bytes) -> Change | None:
    family, _, _, _, state, _, _ = NDMSG.unpack_from(body)
    attrs = netns.attributes(body, NDMSG.size)
    if family == socket.AF_INET and NDA_DST in attrs:
        present = kind == RTM_NEWNEIGH and bool(state & NUD_PERMANENT)
        return Change(NEW if present else DEL,
                      Entry(NEIGH, socket.inet_ntoa(attrs[NDA_DST][:4])))
    if family == socket.AF_BRIDGE and NDA_DST in attrs and NDA_LLADDR in attrs:
        mac = attrs[NDA_LLADDR][:6]
        if not any(mac):
            return None  # the all-zero default entry of a VTEP, not a peer
        return Change(NEW if kind == RTM_NEWNEIGH else DEL,
                      Entry(FDB, ":".join(f"{b:02x}" for b in mac)))
    return None


def _socket_in(ns: str, groups: int = 0, protocol: int = 0) -> socket.socket:
    # A socket stays in the namespace it was made in: step in, make it, step out.
    with netns.entered(procs.netns_path(ns)):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECV_BUFFER)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


def dump(ns: str) -> set[Entry]:
    """The agent's routes, neighbours and FDB entries in namespace `ns` now."""
    requests = [(RTM_GETROUTE, RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)),
                (RTM_GETNEIGH, NDMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0)),
                (RTM_GETNEIGH, NDMSG.pack(socket.AF_BRIDGE, 0, 0, 0, 0, 0, 0))]
    found: set[Entry] = set()
    with _socket_in(ns) as sock:
        for seq, (kind, body) in enumerate(requests, start=1):
            sock.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP,
                                 seq, 0) + body)
            while True:
                data = sock.recv(1 << 20)
                found |= {c.entry for c in decode(data) if c.op == NEW}
                if _done(data):
                    break
    return found


def _done(data: bytes) -> bool:
    at = 0
    while at + NLMSG.size <= len(data):
        size, kind, _, _, _ = NLMSG.unpack_from(data, at)
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, at + NLMSG.size)
            raise OSError(-error, "netlink dump refused")
        if kind == NLMSG_DONE or size < NLMSG.size:
            return True
        at += (size + 3) & ~3
    return False


Listener = Callable[[str, Change, float], None]


class KernelWatch:
    """The notifications of several namespaces (label -> namespace name), for `kinds` of
    entries. `expect` arms changes before they are made, `wait` returns when each namespace
    has shown each of them; `listener`, if given, sees every change as it is read; `proto`:
    whose routes. CHAIN is watched alone (another netlink family)."""

    def __init__(self, namespaces: dict[str, str], kinds: Iterable[str] = (ROUTE,),
                 listener: Listener | None = None, proto: int = GINGHAM_PROTO) -> None:
        self.labels = list(namespaces)
        self.proto = proto
        kinds = set(kinds)
        groups = (RTMGRP_IPV4_ROUTE if ROUTE in kinds else 0) | \
            (RTMGRP_NEIGH if kinds & {NEIGH, FDB} else 0)
        protocol = 0
        if CHAIN in kinds:
            assert kinds == {CHAIN}, "chains come on a socket of their own"
            groups, protocol = 1 << (NFNLGRP_NFTABLES - 1), NETLINK_NETFILTER
        self.kinds = kinds
        self.listener = listener
        self.overruns = 0
        self._selector = selectors.DefaultSelector()
        self._socks: list[socket.socket] = []
        self._cond = threading.Condition()
        # Armed change -> label -> first time seen.
        self._seen: dict[Change, dict[str, float]] = {}
        self._stop = threading.Event()
        try:
            for label, ns in namespaces.items():
                sock = _socket_in(ns, groups, protocol)
                self._socks.append(sock)
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ, label)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._run, name="kernel-watch", daemon=True)
        self._thread.start()

    def expect(self, changes: Iterable[Change]) -> None:
        """Start recording these changes: call before making them."""
        with self._cond:
            for change in changes:
                self._seen[change] = {}

    def wait(self, changes: Iterable[Change], timeout: float) -> dict[Change, dict[str, float]]:
        """Change -> label -> monotonic time of its first notification, once every
        namespace has shown every change (or at the timeout, with whatever arrived)."""
        changes = list(changes)
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(len(self._seen[c]) < len(self.labels) for c in changes):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return {c: self._seen.pop(c) for c in changes}

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.2):
                now = time.monotonic()
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                while True:
                    try:
                        data = sock.recv(1 << 20)
                    except BlockingIOError:
                        break
                    except OSError as err:
                        if err.errno == NOBUFS_ERRNO:
                            self.overruns += 1
                            continue
                        if self._stop.is_set():
                            return
                        raise
                    self._record(key.data, data, now)

    def _record(self, label: str, data: bytes, now: float) -> None:
        changes = decode_chains(data) if CHAIN in self.kinds else decode(data, self.proto)
        changes = [c for c in changes if c.entry.kind in self.kinds]
        if self.listener is not None:
            for change in changes:
                self.listener(label, change, now)
        with self._cond:
            for change in changes:
                seen = self._seen.get(change)
                if seen is not None and label not in seen:
                    seen[label] = now
                    self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(2)
        self._selector.close()
        for sock in self._socks:
            sock.close()
