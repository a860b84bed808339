"""Changing a running cluster's backend: every node converges, and nothing of the old
backend (device, route, neighbour, FDB entry) is left behind — the clean-up the seeds do
by hand after a Flannel switch, done by the agents."""

from __future__ import annotations

import json
import time

import pytest

from gingham.lab import cluster, control, procs

NODES = ("node1", "node2", "node3")


def set_backend(lab, cli, tmp_path, backend: dict) -> None:
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps({"Network": "10.244.0.0/16", "Backend": backend}))
    result = cli("--lab", lab.name, "config", "set", "-f", str(path))
    assert result.returncode == 0, result.stderr


def dataplane(lab, node: str) -> dict:
    links = json.loads(lab.run(node, "ip", "-j", "-d", "link", "show").stdout)
    routes = json.loads(lab.run(node, "ip", "-j", "route", "show", "proto", "71").stdout)
    return {
        "vteps": sorted(link["ifname"] for link in links
                        if link.get("linkinfo", {}).get("info_kind") == "vxlan"),
        "routes": {r["dst"]: r["dev"] for r in routes},
    }


def converged(lab, want_dev: str) -> bool:
    """Every node routes to the two others, through `want_dev`, with no stray VTEP."""
    for node in NODES:
        state = dataplane(lab, node)
        vteps = ["flannel.1"] if want_dev == "flannel.1" else []
        if state["vteps"] != vteps or len(state["routes"]) != 2 or \
                set(state["routes"].values()) != {want_dev}:
            return False
    return True


