"""Calico mode with BGP (issue 11, first part): BIRD 2 on every node of a node-to-node
mesh, the blocks announced and learned into the kernel as `proto bird`, BIRD restarted by
the agent when it dies."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest


def routes(lab, node: str) -> list[dict]:
    return json.loads(lab.run(node, "ip", "-j", "route", "show").stdout)


def eventually(check, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def bird_pid(lab, node: str) -> int:
    out = lab.run(node, "ss", "-ltnpH", "sport", "= :179").stdout
    return int(out.split("pid=")[1].split(",")[0])


@pytest.fixture(scope="module")
def mesh(make_module_lab):
    lab = make_module_lab(3, via_cli=True, cli_args=("--mode", "calico", "--bgp", "on"))
    ips = {n: lab.add_pod(n, f"default/p-{n}").ip for n in ("node1", "node2", "node3")}
    return lab, ips


def learned(lab, node: str) -> dict[str, str]:
    return {r["dst"]: r.get("gateway", r.get("type")) for r in routes(lab, node)
            if r.get("protocol") == "bird"}


def test_blocks_are_learned_by_bgp_in_the_seeds_shape(mesh):
    lab, ips = mesh
    assert eventually(lambda: len(learned(lab, "node1")) == 3)
    got = learned(lab, "node1")
    assert sorted(got.values()) == ["192.168.50.12", "192.168.50.13", "blackhole"]
    assert not [r for r in routes(lab, "node1") if r.get("protocol") == "80"]
    for source in ips:
        for target, ip in ips.items():
            assert source == target or lab.pings(f"default/p-{source}", ip), (source, target)
    assert lab.run("node1", "ss", "-ltnH", "sport", "= :179").stdout.strip()


def test_bird_that_dies_is_started_again_and_routes_stay(mesh):
    lab, ips = mesh
    before = bird_pid(lab, "node2")
    os.kill(before, signal.SIGKILL)
    # persist: node2's kernel keeps what BIRD had programmed meanwhile
    assert learned(lab, "node2")
    assert eventually(lambda: lab.run("node2", "ss", "-ltnpH", "sport", "= :179").stdout
                      and bird_pid(lab, "node2") != before)
    assert eventually(lambda: len(learned(lab, "node1")) == 3 and len(learned(lab, "node2")) == 3)
    assert lab.pings("default/p-node1", ips["node2"])
