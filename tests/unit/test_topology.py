"""Topology files: parsing, addressing, and the routes each host needs (pure)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from gingham.lab.topology import TopologyError, parse_topology, routes_for

EXAMPLE = Path(__file__).parents[2] / "examples" / "two-subnets.yaml"
A, N = ipaddress.IPv4Address, ipaddress.IPv4Network


def two_subnets():
    return parse_topology(yaml.safe_load(EXAMPLE.read_text()))


def test_the_example_places_hosts_like_the_seeds():
    topo = two_subnets()
    assert [(n.name, n.segment, str(n.address)) for n in topo.nodes] == [
        ("node1", "left", "192.168.50.11/24"), ("node2", "left", "192.168.50.12/24"),
        ("node3", "right", "192.168.60.13/24")]
    assert str(topo.external.address) == "192.168.50.254/24"
    assert [str(a) for _, a in topo.routers[0].ports] == ["192.168.50.1/24", "192.168.60.1/24"]


def test_routes_across_the_router():
    topo = two_subnets()
    node1 = routes_for(topo, "node1")
    assert node1.routes == ((N("192.168.60.0/24"), A("192.168.50.1")),)
    assert node1.default == A("192.168.50.254")
    node3 = routes_for(topo, "node3")
    assert node3.routes == ((N("192.168.50.0/24"), A("192.168.60.1")),)
    assert node3.default == A("192.168.60.1"), "the way out is through the router"
    router = routes_for(topo, "router1")
    assert router.routes == () and router.default == A("192.168.50.254")
    external = routes_for(topo, "external")
    assert external.routes == ((N("192.168.60.0/24"), A("192.168.50.1")),)
    assert external.default is None


def test_routes_along_a_chain_take_the_first_hop():
    topo = parse_topology({
        "segments": [{"name": n, "cidr": f"10.{i}.0.0/24"} for i, n in enumerate("abc")],
        "routers": [{"name": "r1", "segments": ["a", "b"]},
                    {"name": "r2", "segments": ["b", "c"]}],
        "nodes": [{"name": "node1", "segment": "a"}, {"name": "node2", "segment": "c"}],
        "external": {"segment": "a"},
    })
    far = routes_for(topo, "node2")
    assert far.routes == ((N("10.0.0.0/24"), A("10.2.0.1")), (N("10.1.0.0/24"), A("10.2.0.1")))
    assert far.default == A("10.2.0.1")
    near = routes_for(topo, "node1")
    assert dict(near.routes) == {N("10.1.0.0/24"): A("10.0.0.1"), N("10.2.0.0/24"): A("10.0.0.1")}


@pytest.mark.parametrize(("change", "says"), [
    ({"segments": []}, "at least one segment"),
    ({"nodes": []}, "at least one node"),
    ({"external": {"segment": "nowhere"}}, "segment 'nowhere'"),
    ({"routers": [{"name": "r", "segments": ["left"]}]}, "two or more"),
    ({"segments": [{"name": "left", "cidr": "192.168.50.0/24"},
                   {"name": "right", "cidr": "192.168.50.128/25"}]}, "clash"),
    ({"nodes": [{"name": "node1", "segment": "left"}, {"name": "node1", "segment": "right"}]},
     "used twice"),
    ({"nodes": [{"name": "Node-1", "segment": "left"}]}, "lowercase"),
    ({"routers": [{"name": "left", "segments": ["left", "right"]}]}, "used twice"),
    ({"extra": 1}, "unknown topology key"),
])
def test_bad_topologies_say_why(change, says):
    data = {**yaml.safe_load(EXAMPLE.read_text()), **change}
    with pytest.raises(TopologyError, match=says):
        parse_topology(data)


def chain(external: str, routers: list[list[str]]) -> dict:
    """Segments a, b, c, d (10.0-3.0.0/24), a node on each, routers joining `routers`."""
    return {
        "segments": [{"name": n, "cidr": f"10.{i}.0.0/24"} for i, n in enumerate("abcd")],
        "routers": [{"name": f"r{i}", "segments": joined} for i, joined in enumerate(routers)],
        "nodes": [{"name": f"node{i}", "segment": n} for i, n in enumerate("abcd", start=1)],
        "external": {"segment": external},
    }


@pytest.mark.parametrize(("external", "routers", "cut_off"), [
    ("a", [], "b, c, d"),
    ("a", [["a", "b"], ["c", "d"]], "c, d"),
    ("c", [["a", "b"], ["c", "d"]], "a, b"),
    ("a", [["a", "b", "c"]], "d"),
])
def test_segments_cut_off_from_the_external_host_are_named(external, routers, cut_off):
    with pytest.raises(TopologyError) as err:
        parse_topology(chain(external, routers))
    assert str(err.value) == (f"segment(s) {cut_off} cannot be reached through routers from "
                              f"segment {external}, where the external host is: join them "
                              "with a router")


def test_segments_joined_by_any_path_of_routers_are_accepted():
    topo = parse_topology(chain("d", [["c", "d"], ["a", "b"], ["b", "c"]]))
    assert all(routes_for(topo, n.name).default is not None for n in topo.nodes)


def test_a_router_may_speak_bgp_to_the_nodes_it_names():
    from gingham.lab.plan import LabPlan
    from gingham.lab.tor import peers_of, render_frr_config

    data = yaml.safe_load((Path(__file__).parents[2] / "examples" / "tor-bgp.yaml")
                           .read_text())
    topology = parse_topology(data)
    (router,) = topology.routers
    assert (router.bgp_asn, router.bgp_peers) == (65000, ())
    plan = LabPlan.from_topology("t", topology)
    assert peers_of(plan, "node3") == [("192.168.60.1", 65000)]
    conf = render_frr_config(plan, router)
    assert "router bgp 65000" in conf and " neighbor 192.168.60.13 remote-as 64512" in conf
    for bad, says in (({"asn": 0}, "AS number"), ({"asn": 65000, "peers": ["node9"]},
                                                 "bgp peer 'node9'"),
                      ({"asn": 65000, "color": 1}, "bgp takes asn and peers")):
        data["routers"][0]["bgp"] = bad
        with pytest.raises(TopologyError, match=says):
            parse_topology(data)