def wait_converged(lab, want_dev: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not converged(lab, want_dev):
        assert time.monotonic() < deadline, {n: dataplane(lab, n) for n in NODES}
        time.sleep(0.1)


def lease_types(lab) -> set[str]:
    with control.lab_registry(lab.files.load()) as registry:
        return {x.attrs.backend_type for x in registry.leases().leases}


@pytest.fixture
def switching_lab(make_lab):
    lab = make_lab(3, backend="vxlan")
    for k in (1, 2, 3):
        lab.add_pod(f"node{k}", f"default/s{k}")
    return lab


def test_vxlan_to_host_gw_and_back(switching_lab, cli, tmp_path):
    lab = switching_lab
    wait_converged(lab, "flannel.1")
    set_backend(lab, cli, tmp_path, {"Type": "host-gw"})
    wait_converged(lab, "eth0")
    assert lease_types(lab) == {"host-gw"}
    for node in NODES:  # the VTEP is gone, and its neighbours and FDB entries with it
        assert lab.run(node, "ip", "link", "show", "flannel.1", check=False).returncode != 0
    assert cli("lab", "check", "--name", lab.name).returncode == 0
    set_backend(lab, cli, tmp_path, {"Type": "vxlan"})
    wait_converged(lab, "flannel.1")
    assert lease_types(lab) == {"vxlan"}
    check = cli("lab", "check", "--name", lab.name)
    assert check.returncode == 0, check.stdout


def test_a_switch_made_while_an_agent_is_down_is_cleaned_up_at_its_start(switching_lab, cli,
                                                                        tmp_path):
    lab = switching_lab
    wait_converged(lab, "flannel.1")
    with lab.files.locked():
        record = lab.files.load()
        procs.stop_pids([record.supervisors["node3"]])
        set_backend(lab, cli, tmp_path, {"Type": "host-gw"})
        record.supervisors["node3"] = cluster.start_agent(lab.files, record, lab.plan.node("node3"))
        lab.files.save(record)
    wait_converged(lab, "eth0")


def test_a_config_no_agent_can_run_keeps_the_old_backend(switching_lab):
    lab = switching_lab
    wait_converged(lab, "flannel.1")
    with control.lab_registry(lab.files.load()) as registry:
        # straight into the store, past `config set`'s validation
        registry.store.put("/gingham/network/config", json.dumps(
            {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": -5}}).encode())
    deadline = time.monotonic() + 6
    while not any("cannot switch" in p
                  for p in cluster.node_status(lab.files, "node1")["problems"]):
        assert time.monotonic() < deadline, cluster.node_status(lab.files, "node1")
        time.sleep(0.1)
    time.sleep(2.5)  # another config poll: the refusal stands while the config is stored
    assert any("cannot switch" in p for p in cluster.node_status(lab.files, "node1")["problems"])
    assert converged(lab, "flannel.1")
    assert lab.pings("default/s1", lab.files.load().pods["default/s2"].ip)


def test_an_unknown_option_stored_past_config_set_is_refused_by_the_agent(make_lab):
    lab = make_lab(1, backend="host-gw")
    with control.lab_registry(lab.files.load()) as registry:
        registry.store.put("/gingham/network/config", json.dumps(
            {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw", "Foo": 1}}).encode())
    wait_problem(lab, "node1", "cannot switch to backend host-gw, keeping host-gw: unknown "
                               "host-gw option(s): Foo (known: none)")


def start_agent_without_tun(lab, node: str) -> int:
    """(Re)start the node's agent in a mount namespace of its own where /dev/net is an
    empty tmpfs: a node whose kernel cannot make TUN devices. The mount namespace ends
    with the agent."""
    with lab.files.locked():
        record = lab.files.load()
        plan_node = lab.plan.node(node)
        argv = cluster.agent_argv(lab.files, record, plan_node)
        pid = cluster.start_agent(lab.files, record, plan_node, [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs none /dev/net && exec "$@"', "sh", *argv])
        record.supervisors[node] = pid
        lab.files.save(record)
    cluster.wait_for_agent(lab.files, node, pid)
    return pid


def wait_problem(lab, node: str, needle: str, timeout: float = 8) -> None:
    deadline = time.monotonic() + timeout
    while not any(needle in p for p in (cluster.node_status(lab.files, node) or {})
                  .get("problems", [])):
        assert time.monotonic() < deadline, cluster.node_status(lab.files, node)
        time.sleep(0.1)


def test_a_node_without_tun_refuses_udp_clearly_and_its_pods_keep_working(make_lab, cli,
                                                                          tmp_path):
    lab = make_lab(2, backend="host-gw")
    a, b = lab.add_pod("node1", "default/a"), lab.add_pod("node1", "default/b")
    with lab.files.locked():
        procs.stop_pids([lab.files.load().supervisors["node1"]])
    start_agent_without_tun(lab, "node1")
    set_backend(lab, cli, tmp_path, {"Type": "udp"})
    # The switch is refused before the working backend is touched: node1 stays host-gw
    # (node2, now udp, is a peer it cannot route to, as its status also says).
    wait_problem(lab, "node1", "no TUN device (/dev/net/tun")
    with control.lab_registry(lab.files.load()) as registry:
        assert {x.attrs.node_name: x.attrs.backend_type
                for x in registry.leases().leases} == {"node1": "host-gw", "node2": "udp"}
    assert "flannel0" not in lab.run("node1", "ip", "link", "show").stdout
    assert lab.pings("default/a", b.ip) and lab.pings("default/b", a.ip)
    assert lab.pings("default/a", "192.168.50.254")  # out through the node, as before
    # Started on that config, the agent says why it cannot join, and tears nothing down.
    with lab.files.locked():
        procs.stop_pids([lab.files.load().supervisors["node1"]])
    log_at = lab.files.agent_log("node1").stat().st_size
    start_agent_without_tun(lab, "node1")
    deadline = time.monotonic() + 8
    while "no TUN device" not in (cluster.node_status(lab.files, "node1") or {}).get(
            "datastore", ""):
        assert time.monotonic() < deadline, cluster.node_status(lab.files, "node1")
        time.sleep(0.1)
    assert "no TUN device" in lab.files.agent_log("node1").read_text()[log_at:]
    assert lab.pings("default/a", b.ip) and lab.pings("default/a", "192.168.50.254")
