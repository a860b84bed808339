"""What the udp transport puts on the wire, seen by a peer without UDP_GRO (as flanneld's
socket is): one datagram per inner packet, each at most the tunnel MTU, in order. On
loopback only."""

from __future__ import annotations

import random
import socket

import pytest
from test_gso import frame, split, super_packet  # the segmentation tests' synthetic packets

from gingham.backends.tunnel_engine import UdpTransport
from gingham.dataplane import gso

pytestmark = pytest.mark.unit


def test_a_gso_send_reaches_a_plain_socket_as_one_datagram_per_segment():
    payload = random.Random(6).randbytes(65000)
    view, size = gso.outbound(frame(super_packet(payload), 1420), bytearray(1 << 18))
    packets = split(view, size)
    transport = UdpTransport(0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with transport.sock, peer:
        peer.bind(("127.0.0.1", 0))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        peer.settimeout(2)
        transport.send(view, size, peer.getsockname())
        received = [peer.recv(65535) for _ in packets]
    assert received == packets and max(map(len, received)) == 1472
