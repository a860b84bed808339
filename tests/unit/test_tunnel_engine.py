"""The userspace tunnel's forwarding decisions, with a pipe for the TUN device."""

from __future__ import annotations

import ipaddress
import os
import socket

from gingham.backends.userspace import TunnelEngine

N, A = ipaddress.IPv4Network, ipaddress.IPv4Address


class RecordingTransport:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent: list[tuple[bytes, ipaddress.IPv4Address]] = []

    def send(self, packet: bytes, remote: ipaddress.IPv4Address) -> None:
        self.sent.append((packet, remote))


def ipv4(dst: str) -> bytes:
    return bytes([0x45]) + bytes(11) + socket.inet_aton("10.244.1.2") + socket.inet_aton(dst)


def engine() -> tuple[TunnelEngine, RecordingTransport, int]:
    read_end, write_end = os.pipe()
    transport = RecordingTransport()
    eng = TunnelEngine(write_end, transport, 24)
    eng.update({N("10.244.2.0/24"): A("192.168.50.12"), N("10.244.3.0/24"): A("192.168.60.13")})
    return eng, transport, read_end


def test_outbound_goes_to_the_node_holding_the_subnet():
    eng, transport, _ = engine()
    eng._outbound(ipv4("10.244.3.7"))
    eng._outbound(ipv4("10.244.9.9"))  # no lease: dropped
    eng._outbound(bytes([0x60]) + bytes(39))  # IPv6: dropped
    assert [remote for _, remote in transport.sent] == [A("192.168.60.13")]


def test_inbound_is_accepted_only_from_nodes():
    eng, _, read_end = engine()
    eng._inbound(ipv4("10.244.1.5"), A("192.168.60.13"))
    eng._inbound(ipv4("10.244.1.6"), A("203.0.113.9"))  # not a node: refused
    os.set_blocking(read_end, False)
    delivered = os.read(read_end, 4096)
    assert delivered == ipv4("10.244.1.5")
