"""The kernel-IPIP side of the ipip backend, as far as a kernel without IPIP lets it be
tested: the probe, and the backend's ownership of what it puts on tunl0.

These machines have no ipip module, so no real tunl0 exists and no packet is encapsulated
by the kernel here (the userspace path carries ipip in the lab). A veth named tunl0 stands
in for the device: the address, label, MTU, link state and routes the backend programs are
the same netlink objects on either kind of device.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import uuid

import pytest

from gingham.backends.base import clear_earlier_tunnels
from gingham.backends.ipip import KernelIpipBackend
from gingham.dataplane import netns, tunl0
from gingham.dataplane.uplink import find_uplink
from gingham.lab import procs
from gingham.subnet.lease import Lease, LeaseAttrs

N, A = ipaddress.IPv4Network, ipaddress.IPv4Address
OWN = Lease(N("10.244.1.0/24"), LeaseAttrs(A("192.168.50.11"), "ipip", "node1"))
PEER = Lease(N("10.244.2.0/24"), LeaseAttrs(A("192.168.60.12"), "ipip", "node2"))
FOREIGN = "198.51.100.7/32"  # someone else's address on tunl0: never Gingham's to remove


@pytest.fixture
def ns():
    name = f"gtip-{uuid.uuid4().hex[:8]}"
    procs.add_netns(name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def ip(ns: str, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out) if out.strip() else []


def links(ns: str) -> set[str]:
    return {link["ifname"] for link in ip(ns, "link", "show")}


def addresses(ns: str, dev: str) -> dict[str, str]:
    """address/prefix -> label"""
    return {f"{a['local']}/{a['prefixlen']}": a.get("label", "")
            for link in ip(ns, "-4", "addr", "show", "dev", dev) for a in link["addr_info"]}


def stand_in(ns: str) -> None:
    """eth0 as the uplink, and a veth named tunl0 in place of the kernel's device."""
    for dev, peer in (("eth0", "ul-peer"), ("tunl0", "t-peer")):
        subprocess.run(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name",
                        peer], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", "192.168.50.11/24", "dev", "eth0"],
                   check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)


def test_the_probe_answers_for_this_kernel_and_leaves_no_device(ns):
    with netns.entered(procs.netns_path(ns)), netns.iproute() as ipr:
        has = tunl0.kernel_has_ipip(ipr)
    assert "gingham.probe" not in links(ns)
    # tunl0 is there exactly when the kernel has IPIP (none on these machines)
    assert has == ("tunl0" in links(ns))


def test_the_backend_owns_only_its_address_on_tunl0_and_its_routes(ns):
    stand_in(ns)
    subprocess.run(["ip", "-n", ns, "addr", "add", FOREIGN, "dev", "tunl0"], check=True)
    with netns.entered(procs.netns_path(ns)):
        with netns.iproute() as ipr:
            backend = KernelIpipBackend(find_uplink(ipr, "eth0"))
        backend.setup(OWN)
        assert backend.apply(backend.plan(OWN, [OWN, PEER])) == []
        [link] = ip(ns, "link", "show", "dev", "tunl0")
        assert link["mtu"] == 1480 and "UP" in link["flags"]
        assert addresses(ns, "tunl0") == {FOREIGN: "tunl0", "10.244.1.0/32": "tunl0:gingham"}
        [route] = ip(ns, "route", "show", "10.244.2.0/24")
        assert (route["gateway"], route["dev"], route["protocol"]) == \
            ("192.168.60.12", "tunl0", "71")
        assert "onlink" in route["flags"]
        # A new lease moves Gingham's address; setup twice is harmless.
        moved = Lease(N("10.244.9.0/24"), OWN.attrs)
        backend.setup(moved)
        backend.setup(moved)
        assert addresses(ns, "tunl0") == {FOREIGN: "tunl0", "10.244.9.0/32": "tunl0:gingham"}
        backend.teardown()
    assert ip(ns, "route", "show", "10.244.2.0/24") == []
    assert addresses(ns, "tunl0") == {FOREIGN: "tunl0"}
    [link] = ip(ns, "link", "show", "dev", "tunl0")
    assert "UP" in link["flags"]  # someone else's address is still on it: left up


def test_another_backend_clears_what_kernel_ipip_left(ns):
    """A switch away from ipip made while the agent was down: the next backend's setup
    takes Gingham's address off tunl0 and the device down, and leaves the device."""
    stand_in(ns)
    with netns.entered(procs.netns_path(ns)), netns.iproute() as ipr:
        tunl0.claim(ipr, OWN.subnet.network_address, 1480)
        clear_earlier_tunnels(ipr)
    assert addresses(ns, "tunl0") == {}
    [link] = ip(ns, "link", "show", "dev", "tunl0")
    assert "UP" not in link["flags"]
