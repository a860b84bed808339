"""The userspace tunnel's forwarding decisions, with a pipe for the TUN device."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from gingham.backends.userspace import TunnelEngine
from gingham.dataplane import gso

pytestmark = pytest.mark.unit
N, A = ipaddress.IPv4Network, ipaddress.IPv4Address


class RecordingTransport:
    verify_inner = True

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent: list[tuple[bytes, int, tuple[str, int]]] = []

    def address(self, node: ipaddress.IPv4Address) -> tuple[str, int]:
        return str(node), 8285

    def send(self, packets: memoryview, size: int, remote: tuple[str, int]) -> None:
        self.sent.append((bytes(packets), size, remote))


def ipv4(dst: str) -> bytes:
    return bytes([0x45]) + bytes(11) + socket.inet_aton("10.244.1.2") + socket.inet_aton(dst)


def engine() -> tuple[TunnelEngine, RecordingTransport, int]:
    read_end, write_end = os.pipe()
    transport = RecordingTransport()
    eng = TunnelEngine(write_end, transport, 24)
    eng.update({N("10.244.2.0/24"): A("192.168.50.12"), N("10.244.3.0/24"): A("192.168.60.13")})
    return eng, transport, read_end


def outbound(eng: TunnelEngine, packet: bytes) -> None:
    eng._outbound(memoryview(bytearray(gso.PLAIN + packet)), bytearray(1 << 16))


def inbound(eng: TunnelEngine, read_end: int, packets: list[tuple[bytes, str]]) -> bytes:
    """What the engine writes to the device for these (packet, sender)s."""
    buf = bytearray(b"".join(p for p, _ in packets))
    spans, o = [], 0
    for packet, sender in packets:
        spans.append((sender, o, o + len(packet)))
        o += len(packet)
    eng._inbound(buf, spans)
    os.set_blocking(read_end, False)
    try:
        return os.read(read_end, 1 << 16)
    except BlockingIOError:
        return b""


def test_outbound_goes_to_the_node_holding_the_subnet():
    eng, transport, _ = engine()
    outbound(eng, ipv4("10.244.3.7"))
    outbound(eng, ipv4("10.244.9.9"))  # no lease: dropped
    outbound(eng, bytes([0x60]) + bytes(39))  # IPv6: dropped
    assert transport.sent == [(ipv4("10.244.3.7"), 20, ("192.168.60.13", 8285))]


def test_inbound_is_accepted_only_from_nodes():
    eng, _, read_end = engine()
    delivered = inbound(eng, read_end, [(ipv4("10.244.1.5"), "192.168.60.13"),
                              (ipv4("10.244.1.6"), "203.0.113.9")])  # not a node: refused
    assert delivered == gso.PLAIN + ipv4("10.244.1.5")


def test_change_sets_and_removes_one_peer_and_keeps_senders_counted():
    eng, transport, read_end = engine()
    eng.change(N("10.244.4.0/24"), A("192.168.60.13"))  # a second subnet of that node
    outbound(eng, ipv4("10.244.4.1"))
    assert transport.sent[-1][2] == ("192.168.60.13", 8285)
    eng.change(N("10.244.3.0/24"), None)
    outbound(eng, ipv4("10.244.3.1"))  # gone: dropped
    assert len(transport.sent) == 1
    # still holds 10.244.4.0/24, so still let in
    assert inbound(eng, read_end, [(ipv4("10.244.1.5"), "192.168.60.13")]) != b""
    eng.change(N("10.244.4.0/24"), A("192.168.50.12"))  # moved to the other node
    assert inbound(eng, read_end, [(ipv4("10.244.1.5"), "192.168.60.13")]) == b""
    assert eng.known == {"192.168.50.12": 2}
    eng.change(N("10.244.9.0/24"), None)  # never held: nothing to do
    assert eng.peers.keys() == {int(A("10.244.2.0")), int(A("10.244.4.0"))}
