"""Routed underlays (examples/two-subnets.yaml: node1 and node2 on one segment, node3 behind
a router): host-gw fails across the router and says why; every overlay passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "examples" / "two-subnets.yaml"


def pods_on_every_node(lab) -> None:
    for node in ("node1", "node2", "node3"):
        lab.add_pod(node, f"default/{node}")


def check(cli, lab) -> tuple[int, dict]:
    result = cli("lab", "check", "--name", lab.name, "--json")
    return result.returncode, json.loads(result.stdout)


def test_the_underlay_is_routed(make_lab):
    lab = make_lab(topology=EXAMPLE)
    assert lab.pings("node1", "192.168.60.13"), "node1 reaches node3 through router1"
    route = json.loads(lab.run("node3", "ip", "-j", "route", "show", "default").stdout)[0]
    assert route["gateway"] == "192.168.60.1"
    ttl = lab.run("node1", "ping", "-c", "1", "192.168.60.13").stdout
    assert "ttl=63" in ttl, "one router hop"


def test_host_gw_fails_across_the_router_and_says_why(make_lab, cli):
    lab = make_lab(topology=EXAMPLE, backend="host-gw")
    pods_on_every_node(lab)
    code, report = check(cli, lab)
    assert code == 1
    failed = {(r["source"], r["target"]) for r in report["results"] if not r["ok"]}
    assert failed and all("node3" in a + b for a, b in failed), "only pairs through the router"
    assert any("next hop 192.168.60.13 is not on a directly connected subnet" in p
               for p in report["problems"]["node1"])
    assert any("next hop 192.168.50.11" in p for p in report["problems"]["node3"])


@pytest.mark.parametrize("options", [{}, {"DirectRouting": True}], ids=["vxlan", "direct"])
def test_vxlan_works_across_the_router(make_lab, cli, options):
    lab = make_lab(topology=EXAMPLE, backend="vxlan", backend_options=options)
    pods_on_every_node(lab)
    code, report = check(cli, lab)
    assert code == 0, [r for r in report["results"] if not r["ok"]]
    routes = json.loads(lab.run("node1", "ip", "-j", "route", "show", "proto", "71").stdout)
    devices = {r["dst"]: r["dev"] for r in routes}
    assert devices["10.244.3.0/24"] == "flannel.1", "across the router: the tunnel"
    assert devices["10.244.2.0/24"] == ("eth0" if options else "flannel.1")
