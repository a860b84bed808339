"""`gingham lab probe`: real TCP and UDP between the pods of a two-node Flannel lab. With no
policy everything gets through and matches the oracle; a pod whose eth0 is down shows as X
in its row and column and `--expect` reports those cells; a policy in the datastore changes
the expected matrix."""

from __future__ import annotations

import json

from gingham.lab import control
from gingham.policy.spec import parse_policy, to_document

PODS = {"x/a": "node1", "x/b": "node2", "y/a": "node1", "y/b": "node2"}


def probe(lab, *extra: str):
    return lab.gingham("probe", "--ports", "80", "--protocols", "tcp,udp", "--expect", *extra)


def blocked(report: dict) -> set[tuple[str, str, str]]:
    return {(a, b, table) for table, rows in report["matrix"].items()
            for a, row in rows.items() for b, ok in row.items() if not ok}


def test_probe_matrix_against_the_oracle(make_lab):
    lab = make_lab(2)
    for ref, node in PODS.items():
        lab.add_pod(node, ref, labels={"pod": ref[-1]})

    proc = probe(lab, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["pods"] == sorted(PODS) and report["ports"] == [80]
    assert set(report["matrix"]) == {"80/tcp", "80/udp"}
    assert not blocked(report) and report["differences"] == []
    assert report["expected"] == report["matrix"]

    # A pod cut off from its bridge: nothing gets in or out of it (itself aside).
    lab.run("x/b", "ip", "link", "set", "eth0", "down")
    proc = probe(lab, "--json")
    assert proc.returncode == 1 and "cells differ" in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    cut = {(a, b, t) for t in ("80/tcp", "80/udp") for a in PODS for b in PODS
           if a != b and "x/b" in (a, b)}
    assert blocked(report) - {("x/b", "x/b", t) for t in ("80/tcp", "80/udp")} == cut
    assert {(d["from"], d["to"], f"{d['port']}/{d['protocol']}")
            for d in report["differences"]} == blocked(report)
    assert all(d["expected"] and not d["got"] for d in report["differences"])

    text = probe(lab)
    assert text.returncode == 1
    rows = [line.split()[1:] for line in text.stdout.splitlines()
            if line.startswith("x/b ") and "->" not in line]
    assert len(rows) == 2  # one per table; its own column (index 1) aside, all X
    assert all(row[:1] + row[2:] == ["X"] * 3 for row in rows), text.stdout
    assert "x/a -> x/b 80/udp: expected allowed, got blocked" in text.stdout

    # The oracle reads the lab's policies (what the dataplane does with them is not
    # asked here): ingress to y/b denied, from all but itself.
    deny = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": "deny", "namespace": "y"},
                         "spec": {"podSelector": {"matchLabels": {"pod": "b"}}}})
    with control.lab_registry(lab.files.load()) as registry:
        registry.store.put(f"{registry.prefix}/networkpolicies/y/deny",
                           json.dumps(to_document(deny)).encode())
    report = json.loads(probe(lab, "--json").stdout)
    for table in ("80/tcp", "80/udp"):
        into_yb = {a: row["y/b"] for a, row in report["expected"][table].items()}
        assert into_yb == {"x/a": False, "x/b": False, "y/a": False, "y/b": True}
