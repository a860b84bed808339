"""A tunnel run in userspace by the agent (Flannel's udp backend, and IPIP where the kernel
has no ipip module): a TUN device takes the packets routed to remote subnets; a thread
sends each to the node that holds its subnet over a transport, and writes what arrives
into the TUN device for the kernel to deliver.

Transports: UDP (the packet is the datagram's payload) and raw IP protocol 4 (the kernel
adds the outer IPv4 header itself, so peers see genuine IPIP and kernel IPIP peers can
talk to us).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import threading
from typing import Protocol

from pyroute2 import IPRoute

from gingham.backends.base import (
    BackendPlan,
    LeaseBackend,
    change_routes,
    clear_earlier_tunnels,
    program_routes,
)
from gingham.dataplane import netns
from gingham.dataplane.bridge import link_index
from gingham.dataplane.routes import RouteIntent, apply_routes
from gingham.dataplane.tun import open_tun
from gingham.dataplane.uplink import Uplink
from gingham.subnet.lease import Lease

log = logging.getLogger("gingham.backends.userspace")
MAX_PACKET = 65535
IPPROTO_IPIP = 4


class Transport(Protocol):
    sock: socket.socket

    def send(self, packet: bytes, remote: ipaddress.IPv4Address) -> None: ...

    def receive(self) -> tuple[bytes, ipaddress.IPv4Address]:
        """One inner packet and the node it came from."""
        ...


class UdpTransport:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", port))

    def send(self, packet: bytes, remote: ipaddress.IPv4Address) -> None:
        self.sock.sendto(packet, (str(remote), self.port))

    def receive(self) -> tuple[bytes, ipaddress.IPv4Address]:
        data, (sender, _) = self.sock.recvfrom(MAX_PACKET)
        return data, ipaddress.IPv4Address(sender)


class IpipTransport:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)

    def send(self, packet: bytes, remote: ipaddress.IPv4Address) -> None:
        self.sock.sendto(packet, (str(remote), 0))

    def receive(self) -> tuple[bytes, ipaddress.IPv4Address]:
        data, (sender, _) = self.sock.recvfrom(MAX_PACKET)
        return data[(data[0] & 0x0F) * 4:], ipaddress.IPv4Address(sender)  # drop outer header


class TunnelEngine:
    """Moves packets between the TUN fd and the transport until stopped. `peers` (subnet →
    node address) is swapped whole by update(), so the loop never sees a half-made map."""

    def __init__(self, tun_fd: int, transport: Transport, subnet_len: int) -> None:
        self.tun_fd = tun_fd
        self.transport = transport
        self.mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
        self.peers: dict[int, ipaddress.IPv4Address] = {}
        self.known: frozenset[ipaddress.IPv4Address] = frozenset()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="tunnel", daemon=True)

    def update(self, peers: dict[ipaddress.IPv4Network, ipaddress.IPv4Address]) -> None:
        self.peers = {int(net.network_address): ip for net, ip in peers.items()}
        self.known = frozenset(peers.values())

    def change(self, subnet: ipaddress.IPv4Network,
               address: ipaddress.IPv4Address | None) -> None:
        """Set (or with None, remove) one peer; the packet thread sees either map."""
        if address is None:
            self.peers.pop(int(subnet.network_address), None)
        else:
            self.peers[int(subnet.network_address)] = address
        self.known = frozenset(self.peers.values())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for fd in (self._stop_r, self._stop_w, self.tun_fd):
            os.close(fd)
        self.transport.sock.close()

    def _run(self) -> None:
        sock = self.transport.sock.fileno()
        while True:
            ready, _, _ = select.select([self.tun_fd, sock, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                if self.tun_fd in ready:
                    self._outbound(os.read(self.tun_fd, MAX_PACKET))
                if sock in ready:
                    self._inbound(*self.transport.receive())
            except OSError as err:  # one bad packet or an unreachable peer: keep going
                log.debug("tunnel: %s", err)

    def _outbound(self, packet: bytes) -> None:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return  # not IPv4 (e.g. the kernel's IPv6 chatter on the device)
        remote = self.peers.get(int.from_bytes(packet[16:20], "big") & self.mask)
        if remote is not None:
            self.transport.send(packet, remote)

    def _inbound(self, packet: bytes, sender: ipaddress.IPv4Address) -> None:
        # Only nodes holding a lease may inject packets into this node.
        if sender in self.known and len(packet) >= 20 and packet[0] >> 4 == 4:
            os.write(self.tun_fd, packet)


class UserspaceBackend(LeaseBackend):
    """What udp and userspace ipip share: the TUN device (with the node subnet's `.0`),
    a route per remote subnet into it, and the engine that carries the packets."""

    type = ""
    device = ""
    overhead = 0

    def __init__(self, uplink: Uplink, subnet_len: int) -> None:
        self.uplink = uplink
        self.subnet_len = subnet_len
        self.engine: TunnelEngine | None = None
        self.index: int | None = None

    def transport(self) -> Transport:
        raise NotImplementedError

    def mtu(self, uplink: Uplink) -> int:
        return uplink.mtu - self.overhead

    def lease_data(self) -> dict:
        return {}

    def setup(self, own: Lease) -> None:
        with netns.iproute() as ipr:
            clear_earlier_tunnels(ipr)
        if self.engine is not None:
            return
        transport = self.transport()  # first: a port in use fails before any device exists
        fd = open_tun(self.device)
        with netns.iproute() as ipr:
            index = link_index(ipr, self.device)
            ipr.addr("add", index=index, address=str(own.subnet.network_address), prefixlen=32)
            ipr.link("set", index=index, mtu=self.mtu(self.uplink), state="up")
        self.index = index
        self.engine = TunnelEngine(fd, transport, self.subnet_len)
        self.engine.start()

    def plan_lease(self, own: Lease, lease: Lease) -> BackendPlan:
        assert self.index is not None, "setup() first"
        return self.refused(lease) or BackendPlan(
            routes={RouteIntent(lease.subnet, None, self.index)},
            peers={lease.subnet: lease.attrs.public_ip})

    def apply(self, plan: BackendPlan) -> list[str]:
        assert self.engine is not None
        self.engine.update(plan.peers)  # before the routes: no packet meets an unknown peer
        with netns.iproute() as ipr:
            return program_routes(ipr, plan.routes)

    def apply_changes(self, ipr: IPRoute, added: BackendPlan, removed: BackendPlan) -> None:
        assert self.engine is not None
        for subnet, address in added.peers.items():
            self.engine.change(subnet, address)
        change_routes(ipr, added.routes, removed.routes)
        for subnet in removed.peers.keys() - added.peers.keys():
            self.engine.change(subnet, None)

    def teardown(self) -> None:
        with netns.iproute() as ipr:
            apply_routes(ipr, set())
        if self.engine is not None:
            self.engine.stop()  # closing the fd removes the device
            self.engine = None
