"""Calico's routed pod attachment in real namespaces: the shapes `ip` shows on both ends,
and pods reaching the node and each other through it with no bridge and no default route
on the node."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from gingham.dataplane import netns, podlink

A = ipaddress.IPv4Address


def ip(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def spaces() -> Iterator[dict[str, str]]:
    """A node namespace (192.0.2.1 on its lo, forwarding on, no default route) and two pod
    namespaces; all removed afterwards."""
    tag = secrets.token_hex(3)
    names = {"node": f"trl{tag}n", "pod1": f"trl{tag}a", "pod2": f"trl{tag}b"}
    try:
        for name in names.values():
            subprocess.run(["ip", "netns", "add", name], check=True)
        node = names["node"]
        ip(node, "link", "set", "lo", "up")
        ip(node, "addr", "add", "192.0.2.1/32", "dev", "lo")
        subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                       check=True)
        yield names
    finally:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def attach(spaces: dict[str, str], pod: str, address: str) -> podlink.PodLink:
    pod_fd = netns.open_netns(f"/run/netns/{spaces[pod]}")
    try:
        with netns.entered(f"/run/netns/{spaces['node']}"), netns.rtnl_socket() as node, \
                netns.rtnl_socket(pod_fd) as pod_rtnl:
            return podlink.connect_routed(
                node, pod_rtnl, pod_fd, host_name=podlink.routed_veth_name("default", pod),
                pod_name="eth0", mtu=1480, address=A(address), alias=f"test {pod}")
    finally:
        os.close(pod_fd)


def test_the_routed_shapes_and_traffic_without_a_bridge(spaces):
    one = attach(spaces, "pod1", "10.244.7.1")
    attach(spaces, "pod2", "10.244.7.2")
    cali = podlink.routed_veth_name("default", "pod1")
    assert cali == "cali" + hashlib.sha1(b"default.pod1").hexdigest()[:11]
    assert one.host_mac == "ee:ee:ee:ee:ee:ee"
    node = spaces["node"]
    routes = {r["dst"]: r for r in json.loads(ip(node, "-j", "route", "show"))}
    assert routes["10.244.7.1"]["dev"] == cali and routes["10.244.7.1"]["scope"] == "link"
    assert "default" not in routes
    link = json.loads(ip(node, "-j", "-d", "addr", "show", "dev", cali))[0]
    assert link["address"] == "ee:ee:ee:ee:ee:ee" and link["mtu"] == 1480
    assert not [a for a in link["addr_info"] if a["family"] == "inet"]
    for key, value in (("conf/{}/proxy_arp", "1"), ("neigh/{}/proxy_delay", "0"),
                       ("conf/{}/forwarding", "1")):
        path = "net.ipv4." + key.format(cali).replace("/", ".")
        got = subprocess.run(["ip", "netns", "exec", node, "sysctl", "-n", path],
                             check=True, capture_output=True, text=True).stdout.strip()
        assert got == value, path
    pod = spaces["pod1"]
    assert "10.244.7.1/32" in ip(pod, "-4", "addr", "show", "dev", "eth0")
    pod_routes = ip(pod, "route", "show")
    assert "default via 169.254.1.1 dev eth0" in pod_routes
    assert "169.254.1.1 dev eth0 scope link" in pod_routes
    for source, target in (("pod1", "192.0.2.1"), ("pod1", "10.244.7.2"), ("pod2", "10.244.7.1")):
        ping = subprocess.run(["ip", "netns", "exec", spaces[source], "ping", "-c1", "-W2",
                               target], capture_output=True)
        assert ping.returncode == 0, f"{source} -> {target}"
