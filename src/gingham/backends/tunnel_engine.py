"""The userspace tunnels' datapath: between a TUN device (opened with a virtio-net header
and TCP segmentation offload, see dataplane/tun.py) and a transport socket.

The packets themselves are moved by two C loops (dataplane/tunnel_loops.c), one thread
per direction with the GIL released: outbound one read takes a TCP super packet of up to
64 KB, cut into MTU-sized packets with their checksums and sent in one UDP GSO send
(UDP_SEGMENT) or one sendmmsg of raw IPIP packets; inbound a UDP GRO receive or a recvmmsg
batch is merged back into super packets. On the wire nothing changes: every UDP datagram
or IPIP packet holds one complete inner packet of at most the tunnel MTU, as a kernel peer
sends and expects. Here: the sockets, and the table of where each subnet's packets go.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from typing import Protocol

from gingham.dataplane import tunnel_loops

IPPROTO_IPIP = 4
SOL_UDP = 17
UDP_GRO = 104  # linux/udp.h: receive many datagrams in one, their size in a control message
SOCKET_BUFFER = 4 << 20  # room for bursts of 64 KB sends and receives
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # asm-generic/socket.h; not in Python 3.11


class Transport(Protocol):
    sock: socket.socket
    raw: bool  # IPIP through a raw protocol-4 socket, else udp datagrams
    slot: int  # the largest packet a peer sends (raw receives take one slot each)

    def port_of(self, node: ipaddress.IPv4Address) -> int: ...


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

    raw = False
    slot = 0

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", port))
        self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        _big_buffers(self.sock)

    def port_of(self, node: ipaddress.IPv4Address) -> int:
        return self.port


class IpipTransport:
    """Genuine IPIP: a raw protocol-4 socket, the kernel writes the outer header."""

    raw = True

    def __init__(self, largest: int) -> None:
        """`largest`: the largest IPIP packet a peer sends (the uplink MTU)."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
        _big_buffers(self.sock)
        self.slot = largest

    def port_of(self, node: ipaddress.IPv4Address) -> int:
        return 0


class TunnelEngine:
    """Moves packets between the TUN fd and the transport until stopped. `nodes` (network →
    node; the longest prefix holding a packet's destination wins) is replaced by update()
    or changed one network at a time by change(), each change passed on to the loops'
    table; `known` counts the networks each node holds: only nodes holding one may inject
    packets into this node."""

    def __init__(self, tun_fd: int, transport: Transport) -> None:
        self.tun_fd = tun_fd
        self.transport = transport
        self.nodes: dict[ipaddress.IPv4Network, ipaddress.IPv4Address] = {}
        self.known: dict[ipaddress.IPv4Address, int] = {}
        self.table = tunnel_loops.Table()
        self._changing = threading.Lock()
        sock, raw = transport.sock.fileno(), transport.raw
        self._threads = [
            threading.Thread(target=tunnel_loops.run_outbound, name="tunnel-out", daemon=True,
                             args=(tun_fd, sock, self.table, raw)),
            threading.Thread(target=tunnel_loops.run_inbound, name="tunnel-in", daemon=True,
                             args=(sock, tun_fd, self.table, raw, transport.slot))]

    def update(self, peers: dict[ipaddress.IPv4Network, ipaddress.IPv4Address]) -> None:
        with self._changing:
            for key in self.nodes.keys() - peers.keys():
                self._set(key, None)
            for key, ip in peers.items():
                self._set(key, ip)

    def change(self, subnet: ipaddress.IPv4Network,
               address: ipaddress.IPv4Address | None) -> None:
        """Point `subnet` at the node `address`, or at none: one entry replaced, so the
        packet threads see either the old node or the new one."""
        with self._changing:
            self._set(subnet, address)

    def _set(self, key: ipaddress.IPv4Network, address: ipaddress.IPv4Address | None) -> None:
        old = self.nodes.get(key)
        if old == address:
            return
        if address is not None:  # let the new node in before packets go to it
            self.known[address] = self.known.get(address, 0) + 1
            if self.known[address] == 1:
                self.table.admit(int(address))
            self.nodes[key] = address
            self.table.route(int(key.network_address), key.prefixlen, int(address),
                             self.transport.port_of(address))
        else:
            del self.nodes[key]
            self.table.unroute(int(key.network_address), key.prefixlen)
        if old is not None:
            self.known[old] -= 1
            if not self.known[old]:
                del self.known[old]
                self.table.refuse(int(old))

    def start(self) -> None:
        os.set_blocking(self.tun_fd, False)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.table.stop()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(5)
        os.close(self.tun_fd)
        self.transport.sock.close()
