"""The userspace tunnel's C loops end to end, on loopback only: a unix datagram socket
stands in for the TUN device (one frame per message), the nodes are 127.0.0.x."""

from __future__ import annotations

import contextlib
import ipaddress
import random
import socket
from collections.abc import Iterator

import pytest
from test_tunnel_loops import PLAIN, VNET, VNET_LEN, frame, super_packet

from gingham.backends.tunnel_engine import TunnelEngine, UdpTransport

pytestmark = pytest.mark.unit
N, A = ipaddress.IPv4Network, ipaddress.IPv4Address
NODE2, NODE3, STRANGER = A("127.0.0.2"), A("127.0.0.3"), A("127.0.0.9")


class LoopbackTransport(UdpTransport):
    """udp, but each node on its own port (all share 127/8 with the engine's socket)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ports: dict[ipaddress.IPv4Address, int] = {}

    def port_of(self, node: ipaddress.IPv4Address) -> int:
        return self.ports[node]


def node_socket(address: ipaddress.IPv4Address) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(address), 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(2)
    return sock


@contextlib.contextmanager
def engine() -> Iterator[tuple[TunnelEngine, socket.socket, dict]]:
    """A running engine for 10.244.2.0/24 → NODE2 and 10.244.3.0/24 → NODE3; yields it, the
    TUN stand-in's other end and the nodes' sockets."""
    tun, device = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    transport = LoopbackTransport()
    nodes = {ip: node_socket(ip) for ip in (NODE2, NODE3, STRANGER)}
    transport.ports = {ip: sock.getsockname()[1] for ip, sock in nodes.items()}
    eng = TunnelEngine(tun.detach(), transport)
    eng.update({N("10.244.2.0/24"): NODE2, N("10.244.3.0/24"): NODE3})
    eng.start()
    device.settimeout(2)
    try:
        yield eng, device, nodes
    finally:
        eng.stop()
        device.close()
        for sock in nodes.values():
            sock.close()


def ipv4(dst: str) -> bytes:
    return bytes([0x45]) + bytes(11) + socket.inet_aton("10.244.1.2") + socket.inet_aton(dst)


def nothing_more(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        sock.recv(1 << 16)
    except TimeoutError:
        return True
    return False


def into_engine(eng: TunnelEngine, sender: socket.socket, packet: bytes) -> None:
    sender.sendto(packet, ("127.0.0.1", eng.transport.sock.getsockname()[1]))


def test_outbound_goes_to_the_node_holding_the_subnet():
    with engine() as (_, device, nodes):
        device.send(PLAIN + ipv4("10.244.9.9"))  # no lease: dropped
        device.send(PLAIN + bytes([0x60]) + bytes(39))  # IPv6: dropped
        device.send(PLAIN + ipv4("10.244.3.7"))
        assert nodes[NODE3].recv(1 << 16) == ipv4("10.244.3.7")
        assert nothing_more(nodes[NODE3]) and nothing_more(nodes[NODE2])


def test_inbound_is_accepted_only_from_nodes():
    with engine() as (eng, device, nodes):
        into_engine(eng, nodes[STRANGER], ipv4("10.244.1.6"))  # not a node: refused
        into_engine(eng, nodes[NODE3], ipv4("10.244.1.5"))
        assert device.recv(1 << 16) == PLAIN + ipv4("10.244.1.5")
        assert nothing_more(device)


def test_change_sets_and_removes_one_peer_and_keeps_senders_counted():
    with engine() as (eng, device, nodes):
        eng.change(N("10.244.4.0/24"), NODE3)  # a second subnet of that node
        device.send(PLAIN + ipv4("10.244.4.1"))
        assert nodes[NODE3].recv(1 << 16) == ipv4("10.244.4.1")
        eng.change(N("10.244.3.0/24"), None)
        device.send(PLAIN + ipv4("10.244.3.1"))  # gone: dropped
        assert nothing_more(nodes[NODE3])
        # still holds 10.244.4.0/24, so still let in
        into_engine(eng, nodes[NODE3], ipv4("10.244.1.5"))
        assert device.recv(1 << 16) == PLAIN + ipv4("10.244.1.5")
        eng.change(N("10.244.4.0/24"), NODE2)  # moved to the other node: NODE3 holds none
        into_engine(eng, nodes[NODE3], ipv4("10.244.1.5"))
        assert nothing_more(device)
        assert eng.known == {NODE2: 2}
        eng.change(N("10.244.9.0/24"), None)  # never held: nothing to do
        assert eng.nodes.keys() == {N("10.244.2.0/24"), N("10.244.4.0/24")}


def test_the_longest_prefix_wins():
    with engine() as (eng, device, nodes):
        eng.change(N("10.244.3.7/32"), NODE2)  # borrowed from NODE3's block, held by NODE2
        device.send(PLAIN + ipv4("10.244.3.7"))
        device.send(PLAIN + ipv4("10.244.3.8"))
        assert nodes[NODE2].recv(1 << 16) == ipv4("10.244.3.7")
        assert nodes[NODE3].recv(1 << 16) == ipv4("10.244.3.8")
        eng.change(N("10.244.3.7/32"), None)
        device.send(PLAIN + ipv4("10.244.3.7"))
        assert nodes[NODE3].recv(1 << 16) == ipv4("10.244.3.7")


def test_a_super_packet_leaves_as_one_datagram_per_segment():
    """What a peer without UDP_GRO (as flanneld's socket is) receives: one datagram per
    inner packet, each at most the tunnel MTU, in order."""
    payload = random.Random(6).randbytes(65000)
    with engine() as (eng, device, nodes):
        eng.change(N("10.244.1.0/24"), NODE2)  # where super_packet() goes
        device.send(bytes(frame(super_packet(payload), 1420)))
        received = [nodes[NODE2].recv(1 << 16) for _ in range(46)]
    assert max(map(len, received)) == 1472 and b"".join(p[52:] for p in received) == payload


def test_a_super_packet_crosses_two_engines_and_arrives_merged():
    payload = random.Random(8).randbytes(65000)
    with engine() as (sending, sender_device, _), engine() as (receiving, device, _):
        # super_packet()'s 10.244.1.0/24 is the receiver, which takes packets from 127.0.0.1
        sending.transport.ports[A("127.0.0.4")] = receiving.transport.sock.getsockname()[1]
        sending.change(N("10.244.1.0/24"), A("127.0.0.4"))
        receiving.transport.ports[A("127.0.0.1")] = 0  # never sent to
        receiving.change(N("10.244.5.0/24"), A("127.0.0.1"))
        sender_device.send(bytes(frame(super_packet(payload), 1420)))
        data = b""
        writes = 0
        while len(data) < len(payload):
            write = device.recv(1 << 17)
            _, gso_type, _, gso_size, _, _ = VNET.unpack_from(write)
            assert write[VNET_LEN] == 0x45 and (gso_type, gso_size) in ((1, 1420), (0, 0))
            data += write[VNET_LEN + 52:]
            writes += 1
    assert data == payload and writes <= 4  # 44 + 2 datagrams a send, each run one write
