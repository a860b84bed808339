"""The policy table a node gets (policy/compile.py) and the piecewise updates between two
renderings (dataplane/nft_diff.py): pure, checked against nft itself in the integration
tests."""

from __future__ import annotations

import json

import pytest

from gingham.dataplane.nft_diff import Rendering
from gingham.dataplane.nft_diff import plan_update as plan_renderings
from gingham.policy.compile import render_policy_table
from gingham.policy.evaluate import NamespaceView, PodView
from gingham.policy.spec import parse_policy
from gingham.workloads.records import NamedPort

pytestmark = pytest.mark.unit


def plan_update(old: list[dict], new: list[dict]) -> list[dict] | None:
    return plan_renderings(Rendering.of(old), Rendering.of(new))


def policy(name: str, spec: dict, namespace: str = "default"):
    return parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": namespace}, "spec": spec})


WEB = policy("access-web", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
    {"from": [{"podSelector": {"matchLabels": {"run": "client1"}}}],
     "ports": [{"protocol": "TCP", "port": 80}, {"port": "http"}]},
    {"from": [{"ipBlock": {"cidr": "fd00::/64"}}]}]})


def pods(client_label: str = "client1") -> list[PodView]:
    return [PodView("default", "web", "10.244.1.2", {"app": "web"},
                    (NamedPort("http", 8080, "TCP"),), "node1"),
            PodView("default", "c1", "10.244.2.3", {"run": client_label}, (), "node2"),
            PodView("test", "x", "10.244.2.4", {}, (NamedPort("http", 80, "TCP"),), "node2")]


def objects(commands: list[dict], kind: str) -> dict[str, dict]:
    return {c["add"][kind].get("name", c["add"][kind].get("chain")): c["add"][kind]
            for c in commands if kind in c.get("add", {})}


def rules(commands: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in commands:
        if "rule" in c.get("add", {}):
            out.setdefault(c["add"]["rule"]["chain"], []).append(
                json.dumps(c["add"]["rule"]["expr"]))
    return out


def test_no_isolated_pod_on_the_node_means_no_table():
    assert render_policy_table([WEB], pods(), [], {"default/c1", "test/x"}) == []
    assert render_policy_table([], pods(), [], {"default/web"}) == []


def test_an_isolated_pod_is_dispatched_to_its_chain_and_its_policies():
    commands = render_policy_table([WEB], pods(), [NamespaceView("test")], {"default/web"})
    assert commands[:3] == [{"add": {"table": {"family": "inet", "name": "gingham_policy"}}},
                            {"delete": {"table": {"family": "inet",
                                                  "name": "gingham_policy"}}},
                            {"add": {"table": {"family": "inet", "name": "gingham_policy"}}}]
    dispatch = [c["add"]["element"] for c in commands if "element" in c.get("add", {})
                and c["add"]["element"]["name"] == "ingress_pods"]
    [[ip, verdict]] = dispatch[0]["elem"]
    assert ip == "10.244.1.2"
    chain = verdict["jump"]["target"]
    own, jump, last = rules(commands)[chain]
    assert "10.244.1.2" in own and "accept" in own  # its own traffic to itself
    assert last == '[{"drop": null}]'
    policy_rules = rules(commands)[json.loads(jump)[0]["jump"]["target"]]
    # client1 on TCP 80, and on the named port (a set of address . protocol . port); the
    # IPv6 block allows no IPv4 connection, so it has no rule
    assert len(policy_rules) == 2 and '"proto-dst"' in policy_rules[0]
    sets = objects(commands, "set")
    named = next(s for s in sets.values() if s["type"] == ["ipv4_addr", "inet_proto",
                                                           "inet_service"])
    elements = next(c["add"]["element"]["elem"] for c in commands if "element" in c.get(
        "add", {}) and c["add"]["element"]["name"] == named["name"])
    # one name, a different number on each pod
    assert elements == [{"concat": ["10.244.1.2", "tcp", 8080]},
                        {"concat": ["10.244.2.4", "tcp", 80]}]
    assert not [c for c in commands if c.get("add", {}).get(
        "element", {}).get("name") == "egress_pods"]  # egress not isolated: no dispatch


def test_a_label_change_is_only_a_set_update():
    before = render_policy_table([WEB], pods("client1"), [], {"default/web"})
    after = render_policy_table([WEB], pods("client2"), [], {"default/web"})
    update = plan_update(before, after)
    assert update is not None and [next(iter(c)) for c in update] == ["delete"]
    assert update[0]["delete"]["element"]["elem"] == ["10.244.2.3"]
    assert plan_update(after, after) == []


def test_a_new_policy_adds_its_chain_and_a_gone_one_is_removed_last():
    deny = policy("deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
    one = render_policy_table([WEB], pods(), [], {"default/web"})
    two = render_policy_table([WEB, deny], pods(), [], {"default/web"})
    grow = plan_update(one, two)
    assert grow is not None
    verbs = [f"{next(iter(c))} {next(iter(next(iter(c.values()))))}" for c in grow]
    assert verbs.index("add chain") < verbs.index("add element")  # jumped-to chains first
    shrink = plan_update(two, one)
    assert shrink is not None
    verbs = [f"{next(iter(c))} {next(iter(next(iter(c.values()))))}" for c in shrink]
    assert verbs[-1] == "delete chain" and verbs.index("delete element") < verbs.index(
        "delete chain")


def test_a_port_of_sctp_never_opens_tcp_or_udp():
    sctp = policy("sctp", {"podSelector": {}, "ingress": [
        {"ports": [{"protocol": "SCTP", "port": 80}, {"protocol": "SCTP"}]}]})
    commands = render_policy_table([sctp], pods(), [], {"default/web"})
    chain = next(name for name in rules(commands) if name.startswith("pi_"))
    matched = [json.loads(rule) for rule in rules(commands)[chain]]
    protocols = [m["match"]["right"] for rule in matched for m in rule
                 if "match" in m and m["match"]["left"] == {"meta": {"key": "l4proto"}}]
    assert protocols == ["sctp", "sctp"]
