"""What a Calico-mode node routes from the datastore alone: other nodes' blocks via them,
its own as blackholes, borrowed addresses as /32s; encapsulation and routers reported."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from gingham.calico.kinds import decode_mode, encode_mode
from gingham.calico.route_plan import plan_routes
from gingham.dataplane.masquerade import render_masquerade_table
from gingham.dataplane.routes import RouteIntent
from gingham.dataplane.uplink import Uplink
from gingham.dataplane.vxlan import FdbIntent, NeighIntent
from gingham.ipam.block_ipam import Pool
from gingham.ipam.blocks import Block
from gingham.subnet.lease import NodeInfo

pytestmark = pytest.mark.unit
N, A = ipaddress.IPv4Network, ipaddress.IPv4Address
UPLINK = Uplink("eth0", 2, ipaddress.IPv4Interface("192.168.50.11/24"), 1500)
NODES = {name: NodeInfo(name, A(ip)) for name, ip in (
    ("node1", "192.168.50.11"), ("node2", "192.168.50.12"), ("far", "192.168.60.13"))}
WITH_VTEPS = {name: replace(node, vxlan_address=f"10.244.{i}.9", vxlan_mac=f"02:00:00:00:00:0{i}")
              for i, (name, node) in enumerate(NODES.items())}


def pool(ipip: str = "Never", vxlan: str = "Never") -> Pool:
    spec = {"cidr": "10.244.0.0/16", "blockSize": 26, "ipipMode": ipip, "vxlanMode": vxlan,
            "natOutgoing": True, "disabled": False, "nodeSelector": "all()"}
    return Pool("default", N("10.244.0.0/16"), 26, spec)


def block(cidr: str, node: str | None, *holders: str) -> Block:
    b = Block.empty(N(cidr), node)
    for i, holder in enumerate(holders):
        b.assign({"handle": f"h{i}", "namespace": "default", "pod": f"p{i}", "node": holder})
    return b


def test_blocks_are_routed_to_their_nodes_and_own_blocks_blackholed():
    blocks = {b.cidr: b for b in (block("10.244.0.0/26", "node1", "node1"),
                                  block("10.244.0.64/26", "node2", "node2", "node1"),
                                  block("10.244.0.128/26", None, "node2"))}
    plan = plan_routes("node1", blocks, NODES, [pool()], UPLINK)
    assert plan.routes == {
        RouteIntent(N("10.244.0.0/26"), None, 0, blackhole=True),
        RouteIntent(N("10.244.0.64/26"), A("192.168.50.12"), 2),
        # a block without affinity: only its holders' addresses
        RouteIntent(N("10.244.0.128/32"), A("192.168.50.12"), 2),
    }  # 10.244.0.65 is node1's own pod in node2's block: its /32 dev cali is the CNI's
    assert plan.problems == []
    # node2 sees node1's pod in its block as a borrowed /32 via node1
    other = plan_routes("node2", blocks, NODES, [pool()], UPLINK)
    assert RouteIntent(N("10.244.0.65/32"), A("192.168.50.11"), 2) in other.routes


def test_encapsulation_and_routers_are_reported_not_programmed():
    blocks = {b.cidr: b for b in (block("10.244.1.0/26", "far"),
                                  block("10.244.2.0/26", "node2"))}
    plan = plan_routes("node1", blocks, NODES, [pool()], UPLINK)
    assert plan.routes == {RouteIntent(N("10.244.2.0/26"), A("192.168.50.12"), 2)}
    assert plan.problems == ["10.244.1.0/26: node far (192.168.60.13) is not on this node's "
                             "subnet 192.168.50.0/24 and pool default does not encapsulate "
                             "(needs BGP, or vxlanMode/ipipMode CrossSubnet)"]
    # CrossSubnet: plain routes on the segment, VXLAN only across the router
    crossing = plan_routes("node1", blocks, WITH_VTEPS, [pool(vxlan="CrossSubnet")], UPLINK,
                           vtep=7)
    assert crossing.routes == plan.routes | {
        RouteIntent(N("10.244.1.0/26"), A("10.244.2.9"), 7, onlink=True)}
    assert crossing.neighbours == {NeighIntent(A("10.244.2.9"), "02:00:00:00:00:02")}
    assert crossing.fdb == {FdbIntent("02:00:00:00:00:02", A("192.168.60.13"))}
    assert crossing.problems == []
    always = plan_routes("node1", blocks, WITH_VTEPS, [pool(vxlan="Always")], UPLINK, vtep=7)
    assert {r.gateway for r in always.routes} == {A("10.244.1.9"), A("10.244.2.9")}
    # no device yet, or a node that has not published its tunnel: said, not half-done
    assert "no VXLAN tunnel to node far yet" in plan_routes(
        "node1", blocks, WITH_VTEPS, [pool(vxlan="Always")], UPLINK).problems[0]
    ipip = plan_routes("node1", blocks, NODES, [pool(ipip="Always")], UPLINK)
    assert ipip.routes == set() and len(ipip.problems) == 2


def test_with_bgp_bird_routes_all_but_vxlan_pools():
    blocks = {b.cidr: b for b in (block("10.244.0.0/26", "node1"),
                                  block("10.244.1.0/26", "far"),
                                  block("10.244.2.0/26", "node2"))}
    for plain in (pool(), pool(ipip="Always"), pool(ipip="CrossSubnet")):
        plan = plan_routes("node1", blocks, NODES, [plain], UPLINK, ipip=5, bgp=True)
        assert plan.routes == set() and plan.problems == []  # blackhole included: BIRD's
    # the userspace IPIP device is still told where each block goes
    assert plan_routes("node1", blocks, NODES, [pool(ipip="Always")], UPLINK, ipip=5,
                       bgp=True).ipip_peers == {N("10.244.1.0/26"): A("192.168.60.13"),
                                                N("10.244.2.0/26"): A("192.168.50.12")}
    # VXLAN stays the agent's, as felix's, its blackhole and same-subnet routes included
    vxlan = plan_routes("node1", blocks, WITH_VTEPS, [pool(vxlan="CrossSubnet")], UPLINK,
                        vtep=7, bgp=True)
    assert vxlan.routes == {RouteIntent(N("10.244.0.0/26"), None, 0, blackhole=True),
                            RouteIntent(N("10.244.1.0/26"), A("10.244.2.9"), 7, onlink=True),
                            RouteIntent(N("10.244.2.0/26"), A("192.168.50.12"), 2)}


def test_a_node_without_a_record_is_reported():
    plan = plan_routes("node1", {N("10.244.3.0/26"): block("10.244.3.0/26", "ghost")},
                       NODES, [pool()], UPLINK)
    assert plan.routes == set() and "node ghost has no node record" in plan.problems[0]


def test_cluster_mode_is_flannel_unless_stored():
    assert decode_mode(None) == "flannel"
    assert decode_mode(encode_mode("calico")) == "calico"
    with pytest.raises(ValueError, match="not one of flannel, calico"):
        decode_mode(b'{"mode": "cilium"}')


def test_nat_outgoing_masquerades_from_its_pools_only():
    table = render_masquerade_table([N("10.244.0.0/16"), N("10.96.0.0/16")],
                                    [A("192.168.50.11")], sources=[N("10.244.0.0/16")])
    sets = {c["add"]["set"]["name"]: c for c in table if "set" in c.get("add", {})}
    assert set(sets) == {"cluster", "natoutgoing", "nodes"}
    rules = [c["add"]["rule"]["expr"] for c in table if "rule" in c.get("add", {})]
    assert all(r[0]["match"]["right"] == "@natoutgoing" for r in rules)
    # Flannel's table keeps its shape: the cluster CIDR is the source
    flannel = render_masquerade_table([N("10.244.0.0/16")], [])
    assert not any("natoutgoing" in str(c) for c in flannel)


def test_an_agent_with_a_cluster_cidr_makes_the_default_pool_once(tmp_path):
    from gingham.agent.config import AgentConfig
    from gingham.calico.agent import CalicoAgent
    from gingham.resources.kinds import KINDS
    from gingham.resources.store import ResourceStore
    from gingham.store.factory import StoreOptions
    from gingham.store.sqlite import EmbeddedStore

    config = AgentConfig("node1", store=StoreOptions("embedded", tmp_path / "s.db"),
                         cluster_cidr=N("10.250.0.0/16"), mode="calico",
                         run_dir=tmp_path / "run")
    store = EmbeddedStore(tmp_path / "s.db")
    try:
        agent = CalicoAgent(config)
        agent._default_pool(store)
        agent._default_pool(store)  # there is one now: nothing more
        pools, _ = ResourceStore(store, config.prefix).list(KINDS["IPPool"])
        assert [(p.resource.name, p.resource.spec["cidr"], p.resource.spec["natOutgoing"])
                for p in pools] == [("default-ipv4-ippool", "10.250.0.0/16", True)]
    finally:
        store.close()
