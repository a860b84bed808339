"""`gingham policy explain`: the verdict on one connection and the policies behind it, from
what an embedded datastore holds (the seeds' first example)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gingham.cli.main import cli
from gingham.store.sqlite import EmbeddedStore
from gingham.workloads.records import Pod
from gingham.workloads.store import WorkloadStore

pytestmark = pytest.mark.unit
PREFIX = "/gingham/network"
ACCESS_WEB = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: access-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {run: client1}}}]
    ports: [{protocol: TCP, port: 80}]
"""


@pytest.fixture
def store_args(tmp_path):
    path = tmp_path / "s.db"
    store = EmbeddedStore(path)
    workloads = WorkloadStore(store, PREFIX)
    for name, labels, ip in (("web", {"app": "web"}, "10.244.1.2"),
                             ("client1", {"run": "client1"}, "10.244.2.2"),
                             ("client2", {"run": "client2"}, "10.244.1.3")):
        workloads.declare_pod(Pod("default", name, labels, "node1"))
        workloads.attach("default", name, "node1", ip, f"c-{name}")
    store.close()
    (tmp_path / "p.yaml").write_text(ACCESS_WEB)
    args = ["--datastore", "embedded", "--store-path", str(path)]
    assert CliRunner().invoke(cli, ["apply", "-f", str(tmp_path / "p.yaml"), *args]
                              ).exit_code == 0
    return args


def explain(*args: str):
    return CliRunner().invoke(cli, ["policy", "explain", *args], catch_exceptions=False)


def test_explain_names_the_policy_that_decides(store_args):
    ok = explain("default/client1", "default/web", "80/TCP", *store_args)
    assert ok.exit_code == 0
    lines = ok.output.splitlines()
    assert lines[0] == "allowed: default/client1 -> default/web 80/TCP"
    assert any("access-web" in line for line in lines[1:])
    no = json.loads(explain("default/client2", "default/web", "80", "-o", "json",
                            *store_args).output)
    assert no["allowed"] is False and any("access-web" in r for r in no["reasons"])
    # an address as one end, and a port the policy does not open
    assert explain("10.244.2.2", "default/web", "81/tcp", *store_args).output.startswith(
        "denied: 10.244.2.2 -> default/web 81/TCP")


def test_explain_refuses_what_it_cannot_judge(store_args):
    missing = CliRunner().invoke(cli, ["policy", "explain", "default/ghost", "default/web",
                                       "80/TCP", *store_args])
    assert missing.exit_code == 1 and "pod default/ghost is not in the datastore" in \
        missing.output
    bad = CliRunner().invoke(cli, ["policy", "explain", "default/client1", "default/web",
                                   "80/ICMP", *store_args])
    assert bad.exit_code == 2 and "'80/ICMP' is not PORT/PROTO" in bad.output
