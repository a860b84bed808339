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



def test_without_ip_masq_pods_leave_with_their_own_address_and_nothing_is_tracked(make_lab):
    """`lab up --no-ip-masq` (flanneld without --ip-masq): no nat chain in any node, so
    conntrack tracks nothing there, and the external host sees the pod's own address."""
    lab = make_lab(2, via_cli=True, cli_args=("--no-ip-masq",))
    assert not lab.plan.ip_masq
    pod = lab.add_pod("node2", "default/out")
    far = lab.add_pod("node1", "default/far")
    # the external host routes the pod CIDR to node2 only for this test's reply path
    lab.run("external", "ip", "route", "add", "10.244.2.0/24", "via", NODE2)
    assert lab.tcp_peer("external", "default/out", EXTERNAL) == pod.ip
    assert lab.tcp_peer("default/far", "default/out", far.ip, timeout=1) == pod.ip
    for node in ("node1", "node2"):
        assert lab.run(node, "nft", "list", "table", "ip", "gingham", check=False).returncode != 0
        assert "FLANNEL_IPMASQ=false" in lab.run(
            node, "cat", str(lab.files.node_dir(node) / "run" / "subnet.env")).stdout
        assert _tracked(lab, node) == 0


def _tracked(lab, node: str) -> int:
    """Connections conntrack holds in the node's namespace (the sysctl is per namespace)."""
    return int(lab.run(node, "cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout)


def test_masquerading_nodes_track_pod_flows(nat_lab):
    """The other side of the coin: with ip-masq, conntrack holds the pod's flows."""
    lab, ips = nat_lab
    lab.tcp_peer("default/c", "default/a", ips["default/c"], timeout=1)
    assert _tracked(lab, "node1") > 0 and _tracked(lab, "node2") > 0
