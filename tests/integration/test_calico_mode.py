"""A Calico-mode lab built as a user would (`gingham lab up --mode calico`): routed cali*
pods, block IPAM, routes from block affinities, natOutgoing, and a pool changed by
`gingham apply` converging on every node."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from gingham.dataplane.podlink import routed_veth_name

N = ipaddress.IPv4Network


@pytest.fixture(scope="module")
def calico(make_module_lab):
    lab = make_module_lab(2, via_cli=True, cli_args=("--mode", "calico"))
    ips = {ref: lab.add_pod(node, ref).ip
           for node, ref in (("node1", "default/a"), ("node2", "default/b"),
                             ("node1", "web/c"))}
    return lab, ips


def routes(lab, node: str) -> list[dict]:
    return json.loads(lab.run(node, "ip", "-j", "route", "show").stdout)


def eventually(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


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
