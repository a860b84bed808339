"""The userspace tunnels' datapath: between a TUN device (opened with a virtio-net header
and TCP segmentation offload, see dataplane/tun.py) and a transport socket.

Outbound, one read takes a TCP super packet of up to 64 KB; it is cut into MTU-sized
packets with their checksums (dataplane/gso.py) and sent in as few system calls as the
transport allows: one UDP GSO send of equal-size datagrams (UDP_SEGMENT) for udp, one
sendmmsg of all the packets for raw IPIP (the kernel has no GSO for raw sockets). Inbound,
UDP GRO hands over many datagrams in one receive, raw IPIP one recvmmsg of a batch;
consecutive segments of a flow are written back as one super packet. On the wire nothing
changes: every UDP datagram or IPIP packet holds one complete inner packet of at most the
tunnel MTU, as a kernel peer sends and expects.

Two threads, one per direction, so one direction's system calls overlap the other's work.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import struct
import sys
import threading
from typing import Protocol

from gingham.dataplane import gso, mmsg

log = logging.getLogger("gingham.backends.tunnel_engine")
IPPROTO_IPIP = 4
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: the send's datagram size, for one GSO send
UDP_GRO = 104  # receive many datagrams in one, their size in a control message
UDP_MAX_SEGMENTS = 64  # the kernel's limit of datagrams per GSO send
MAX_DATAGRAM = 0xFFFF - 28  # what one IPv4 UDP send may carry in all
MAX_PACKET = 0xFFFF
SOCKET_BUFFER = 4 << 20  # room for bursts of 64 KB sends and receives
RECEIVE_BUFFER = 1 << 18  # a GRO receive, or a batch of raw ones
RAW_BATCH = 64  # raw IPIP packets taken per batch
RAW_SEND_BATCH = 128  # raw IPIP packets per send call: a 64 KB super packet at MSS 536
SEGMENT_BUFFER = 1 << 18  # a 64 KB super packet cut at the smallest MSS still fits
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # asm-generic/socket.h; not in Python 3.11
GSO_SIZE = struct.Struct("=H")

Address = tuple[str, int]
Span = tuple[str, int, int]  # sender, start and end of one inner packet in the buffer


class Transport(Protocol):
    sock: socket.socket
    verify_inner: bool  # no outer checksum covered the inner packet: check it before merging

    def address(self, node: ipaddress.IPv4Address) -> Address: ...

    def send(self, packets: memoryview, size: int, remote: Address) -> None:
        """Send the packets back to back in `packets`, each `size` long but the last."""
        ...

    def receive(self, buf: bytearray) -> list[Span]:
        """The inner packets now waiting, read into `buf`; none if nothing waits."""
        ...


def _big_buffers(sock: socket.socket) -> None:
    # The FORCE variants pass the netns's rmem_max/wmem_max; the agent has CAP_NET_ADMIN.
    for option, fallback in ((SO_SNDBUFFORCE, socket.SO_SNDBUF),
                             (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, fallback, SOCKET_BUFFER)


class UdpTransport:
    """Flannel's udp format: each datagram (port 8285 by default) is one inner packet."""

    verify_inner = False  # the UDP checksum covers it, and the kernel checked that

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", port))
        self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        _big_buffers(self.sock)
        self._control = socket.CMSG_SPACE(4)

    def address(self, node: ipaddress.IPv4Address) -> Address:
        return str(node), self.port

    def send(self, packets: memoryview, size: int, remote: Address) -> None:
        step = size * min(UDP_MAX_SEGMENTS, MAX_DATAGRAM // size)
        for o in range(0, len(packets), step):
            chunk = packets[o:o + step]
            if len(chunk) > size:
                self.sock.sendmsg([chunk], [(SOL_UDP, UDP_SEGMENT, GSO_SIZE.pack(size))], 0,
                                  remote)
            else:
                self.sock.sendto(chunk, remote)

    def receive(self, buf: bytearray) -> list[Span]:
        try:
            n, control, _, (sender, _) = self.sock.recvmsg_into([buf], self._control,
                                                                socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        size = n
        for level, kind, data in control:
            if level == SOL_UDP and kind == UDP_GRO:
                size = int.from_bytes(data[:4], sys.byteorder)
        return [(sender, o, min(o + size, n)) for o in range(0, n, size or 1)]


class IpipTransport:
    """Genuine IPIP: a raw protocol-4 socket, the kernel writes the outer header."""

    verify_inner = True  # the outer header's checksum covers only itself

    def __init__(self, largest: int) -> None:
        """`largest`: the largest IPIP packet a peer sends (the uplink MTU)."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
        _big_buffers(self.sock)
        self._sender = mmsg.Sender(self.sock, RAW_SEND_BATCH)
        # even slots: every inner packet starts at an even offset, the checksums' fast case
        self._receiver = mmsg.Receiver(self.sock, RAW_BATCH, largest + (largest & 1))

    def address(self, node: ipaddress.IPv4Address) -> Address:
        return str(node), 0

    def send(self, packets: memoryview, size: int, remote: Address) -> None:
        if len(packets) > size:
            self._sender.send(packets, size, remote)  # one sendmmsg for a whole super packet
        else:
            self.sock.sendto(packets, remote)  # one packet (an ACK): the cheaper call

    def receive(self, buf: bytearray) -> list[Span]:
        # past each outer header (the kernel hands it over on a raw socket)
        return [(sender, start + (buf[start] & 0x0F) * 4, end)
                for sender, start, end in self._receiver.receive(buf)]


class TunnelEngine:
    """Moves packets between the TUN fd and the transport until stopped. `peers` (subnet →
    node) is swapped whole by update() or changed one subnet at a time by change(); the
    packet threads only ever read it. `known` counts the subnets each node holds: only
    nodes holding a lease may inject packets into this node."""

    def __init__(self, tun_fd: int, transport: Transport, subnet_len: int) -> None:
        self.tun_fd = tun_fd
        self.transport = transport
        self.mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
        self.peers: dict[int, Address] = {}
        self.known: dict[str, int] = {}
        self._nodes: dict[int, ipaddress.IPv4Address] = {}  # what change() takes back
        self._changing = threading.Lock()
        self._coalescer = gso.Coalescer(transport.verify_inner)
        self._running = True
        self._stop_r, self._stop_w = os.pipe()
        self._threads = [threading.Thread(target=self._outbound_loop, name="tunnel-out",
                                          daemon=True),
                         threading.Thread(target=self._inbound_loop, name="tunnel-in",
                                          daemon=True)]

    def update(self, peers: dict[ipaddress.IPv4Network, ipaddress.IPv4Address]) -> None:
        nodes = {int(net.network_address) & self.mask: ip for net, ip in peers.items()}
        known: dict[str, int] = {}
        for ip in nodes.values():
            known[str(ip)] = known.get(str(ip), 0) + 1
        with self._changing:
            self.known = known
            self.peers = {key: self.transport.address(ip) for key, ip in nodes.items()}
            self._nodes = nodes

    def change(self, subnet: ipaddress.IPv4Network,
               address: ipaddress.IPv4Address | None) -> None:
        """Point `subnet` at the node `address`, or at none: one key replaced, so the
        packet threads see either the old node or the new one."""
        key = int(subnet.network_address) & self.mask
        with self._changing:
            old = self._nodes.get(key)
            if old == address:
                return
            if address is not None:  # let the new node in before packets go to it
                self.known[str(address)] = self.known.get(str(address), 0) + 1
                self._nodes[key] = address
                self.peers[key] = self.transport.address(address)
            else:
                del self._nodes[key]
                del self.peers[key]
            if old is not None:
                left = self.known[str(old)] - 1
                if left:
                    self.known[str(old)] = left
                else:
                    del self.known[str(old)]

    def start(self) -> None:
        os.set_blocking(self.tun_fd, False)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._running = False
        os.write(self._stop_w, b"x")
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(5)
        for fd in (self._stop_r, self._stop_w, self.tun_fd):
            os.close(fd)
        self.transport.sock.close()

    def _wait(self, fd: int) -> None:
        """Until `fd` is readable or the engine stops."""
        select.select([fd, self._stop_r], [], [])

    def _outbound_loop(self) -> None:
        frame = bytearray(gso.VNET_LEN + MAX_PACKET)
        view = memoryview(frame)
        out = bytearray(SEGMENT_BUFFER)
        while self._running:
            try:
                n = os.readv(self.tun_fd, [frame])
            except BlockingIOError:
                self._wait(self.tun_fd)
                continue
            except OSError as err:
                log.debug("tunnel out: %s", err)
                continue
            try:
                self._outbound(view[:n], out)
            # an unreachable peer, or a frame whose headers do not add up: drop it, go on
            except (OSError, ValueError, IndexError, struct.error) as err:
                log.debug("tunnel out: %s", err)

    def _outbound(self, frame: memoryview, out: bytearray) -> None:
        if len(frame) < gso.VNET_LEN + 20 or frame[gso.VNET_LEN] >> 4 != 4:
            return  # not IPv4 (e.g. the kernel's IPv6 chatter on the device)
        dst = gso.VNET_LEN + 16
        remote = self.peers.get(int.from_bytes(frame[dst:dst + 4], "big") & self.mask)
        if remote is not None:
            packets, size = gso.outbound(frame, out)
            self.transport.send(packets, size, remote)

    def _inbound_loop(self) -> None:
        buf = bytearray(RECEIVE_BUFFER)
        sock = self.transport.sock.fileno()
        while self._running:
            try:
                spans = self.transport.receive(buf)
            except OSError as err:
                log.debug("tunnel in: %s", err)
                continue
            if not spans:
                self._wait(sock)
                continue
            self._inbound(buf, spans)

    def _inbound(self, buf: bytearray, spans: list[Span]) -> None:
        known = self.known
        accepted = [(start, end) for sender, start, end in spans
                    if sender in known and end - start >= 20 and buf[start] >> 4 == 4]
        for write in self._coalescer.writes(buf, accepted):
            try:
                os.writev(self.tun_fd, write)
            except OSError as err:  # the kernel refused one packet: the next may pass
                log.debug("tunnel in: %s", err)
