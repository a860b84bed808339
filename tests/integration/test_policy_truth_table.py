"""NetworkPolicy cases in the spirit of Kubernetes' netpol e2e suite, in both cluster modes:
namespaces x, y, z with pods a, b, c spread over two nodes; after each change every
(from, to, port, protocol) cell is probed and must equal what the pure evaluator says
(`gingham lab probe --expect`), so the nft compiler is checked against an oracle written
apart from it."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from gingham.workloads.records import NamedPort

NAMESPACES, PODS = ("x", "y", "z"), ("a", "b", "c")


def policy(name: str, namespace: str, spec: str) -> str:
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: "
            f"{{name: {name}, namespace: {namespace}}}\nspec:\n{spec}")


def agrees(cli, lab) -> dict:
    """The probe's report once it matches the oracle (enforcement takes a moment to reach
    every node); the last report if it never does."""
    for _ in range(4):
        proc = cli("lab", "probe", "--name", lab.name, "--ports", "80,81", "--protocols",
                   "tcp,udp", "--expect", "--json", timeout=60)
        report = json.loads(proc.stdout)
        if proc.returncode == 0:
            return report
        time.sleep(0.5)
    return report


def check(cli, lab) -> dict:
    report = agrees(cli, lab)
    assert report["differences"] == [], report["differences"][:5]
    return report["matrix"]


@pytest.mark.parametrize("mode", ["flannel", "calico"])
def test_policies_match_the_oracle_cell_by_cell(make_lab, cli, tmp_path, mode):
    args = ("--mode", "calico") if mode == "calico" else ()
    lab = make_lab(2, via_cli=True, cli_args=args)
    ips = {}
    for i, ns in enumerate(NAMESPACES):
        for j, pod in enumerate(PODS):
            # the named port `serve` is 80 on a pods, 81 on the others
            port = NamedPort("serve", 80 if pod == "a" else 81, "TCP")
            ips[f"{ns}/{pod}"] = lab.add_pod(f"node{(i + j) % 2 + 1}", f"{ns}/{pod}",
                                             labels={"pod": pod}, ports=[port]).ip
    step = iter(range(100))

    def apply(text: str) -> None:
        path = tmp_path / f"p{next(step)}.yaml"
        path.write_text(text)
        done = cli("--lab", lab.name, "apply", "-f", str(path))
        assert done.returncode == 0, done.stderr

    def delete(name: str, namespace: str) -> None:
        assert cli("--lab", lab.name, "delete", "networkpolicy", name, "-n",
                   namespace).returncode == 0

    everyone = check(cli, lab)
    assert all(all(row.values()) for m in everyone.values() for row in m.values())

    # default deny ingress in x; default deny egress in y; then allow-all ingress in x
    apply(policy("deny-in", "x", "  podSelector: {}\n  policyTypes: [Ingress]\n"))
    matrix = check(cli, lab)
    assert not matrix["80/tcp"]["y/a"]["x/b"] and matrix["80/tcp"]["x/a"]["x/a"]
    apply(policy("deny-out", "y", "  podSelector: {}\n  policyTypes: [Egress]\n"))
    matrix = check(cli, lab)
    assert not matrix["81/udp"]["y/a"]["z/a"]
    apply(policy("allow-in", "x", "  podSelector: {}\n  ingress: [{}]\n"))
    check(cli, lab)
    delete("allow-in", "x")
    delete("deny-out", "y")

    # selectors: expressions, namespaceSelector AND podSelector in one peer, and OR
    apply(policy("expr", "x", """  podSelector:
    matchExpressions: [{key: pod, operator: In, values: [a, b]}]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}
    - podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
"""))
    matrix = check(cli, lab)
    assert matrix["80/tcp"]["y/a"]["x/a"] and not matrix["80/tcp"]["y/c"]["x/a"]
    assert not matrix["80/tcp"]["z/a"]["x/b"] and matrix["80/tcp"]["x/c"]["x/a"]

    # ports: a number, a range, and a named port meaning 80 on x/a and 81 on x/b
    apply(policy("ports", "x", """  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {}}]
    ports: [{port: 80, protocol: UDP}, {port: 80, endPort: 81, protocol: TCP}]
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]
    ports: [{port: serve}]
"""))
    delete("expr", "x")
    matrix = check(cli, lab)
    assert matrix["81/tcp"]["y/c"]["x/c"] and not matrix["81/udp"]["y/c"]["x/c"]
    delete("ports", "x")
    apply(policy("named", "x", """  podSelector: {}
  ingress:
  - ports: [{port: serve}]
"""))
    matrix = check(cli, lab)
    assert matrix["80/tcp"]["z/c"]["x/a"] and not matrix["81/tcp"]["z/c"]["x/a"]
    assert matrix["81/tcp"]["z/c"]["x/b"] and not matrix["80/tcp"]["z/c"]["x/b"]
    delete("named", "x")

    # ipBlock with except, for ingress and for egress
    cidr = ipaddress.ip_network(f"{ips['y/a']}/16", strict=False)
    apply(policy("block", "x", f"""  podSelector: {{}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{{ipBlock: {{cidr: {cidr}, except: [{ips['y/b']}/32]}}}}]
  egress:
  - to: [{{ipBlock: {{cidr: {ips['z/a']}/32}}}}]
"""))
    matrix = check(cli, lab)
    assert matrix["80/tcp"]["y/a"]["x/a"] and not matrix["80/tcp"]["y/b"]["x/a"]
    assert matrix["80/tcp"]["x/a"]["z/a"] and not matrix["80/tcp"]["x/a"]["z/b"]
    delete("block", "x")

    # updates to labels: a pod that leaves the selector is open again
    delete("deny-in", "x")
    apply(policy("only-a", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: []
"""))
    assert not check(cli, lab)["80/tcp"]["y/a"]["x/a"]
    assert cli("--lab", lab.name, "label", "pods", "a", "-n", "x", "pod=free").returncode == 0
    assert check(cli, lab)["80/tcp"]["y/a"]["x/a"]
    delete("only-a", "x")
    assert all(all(row.values()) for m in check(cli, lab).values() for row in m.values())
