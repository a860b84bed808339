"""`lab probe`'s pure part: option lists, the cells, the oracle's matrix, differences, and
the truth tables and JSON it prints."""

from __future__ import annotations

import pytest

from gingham.lab.probe_matrix import (
    Cell,
    cells,
    differences,
    expected,
    parse_ports,
    parse_protocols,
    report,
    tables,
)
from gingham.policy.evaluate import NamespaceView, PodView, Verdict
from gingham.policy.spec import parse_policy

pytestmark = pytest.mark.unit

XA = PodView("x", "a", "10.244.1.2", {"pod": "a"}, node="node1")
XB = PodView("x", "b", "10.244.2.2", {"pod": "b"}, node="node2")
YA = PodView("y", "a", "10.244.1.3", {"pod": "a"}, node="node1")
PODS = (XA, XB, YA)
REFS = [p.ref for p in PODS]


def deny_ingress(namespace: str, **selector: str):
    return parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": "deny", "namespace": namespace},
                         "spec": {"podSelector": {"matchLabels": selector}}})


def test_option_lists_parse_keep_order_and_drop_repeats():
    assert parse_ports("81, 80,81") == (81, 80)
    assert parse_protocols("UDP,tcp,udp") == ("udp", "tcp")


@pytest.mark.parametrize("text", ["", "0", "65536", "http", "80,", "-1"])
def test_bad_ports_are_refused(text):
    with pytest.raises(ValueError, match="is not a number 1-65535"):
        parse_ports(text)


def test_sctp_is_refused_as_the_prober_cannot_send_it():
    with pytest.raises(ValueError, match="'sctp' is not one of tcp, udp"):
        parse_protocols("tcp,sctp")


def test_cells_cover_every_pair_including_self_per_port_and_protocol():
    found = cells(REFS, [80, 81], ["tcp", "udp"])
    assert len(found) == len(set(found)) == 3 * 3 * 2 * 2
    assert Cell("x/a", "x/a", 81, "udp") in found
    assert found[0] == Cell("x/a", "x/a", 80, "tcp")


def test_without_policies_everything_is_expected_allowed():
    verdicts = expected(PODS, [80], ["tcp", "udp"])
    assert set(verdicts) == set(cells(REFS, [80], ["tcp", "udp"]))
    assert all(v.allowed for v in verdicts.values())


def test_a_deny_ingress_policy_blocks_into_its_pods_but_never_a_pod_to_itself():
    verdicts = expected(PODS, [80], ["tcp"], namespaces=[NamespaceView("x"), NamespaceView("y")],
                        policies=[deny_ingress("x", pod="b")])
    blocked = {(c.source, c.target) for c, v in verdicts.items() if not v.allowed}
    assert blocked == {("x/a", "x/b"), ("y/a", "x/b")}
    assert "isolated by x/deny" in verdicts[Cell("x/a", "x/b", 80, "tcp")].reasons[1]


def test_differences_go_both_ways_and_a_cell_never_probed_counts_as_blocked():
    allow, deny = Verdict(True, ("ok",)), Verdict(False, ("isolated",))
    expect = {Cell("x/a", "x/b", 80, "tcp"): allow, Cell("x/b", "x/a", 80, "tcp"): deny,
              Cell("x/a", "x/a", 80, "tcp"): allow, Cell("x/b", "x/b", 80, "tcp"): allow}
    got = {Cell("x/a", "x/b", 80, "tcp"): False, Cell("x/b", "x/a", 80, "tcp"): True,
           Cell("x/a", "x/a", 80, "tcp"): True}
    found = differences(expect, got)
    assert [str(d) for d in found] == [
        "x/a -> x/b 80/tcp: expected allowed, got blocked",
        "x/b -> x/a 80/tcp: expected blocked, got allowed",
        "x/b -> x/b 80/tcp: expected allowed, got blocked",
    ]
    assert found[1].to_json() == {"from": "x/b", "to": "x/a", "port": 80, "protocol": "tcp",
                                  "expected": False, "got": True, "reasons": ["isolated"]}


def test_tables_are_e2e_truth_tables_one_per_port_and_protocol():
    got = {c: c.target != "y/a" or c.protocol == "udp" for c in cells(REFS, [80], ["tcp", "udp"])}
    assert tables(REFS, [80], ["tcp", "udp"], got) == "\n".join([
        "80/tcp",
        "-    x/a  x/b  y/a",
        "x/a  .    .    X",
        "x/b  .    .    X",
        "y/a  .    .    X",
        "",
        "80/udp",
        "-    x/a  x/b  y/a",
        "x/a  .    .    .",
        "x/b  .    .    .",
        "y/a  .    .    .",
    ])


def test_report_nests_matrices_by_table_then_from_then_to():
    got = {c: c.source == c.target for c in cells(REFS, [80], ["tcp"])}
    out = report(REFS, [80], ["tcp"], got, expected(PODS, [80], ["tcp"]))
    assert out["ports"] == [80] and out["protocols"] == ["tcp"] and out["pods"] == REFS
    assert out["matrix"]["80/tcp"]["x/a"] == {"x/a": True, "x/b": False, "y/a": False}
    assert out["expected"]["80/tcp"]["x/b"] == {"x/a": True, "x/b": True, "y/a": True}
    assert len(out["differences"]) == 6
    assert report(REFS, [80], ["tcp"], got, None)["expected"] is None
