"""sendmmsg through libc: every datagram of a buffer arrives whole, in order, at the one
address, however many calls the batch limit takes. On loopback only."""

from __future__ import annotations

import random
import socket

import pytest

from gingham.dataplane import mmsg

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("size", "batch"), [(1480, 128), (1480, 8), (1481, 5)])
def test_back_to_back_datagrams_arrive_one_each_in_order(size, batch):
    data = bytearray(random.Random(size + batch).randbytes(65000))
    expected = [bytes(data[o:o + size]) for o in range(0, len(data), size)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender, peer:
        peer.bind(("127.0.0.1", 0))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        peer.settimeout(2)
        mmsg.Sender(sender, batch).send(memoryview(data), size, peer.getsockname())
        received = [peer.recv(65535) for _ in expected]
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(65535)
    assert received == expected and len(expected[-1]) < size


def test_a_refused_send_raises_oserror():
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender, pytest.raises(OSError, match="too long"):  # more than a UDP datagram holds
        mmsg.Sender(sender, 4).send(memoryview(bytearray(70000)), 70000, ("127.0.0.1", 9))


def test_a_batch_is_received_one_datagram_per_slot_and_an_oversized_one_left_out():
    rng = random.Random(9)
    datagrams = [rng.randbytes(n) for n in (1500, 1, 700, 1501, 1499)]  # 1501: over a slot
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender, receiver:
        receiver.bind(("127.0.0.1", 0))
        batch = mmsg.Receiver(receiver, 8, 1500)
        buf = bytearray(8 * 1500)
        assert batch.receive(buf) == []
        for datagram in datagrams:
            sender.sendto(datagram, receiver.getsockname())
        spans = batch.receive(buf)
        assert batch.receive(buf) == []
    assert [bytes(buf[start:end]) for _, start, end in spans] == [
        d for d in datagrams if len(d) <= 1500]
    assert {sender for sender, _, _ in spans} == {"127.0.0.1"}
    assert [start for _, start, _ in spans] == [0, 1500, 3000, 6000]
