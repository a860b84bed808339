"""Who NATs what: the receiver of pod <-> pod and node <-> pod traffic sees the sender's own
address; pod traffic leaving the cluster is masqueraded to the node's address. Measured by
real TCP connections whose listener reports the peer address it saw."""

from __future__ import annotations

import json

import pytest

NODE1, NODE2 = "192.168.50.11", "192.168.50.12"
GATEWAY1 = "10.244.1.1"  # cni0 on node1: the node's source address towards its pods
EXTERNAL = "192.168.50.254"
# Known gaps of the dataplane (NOTES: "issue 3 fills it from the subnet leases"); not strict,
# so whoever closes them sees XPASS and drops the marker.


@pytest.fixture(scope="module")
def nat_lab(make_module_lab):
    """Two nodes; pods a and b on node1, c on node2. Yields (lab, {pod ref: IP})."""
    lab = make_module_lab(2)
    pods = {"default/a": "node1", "default/b": "node1", "default/c": "node2"}
    return lab, {ref: lab.add_pod(node, ref).ip for ref, node in pods.items()}


def test_pod_to_pod_on_one_node_is_not_nated(nat_lab):
    lab, ips = nat_lab
    assert lab.tcp_peer("default/b", "default/a", ips["default/b"]) == ips["default/a"]
    assert lab.tcp_peer("default/a", "default/b", ips["default/a"]) == ips["default/b"]


def test_node_to_pod_is_not_nated(nat_lab):
    lab, ips = nat_lab
    # From the node's address on the bridge (what the kernel picks)...
    assert lab.tcp_peer("default/a", "node1", ips["default/a"]) == GATEWAY1
    # ...and from its underlay address.
    assert lab.tcp_peer("default/a", "node1", ips["default/a"], bind=NODE1) == NODE1


@pytest.mark.parametrize("address", [NODE1, GATEWAY1])
def test_pod_to_its_node_is_not_nated(nat_lab, address):
    lab, ips = nat_lab
    assert lab.tcp_peer("node1", "default/a", address) == ips["default/a"]


def test_pod_to_external_is_masqueraded_to_the_node_address(nat_lab):
    lab, _ = nat_lab
    assert lab.tcp_peer("external", "default/a", EXTERNAL) == NODE1
    assert lab.tcp_peer("external", "default/c", EXTERNAL) == NODE2


def test_node_to_external_keeps_the_node_address(nat_lab):
    lab, _ = nat_lab
    assert lab.tcp_peer("external", "node1", EXTERNAL) == NODE1


def test_pod_to_another_node_is_not_nated(nat_lab):
    lab, ips = nat_lab
    assert lab.tcp_peer("node2", "default/a", NODE2, timeout=1) == ips["default/a"]


def test_pod_to_pod_across_nodes_is_not_nated(nat_lab):
    lab, ips = nat_lab
    assert lab.tcp_peer("default/c", "default/a", ips["default/c"], timeout=1) \
        == ips["default/a"]


def _nft(lab, node: str) -> list[dict]:
    out = lab.run(node, "nft", "-j", "list", "table", "ip", "gingham").stdout
    return json.loads(out)["nftables"]


@pytest.mark.parametrize("node", ["node1", "node2"])
def test_masquerade_table_is_in_the_node(nat_lab, node):
    lab, _ = nat_lab
    objects = _nft(lab, node)
    sets = {o["set"]["name"]: o["set"] for o in objects if "set" in o}
    assert sets["cluster"]["elem"] == [{"prefix": {"addr": "10.244.0.0", "len": 16}}]
    # every node's address, learned from the subnet leases
    assert sorted(sets["nodes"]["elem"]) == [NODE1, NODE2]
    chain = next(o["chain"] for o in objects if "chain" in o)
    assert (chain["name"], chain["type"], chain["hook"]) == ("postrouting", "nat", "postrouting")
    verdicts = [next(k for e in o["rule"]["expr"] for k in e if k != "match")
                for o in objects if "rule" in o]
    # Cluster and node destinations are let through before anything is masqueraded.
    assert verdicts == ["return", "return", "masquerade"]

