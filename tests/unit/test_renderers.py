"""Pure renderers: masquerade table, subnet.env, conflist, and the lab's plan."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gingham.dataplane.masquerade import render_masquerade_table
from gingham.lab.plan import LabPlan, PlanError, check_lab_name, parse_pod_ref
from gingham.model.files import render_conflist, render_subnet_env

N = ipaddress.IPv4Network


def rules(cmds):
    return [c["add"]["rule"]["expr"] for c in cmds if "rule" in c.get("add", {})]


def test_masquerade_returns_before_masquerading():
    cmds = render_masquerade_table([N("10.244.0.0/16")], [ipaddress.IPv4Address("192.0.2.1")])
    first, second, last = rules(cmds)
    assert first[-1] == {"return": None} and first[1]["match"]["right"] == "@cluster"
    assert second[-1] == {"return": None} and second[1]["match"]["right"] == "@nodes"
    assert last[-1] == {"masquerade": None}
    # replaced atomically: the table is deleted and re-added in the same transaction
    assert [next(iter(c)) for c in cmds[:3]] == ["add", "delete", "add"]


def test_masquerade_disabled_leaves_no_nat_chain():
    cmds = render_masquerade_table([N("10.244.0.0/16")], [], enabled=False)
    # no chain at all (a nat chain alone turns conntrack on); an earlier table is deleted
    assert [next(iter(c)) for c in cmds] == ["add", "delete"]
    assert all("table" in next(iter(c.values())) for c in cmds)


def test_subnet_env_matches_flannel_keys():
    text = render_subnet_env(N("10.244.0.0/16"), ipaddress.IPv4Interface("10.244.3.1/24"),
                             1450, True)
    assert text.splitlines() == ["FLANNEL_NETWORK=10.244.0.0/16", "FLANNEL_SUBNET=10.244.3.1/24",
                                 "FLANNEL_MTU=1450", "FLANNEL_IPMASQ=true"]


def test_conflist_chains_portmap_and_bandwidth():
    conf = render_conflist("gingham", "cni0", 1500, Path("/run/x.sock"))
    assert [p["type"] for p in conf["plugins"]] == ["gingham", "portmap", "bandwidth"]
    assert conf["plugins"][0]["agentSocket"] == "/run/x.sock"
    assert conf["cniVersion"] == "1.0.0"


def test_plan_gives_node_k_subnet_k():
    plan = LabPlan.single_segment("lab", 3)
    assert [str(n.pod_subnet) for n in plan.nodes] == [
        "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    assert [str(n.address.ip) for n in plan.nodes] == [
        "192.168.50.11", "192.168.50.12", "192.168.50.13"]
    assert str(plan.external.address.ip) == "192.168.50.254"
    assert plan.node("node2").name == "node2"
    with pytest.raises(PlanError):
        plan.node("node9")


@pytest.mark.parametrize("name", ["", "Lab", "a-b", "1lab", "x" * 11])
def test_bad_lab_names(name):
    with pytest.raises(PlanError):
        check_lab_name(name)


@pytest.mark.parametrize("kwargs", [
    {"nodes": 0}, {"nodes": 300}, {"nodes": 2, "pod_cidr": N("10.0.0.0/25")},
    {"nodes": 1, "underlay": N("10.244.0.0/24")},
])
def test_bad_plans(kwargs):
    with pytest.raises(PlanError):
        LabPlan.single_segment("lab", **kwargs)


@pytest.mark.parametrize("ref", ["default", "a/b/c", "Default/a", "/a", "a/"])
def test_bad_pod_refs(ref):
    with pytest.raises(PlanError):
        parse_pod_ref(ref)
