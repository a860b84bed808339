"""udp and userspace ipip with the TUN offloads on: TCP super packets are cut into segments
on the sending node and merged again on the receiving one, and what arrives is what was
sent, byte for byte, both ways; pings of every size and UDP datagrams (whose checksums
the engine fills in) pass too."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from gingham.dataplane import netns as netns_mod

pytestmark = pytest.mark.integration
DEVICE = {"udp": "flannel0", "ipip": "flannel.ipip"}
STREAM = 8 << 20


@pytest.fixture(scope="module", params=["udp", "ipip"])
def tunnel_lab(request, make_module_lab):
    lab = make_module_lab(2, backend=request.param)
    lab.add_pod("node1", "default/srv")
    lab.add_pod("node2", "default/cli")
    return request.param, lab


def sockets(lab, kind: int) -> tuple[socket.socket, socket.socket, str]:
    """A socket in the node1 pod bound to a free port, one in the node2 pod, and the
    first one's address."""
    with netns_mod.entered(lab.netns_path("default/srv")):
        server = socket.socket(socket.AF_INET, kind)
    with netns_mod.entered(lab.netns_path("default/cli")):
        client = socket.socket(socket.AF_INET, kind)
    server.bind(("0.0.0.0", 0))
    for s in (server, client):
        s.settimeout(20)
    return server, client, lab.files.load().pods["default/srv"].ip


def receive_all(conn: socket.socket, digest: list[str]) -> None:
    h, left = hashlib.sha256(), STREAM
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    digest.append(h.hexdigest())


def start_capture(lab, node: str, device: str, direction: str) -> subprocess.Popen:
    """tcpdump of up to 3 packets longer than 3000 bytes crossing `device` in `direction`:
    only super packets are that long (the device's MTU is below 1500). `out` of the TUN
    device is what the kernel hands the engine (TSO), `in` what the engine writes (merged)."""
    return lab.popen(node, "tcpdump", "-nli", device, "-Q", direction, "-c", "3",
                     "greater", "3000", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                     text=True)


def captured(capture: subprocess.Popen) -> int:
    try:
        out = capture.communicate(timeout=3)[0]
    except subprocess.TimeoutExpired:
        capture.kill()
        out = capture.communicate()[0]
    return len(out.splitlines())


def test_a_tcp_stream_arrives_intact_both_ways_as_super_packets(tunnel_lab):
    backend, lab = tunnel_lab
    server, client, address = sockets(lab, socket.SOCK_STREAM)
    data = os.urandom(STREAM)
    sent = hashlib.sha256(data).hexdigest()
    captures = {(node, direction): start_capture(lab, node, DEVICE[backend], direction)
                for node in ("node1", "node2") for direction in ("in", "out")}
    time.sleep(0.5)  # tcpdump attaches before the traffic starts
    try:
        with server, client:
            server.listen(1)
            client.connect((address, server.getsockname()[1]))
            conn, _ = server.accept()
            with conn:
                got: list[str] = []
                reader = threading.Thread(target=receive_all, args=(conn, got))
                reader.start()
                client.sendall(data)
                reader.join(30)
                back: list[str] = []
                reader = threading.Thread(target=receive_all, args=(client, back))
                reader.start()
                conn.sendall(data)
                reader.join(30)
    finally:
        seen = {key: captured(capture) for key, capture in captures.items()}
    assert got == [sent] and back == [sent]
    assert all(seen.values()), f"no super packets on {DEVICE[backend]}: {seen}"


def test_pings_of_every_size_pass(tunnel_lab):
    backend, lab = tunnel_lab
    address = lab.files.load().pods["default/srv"].ip
    link = lab.run("node1", "ip", "-j", "link", "show", "dev", DEVICE[backend]).stdout
    mtu = json.loads(link)[0]["mtu"]
    for size in (0, 56, 1000, mtu - 28):  # the largest that fits the tunnel unfragmented
        out = lab.run("default/cli", "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                      "-M", "do", "-s", str(size), address, check=False)
        assert out.returncode == 0, f"ping -s {size}: {out.stdout}"


def test_udp_datagrams_arrive_with_their_checksums_right(tunnel_lab):
    """The pod's kernel leaves UDP checksums to the device (TUN_F_CSUM): the engine fills
    them in, and the receiving kernel drops any it finds wrong."""
    _, lab = tunnel_lab
    server, client, address = sockets(lab, socket.SOCK_DGRAM)
    with server, client:
        payloads = [os.urandom(n) for n in (1, 100, 999, 1400)]
        for payload in payloads:
            client.sendto(payload, (address, server.getsockname()[1]))
        assert [server.recv(2048) for _ in payloads] == payloads
