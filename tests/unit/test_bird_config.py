"""Who a node peers with and what its BIRD 2 configuration says: the mesh, route reflectors
as the seeds set them up, BGPPeer resources; only pool routes announced."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from gingham.calico.bird_config import (
    BgpSetup,
    Peer,
    PeerConflict,
    plan_peers,
    render_bird_config,
)
from gingham.ipam.block_ipam import Pool
from gingham.subnet.lease import NodeInfo

pytestmark = pytest.mark.unit
A, N = ipaddress.IPv4Address, ipaddress.IPv4Network


def node(name: str, ip: str, **kw) -> NodeInfo:
    return NodeInfo(name, A(ip), **kw)


def pool(name: str, cidr: str, ipip: str = "Never", vxlan: str = "Never") -> Pool:
    return Pool(name, N(cidr), 26, {"cidr": cidr, "ipipMode": ipip, "vxlanMode": vxlan,
                                     "disabled": False})


POOL = pool("default-ipv4-ippool", "10.244.0.0/16")


NODES = {n.name: n for n in (node("node1", "192.168.50.11"), node("node2", "192.168.50.12"),
                             node("node3", "192.168.50.13"))}


def test_the_mesh_peers_every_other_node_and_the_greater_address_waits():
    peers = plan_peers(NODES["node2"], NODES, BgpSetup())
    assert peers == [Peer("Mesh", A("192.168.50.11"), 64512, passive=True),
                     Peer("Mesh", A("192.168.50.13"), 64512, passive=False)]
    assert peers[0].protocol == "Mesh_192_168_50_11"


def test_route_reflectors_as_the_seeds_set_them_up():
    rr = {"route-reflector": "true"}
    nodes = {**NODES,
             "node1": node("node1", "192.168.50.11", labels=rr, rr_cluster_id="244.0.0.1"),
             "node2": node("node2", "192.168.50.12", labels=rr, rr_cluster_id="244.0.0.1")}
    setup = BgpSetup(mesh=False, peers=[{"nodeSelector": "all()",
                                         "peerSelector": "route-reflector == 'true'"}])
    client = plan_peers(nodes["node3"], nodes, setup)
    assert [(p.kind, str(p.address), p.rr_client) for p in client] == [
        ("Node", "192.168.50.11", False), ("Node", "192.168.50.12", False)]
    reflector = plan_peers(nodes["node1"], nodes, setup)
    # node1 peers the other reflector as an equal (same cluster ID) and node3, whose
    # BGPPeer picks node1, as its client
    assert [(str(p.address), p.rr_client) for p in reflector] == [
        ("192.168.50.12", False), ("192.168.50.13", True)]
    text = render_bird_config(nodes["node1"], setup, reflector, [POOL], [], "tunl0")
    assert "neighbor 192.168.50.13 as 64512;\n  passive on;\n  rr client;\n" \
           "  rr cluster id 244.0.0.1;" not in text  # node1 < node3: node1 connects
    assert "neighbor 192.168.50.13 as 64512;\n  rr client;\n  rr cluster id 244.0.0.1;" in text


def test_bgp_peers_by_ip_node_and_selector():
    setup = BgpSetup(mesh=False, asn=64600, peers=[
        {"peerIP": "192.168.50.1", "asNumber": 65000},  # global: every node
        {"peerIP": "192.168.60.1", "asNumber": 65001, "node": "node3"},
        {"peerIP": "192.168.70.1", "asNumber": 65002, "nodeSelector": "rack == 'b'",
         "password": "s3cret", "keepaliveTime": "10s", "keepOriginalNextHop": True}])
    mine = plan_peers(NODES["node1"], NODES, setup)
    assert [(p.kind, str(p.address), p.asn) for p in mine] == [("Global", "192.168.50.1", 65000)]
    three = plan_peers(node("node3", "192.168.50.13", labels={"rack": "b"}), NODES, setup)
    assert [p.protocol for p in three] == ["Global_192_168_50_1", "Node_192_168_60_1",
                                           "Node_192_168_70_1"]
    assert three[2].password == "s3cret" and three[2].keepalive == 10
    text = render_bird_config(node("node3", "192.168.50.13"),
                              BgpSetup(mesh=False, port=1179), three, [POOL], [],
                              "tunl0")
    assert "local 192.168.50.13 port 1179 as 64512;" in text
    assert "neighbor 192.168.50.1 as 65000;" in text  # a router: its own port
    assert 'password "s3cret";\n  keepalive time 10;\n  ipv4 { next hop keep; };' in text


def test_the_config_announces_blocks_not_their_pods():
    me = node("node1", "192.168.50.11", asn=64513)
    text = render_bird_config(me, BgpSetup(), plan_peers(me, {**NODES, "node1": me},
                                                         BgpSetup()),
                              [POOL], [N("10.244.0.0/26"), N("10.244.0.64/26")], "tunl0")
    assert "router id 192.168.50.11;" in text
    assert "  route 10.244.0.0/26 blackhole;\n  route 10.244.0.64/26 blackhole;" in text
    assert text.index("if net = 10.244.0.0/26 then accept;") < text.index(
        "if net ~ 10.244.0.0/26 then reject;") < text.index("if net ~ 10.244.0.0/16 then accept;")
    assert "local 192.168.50.11 as 64513;" in text
    assert 'protocol bgp Mesh_192_168_50_12 from gingham_peer {\n  description ' \
           '"node-to-node mesh";\n  neighbor 192.168.50.12 as 64512;\n}' in text
    assert 'interface -"cali*"' in text and "learn;" in text and "graceful restart;" in text


def test_kernel_programming_follows_each_pools_encapsulation(tmp_path):
    """As confd's calico_kernel_programming: VXLAN pools are the agent's, an IPIP pool's
    learned routes go through the IPIP device (across subnets only, for CrossSubnet), and
    a route through a tunnel is never announced."""
    me = node("node1", "192.168.50.11", ipv4_address="192.168.50.11/24")
    pools = [pool("plain", "10.1.0.0/16"), pool("ipip", "10.2.0.0/16", ipip="Always"),
             pool("cross", "10.3.0.0/16", ipip="CrossSubnet"),
             pool("vx", "10.4.0.0/16", vxlan="Always")]
    text = render_bird_config(me, BgpSetup(), [], pools, [N("10.4.0.0/26")], "calico.ipip")
    kernel = text[text.index("filter gingham_kernel"):text.index("filter gingham_export")]
    tunnel = '{ onlink = true; ifname = "calico.ipip"; gw = bgp_next_hop; }'
    assert "10.1.0.0/16" not in kernel  # plain: accepted as learned
    assert f"if net ~ 10.2.0.0/16 then {{  # ipip: IPIP\n    if source = RTS_BGP then {tunnel}" \
        in kernel
    assert ("if source = RTS_BGP && !(bgp_next_hop ~ 192.168.50.0/24) then " + tunnel) in kernel
    assert "if net ~ 10.4.0.0/16 then reject;" in kernel
    export = text[text.index("filter gingham_export"):]
    assert 'ifname = "vxlan.calico" || ifname = "tunl0") then reject;' in export
    # every enabled pool is announced, the VXLAN one's block too (as Calico does)
    assert all(f"if net ~ {p.cidr} then accept;" in export for p in pools)
    assert "if net = 10.4.0.0/26 then accept;" in export
    assert "log stderr { info, remote, warning, error, auth, fatal, bug };" in text
    debug = render_bird_config(me, BgpSetup(log_severity="Debug"), [], pools, [], "tunl0")
    assert "log stderr { debug, trace, info," in debug and "debug protocols all;" in debug
    if shutil.which("bird"):  # BIRD parses it
        conf = tmp_path / "bird.conf"
        conf.write_text(text)
        check = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_two_as_numbers_for_one_peer_are_a_conflict():
    setup = BgpSetup(peers=[{"peerIP": "192.168.50.1", "asNumber": 65000},
                            {"peerIP": "192.168.50.1", "asNumber": 65001, "node": "node1"}])
    with pytest.raises(PeerConflict, match=r"peer 192\.168\.50\.1 is AS 65000 for one BGPPeer "
                                           "and AS 65001 for a BGPPeer"):
        plan_peers(NODES["node1"], NODES, setup)
    assert len(plan_peers(NODES["node2"], NODES, setup)) == 3  # node2 meets one of them
    mesh = BgpSetup(peers=[{"peerIP": "192.168.50.12", "asNumber": 65009}])
    with pytest.raises(PeerConflict, match="AS 64512 for one mesh node"):
        plan_peers(NODES["node1"], NODES, mesh)
