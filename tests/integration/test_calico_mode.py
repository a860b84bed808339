"""A Calico-mode lab built as a user would (`gingham lab up --mode calico`): routed cali*
pods, block IPAM, routes from block affinities, natOutgoing, and a pool changed by
`gingham apply` converging on every node."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from gingham.dataplane.podlink import routed_veth_name
from waiting import eventually

N = ipaddress.IPv4Network
TWO_SUBNETS = Path(__file__).parents[2] / "examples" / "two-subnets.yaml"


@pytest.fixture(scope="module")
def calico(make_module_lab):
    lab = make_module_lab(2, via_cli=True, cli_args=("--mode", "calico", "--bgp", "off"))
    ips = {ref: lab.add_pod(node, ref).ip
           for node, ref in (("node1", "default/a"), ("node2", "default/b"),
                             ("node1", "web/c"))}
    return lab, ips


def routes(lab, node: str) -> list[dict]:
    return json.loads(lab.run(node, "ip", "-j", "route", "show").stdout)


def test_pods_are_routed_cali_veths_with_the_seeds_route_shapes(calico):
    lab, ips = calico
    node1 = routes(lab, "node1")
    cali = routed_veth_name("default", "a")
    assert {"dst": ips["default/a"], "dev": cali, "scope": "link", "flags": []} in [
        {k: r.get(k) for k in ("dst", "dev", "scope", "flags")} for r in node1]
    own = [r for r in node1 if r.get("type") == "blackhole"]
    assert [r["protocol"] for r in own] == ["80"] and ipaddress.IPv4Address(
        ips["default/a"]) in N(own[0]["dst"])
    to_node2 = [r for r in node1 if r.get("gateway") == "192.168.50.12"]
    assert len(to_node2) == 1 and to_node2[0]["protocol"] == "80"
    assert ipaddress.IPv4Address(ips["default/b"]) in N(to_node2[0]["dst"])
    assert not [r for r in node1 if r.get("protocol") == "71"]  # no Flannel routes
    assert lab.run("node1", "ip", "link", "show", "cni0", check=False).returncode != 0
    pod_routes = lab.run("default/a", "ip", "route", "show").stdout
    assert "default via 169.254.1.1 dev eth0" in pod_routes
    assert f"{ips['default/a']}/32" in lab.run("default/a", "ip", "-4", "addr").stdout


def test_pods_reach_each_other_unnatted_and_the_outside_natted(calico):
    lab, ips = calico
    for source, target in (("default/a", "default/b"), ("default/b", "web/c"),
                           ("web/c", "default/a")):
        assert lab.pings(source, ips[target]), f"{source} -> {target}"
    assert lab.tcp_peer("default/b", "default/a", ips["default/b"]) == ips["default/a"]
    external = str(lab.plan.external.address.ip)
    assert lab.tcp_peer("external", "default/a", external) == "192.168.50.11"  # natOutgoing


def test_ipam_is_consistent_and_shown(calico, cli):
    lab, _ = calico
    check = cli("--lab", lab.name, "ipam", "check")
    assert check.returncode == 0 and check.stdout.strip() == "Found 0 problem(s).", check
    show = cli("--lab", lab.name, "ipam", "show", "--show-blocks").stdout
    assert "IP Pool   10.244.0.0/16" in show and show.count("Block") == 2


def test_a_pool_change_converges_and_an_emptied_block_goes(calico, cli, tmp_path):
    lab, _ = calico
    pool = tmp_path / "pool.yaml"
    pool.write_text("apiVersion: projectcalico.org/v3\nkind: IPPool\n"
                    "metadata: {name: default-ipv4-ippool}\n"
                    "spec: {cidr: 10.244.0.0/16, natOutgoing: false}\n")
    applied = cli("--lab", lab.name, "apply", "-f", str(pool))
    assert applied.stdout.strip() == "Successfully applied 1 'IPPool' resource(s)", applied
    external = str(lab.plan.external.address.ip)
    # without natOutgoing the external host sees the pod's own address, and has no route
    # back to it
    assert eventually(lambda: not lab.pings("default/a", external))
    pool.write_text(pool.read_text().replace("natOutgoing: false", "natOutgoing: true"))
    assert cli("--lab", lab.name, "apply", "-f", str(pool)).returncode == 0
    assert eventually(lambda: lab.pings("default/a", external))
    # node2's only pod goes: its block goes back to the pool, node1 stops routing it
    block = next(r["dst"] for r in routes(lab, "node1") if r.get("gateway") == "192.168.50.12")
    lab.delete_pod("default/b")
    assert eventually(lambda: block not in {r["dst"] for r in routes(lab, "node1")})
    assert cli("--lab", lab.name, "ipam", "check").returncode == 0


DEVICES = {"vxlan": "vxlan.calico", "ipip": "calico.ipip"}  # ipip: the userspace path here


@pytest.mark.parametrize("encap", ["vxlan", "ipip"])
def test_an_encapsulating_pool_tunnels_and_leaves_nothing_when_it_stops(make_lab, cli,
                                                                       tmp_path, encap):
    device = DEVICES[encap]
    lab = make_lab(2, via_cli=True, cli_args=("--mode", "calico", "--encap", encap,
                                                      "--bgp", "off"))
    a = lab.add_pod("node1", "default/a").ip
    b = lab.add_pod("node2", "default/b").ip
    through = [r for r in routes(lab, "node1") if r.get("dev") == device]
    assert len(through) == 1 and "onlink" in through[0]["flags"]
    assert ipaddress.IPv4Address(b) in N(through[0]["dst"])
    mtu = 1450 if encap == "vxlan" else 1480
    assert f"mtu {mtu}" in lab.run("default/a", "ip", "link", "show", "eth0").stdout
    assert lab.pings("default/a", b) and lab.pings("default/b", a)
    if encap == "ipip":  # genuine IPIP on the underlay: protocol 4, node to node
        seen = lab.capture_one("node2", ["-i", "eth0", "ip", "proto", "4"],
                               lambda: lab.pings("default/a", b))
        assert "192.168.50.11 > 192.168.50.12" in seen and f"{a} > {b}" in seen
    pool = tmp_path / "pool.yaml"
    pool.write_text("apiVersion: projectcalico.org/v3\nkind: IPPool\n"
                    "metadata: {name: default-ipv4-ippool}\n"
                    "spec: {cidr: 10.244.0.0/16}\n")
    assert cli("--lab", lab.name, "apply", "-f", str(pool)).returncode == 0
    assert eventually(lambda: lab.run("node1", "ip", "link", "show", device,
                                      check=False).returncode != 0)
    assert eventually(lambda: lab.pings("default/a", b))  # routed directly now
    assert not [r for r in routes(lab, "node1") if r.get("dev") == device]
    check = cli("--lab", lab.name, "ipam", "check")  # the tunnel addresses went back too
    assert check.returncode == 0, check.stdout
    assert "tunnel-addr" not in json.dumps(
        cli("--lab", lab.name, "ipam", "show", "--show-blocks").stdout)


@pytest.mark.parametrize("encap", ["vxlan", "ipip"])
def test_cross_subnet_tunnels_only_across_the_router(make_lab, encap):
    device = DEVICES[encap]
    lab = make_lab(topology=TWO_SUBNETS, mode="calico", encap=encap, cross_subnet=True)
    ips = {n: lab.add_pod(n, f"default/p-{n}").ip for n in ("node1", "node2", "node3")}
    node1 = routes(lab, "node1")
    to_node2 = next(r for r in node1 if r.get("gateway") == "192.168.50.12")
    assert to_node2["dev"] == "eth0"  # same subnet: no tunnel
    across = [r for r in node1 if r.get("dev") == device]
    assert len(across) == 1 and ipaddress.IPv4Address(ips["node3"]) in N(across[0]["dst"])
    for source in ips:
        for target, ip in ips.items():
            assert source == target or lab.pings(f"default/p-{source}", ip), (source, target)


def test_no_encapsulation_across_a_router_says_why(make_lab, cli):
    lab = make_lab(topology=TWO_SUBNETS, mode="calico")
    lab.add_pod("node1", "default/a")
    lab.add_pod("node3", "default/c")
    check = cli("lab", "check", "--name", lab.name)
    assert check.returncode == 1
    assert "is not on this node's subnet 192.168.50.0/24 and pool default-ipv4-ippool " \
           "does not encapsulate" in check.stdout
