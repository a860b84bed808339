"""A Flannel-style cluster in the lab: subnet leases in a real datastore, host-gw routes on
every node kept true as nodes come and go, restarts that change nothing that is right."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import time

import pytest
import yaml

from gingham.lab import cluster, control, procs

GINGHAM_PROTO = "71"


def gingham_routes(lab, node: str) -> dict[str, str]:
    """dst -> gateway of the node's Gingham-owned routes."""
    out = lab.run(node, "ip", "-j", "route", "show", "proto", GINGHAM_PROTO).stdout
    return {r["dst"]: r.get("gateway") for r in json.loads(out or "[]")}


def wait_until(condition, timeout: float, step: float = 0.02) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


def leases(lab) -> dict[str, str]:
    """subnet -> node name, read from the datastore."""
    with control.lab_registry(lab.files.load()) as registry:
        return {str(x.subnet): x.attrs.node_name for x in registry.leases().leases}


@pytest.fixture(scope="module", params=["embedded", "etcd"])
def three_nodes(request, make_module_lab):
    lab = make_module_lab(3, datastore=request.param)
    pods = {f"default/p{k}": lab.add_pod(f"node{k}", f"default/p{k}").ip for k in (1, 2, 3)}
    return lab, pods


def test_every_pod_reaches_every_pod_and_node_across_nodes(three_nodes):
    lab, _ = three_nodes
    check = lab.gingham("check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    results = json.loads(check.stdout)["results"]
    assert {r["kind"] for r in results} == {"pod-pod", "node-pod", "pod-external",
                                            "pod-pod-1MB"}
    # 1 MB moved between every two pods on different nodes (here: all six ordered pairs)
    assert len(results) == 6 + 9 + 3 + 6 and all(r["ok"] for r in results)


def test_each_node_leases_one_subnet_and_routes_to_the_others(three_nodes):
    lab, pods = three_nodes
    held = leases(lab)
    assert sorted(held.values()) == ["node1", "node2", "node3"]
    for k in (1, 2, 3):
        own = next(s for s, n in held.items() if n == f"node{k}")
        assert ipaddress.IPv4Address(pods[f"default/p{k}"]) in ipaddress.IPv4Network(own)
        expected = {s: f"192.168.50.{10 + int(n[-1])}" for s, n in held.items() if s != own}
        assert gingham_routes(lab, f"node{k}") == expected
        env = (lab.files.node_dir(f"node{k}") / "run" / "subnet.env").read_text()
        gateway = ipaddress.IPv4Network(own).network_address + 1
        assert f"FLANNEL_SUBNET={gateway}/24" in env and "FLANNEL_NETWORK=10.244.0.0/16" in env


def test_receiver_sees_the_sender_pod_address_across_nodes(three_nodes):
    lab, pods = three_nodes
    assert lab.tcp_peer("default/p3", "default/p1", pods["default/p3"]) == pods["default/p1"]


def test_get_and_config_show_the_datastore(three_nodes, cli):
    lab, _ = three_nodes
    nodes = json.loads(cli("--lab", lab.name, "get", "nodes", "-o", "json").stdout)
    assert [(n["name"], n["publicIP"]) for n in nodes] == [
        (f"node{k}", f"192.168.50.{10 + k}") for k in (1, 2, 3)]
    subnets = yaml.safe_load(cli("--lab", lab.name, "get", "subnets", "-o", "yaml").stdout)
    assert {s["subnet"]: s["node"] for s in subnets} == leases(lab)
    wide = cli("--lab", lab.name, "get", "subnets", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["SUBNET", "NODE", "PUBLICIP", "BACKEND", "BACKENDDATA",
                               "REVISION"]
    shown = json.loads(cli("--lab", lab.name, "config", "show").stdout)
    assert shown["Network"] == "10.244.0.0/16" and shown["Backend"] == {"Type": "host-gw"}


@pytest.mark.parametrize("datastore", ["embedded", "etcd"])
def test_nodes_joining_and_leaving_converge_within_a_second(make_lab, datastore):
    lab = make_lab(2, datastore=datastore)
    node3 = cluster.add_node(lab.name, lab.files)
    subnet = next(s for s, n in leases(lab).items() if n == node3.name)
    for node in ("node1", "node2"):
        # the agent is serving, so its lease was written before add_node returned
        wait_until(lambda node=node: subnet in gingham_routes(lab, node), timeout=1.0)
        assert gingham_routes(lab, node)[subnet] == "192.168.50.13"
    assert lab.pings("node1", str(ipaddress.IPv4Network(subnet).network_address + 1))
    cluster.delete_node(lab.name, "node3", lab.files)
    for node in ("node1", "node2"):
        wait_until(lambda node=node: subnet not in gingham_routes(lab, node), timeout=1.0)
    assert "node3" not in leases(lab).values()


def test_restart_keeps_subnet_and_touches_no_route(make_lab):
    lab = make_lab(2)
    pod = lab.add_pod("node2", "default/web")
    before = gingham_routes(lab, "node1")
    monitor = subprocess.Popen(["ip", "-n", lab.netns("node1"), "monitor", "route"],
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        record = lab.files.load()
        procs.stop_pids([record.supervisors["node1"]])
        assert gingham_routes(lab, "node1") == before, "routes stay while the agent is down"
        assert lab.pings("node1", pod.ip)
        with lab.files.locked():
            record = lab.files.load()
            record.supervisors["node1"] = cluster.start_agent(lab.files, record,
                                                         lab.plan.node("node1"))
            lab.files.save(record)
        cluster.wait_for_agent(lab.files, "node1", record.supervisors["node1"])
        time.sleep(0.5)  # let the sync loop run its full resync
    finally:
        monitor.send_signal(signal.SIGTERM)
        changes = monitor.communicate(timeout=5)[0]
    assert gingham_routes(lab, "node1") == before
    assert "10.244." not in changes, f"a restart changed routes:\n{changes}"
    assert sorted(leases(lab).values()) == ["node1", "node2"]


def test_stale_routes_are_swept_and_foreign_routes_kept(make_lab):
    lab = make_lab(2)
    node1 = lab.netns("node1")
    # a leftover of ours (no lease matches it) and someone else's route into the cluster
    subprocess.run(["ip", "-n", node1, "route", "add", "10.244.99.0/24", "via",
                    "192.168.50.99", "proto", GINGHAM_PROTO], check=True)
    subprocess.run(["ip", "-n", node1, "route", "add", "10.244.77.0/24", "via",
                    "192.168.50.77", "proto", "static"], check=True)
    # a lease shows up for the subnet the foreign route already covers
    with control.lab_registry(lab.files.load()) as registry:
        from gingham.subnet.lease import LeaseAttrs

        attrs = LeaseAttrs(ipaddress.IPv4Address("192.168.50.77"), "host-gw", "ghost")
        registry.write_lease(ipaddress.IPv4Network("10.244.77.0/24"), attrs, 0, 0)
        # the watch applies the change; the stale route goes with that resync
    wait_until(lambda: "10.244.99.0/24" not in gingham_routes(lab, "node1"), timeout=2)
    foreign = lab.run("node1", "ip", "-j", "route", "show", "10.244.77.0/24").stdout
    assert json.loads(foreign)[0]["protocol"] == "static", "a foreign route is never replaced"
    wait_until(lambda: any("10.244.77.0/24" in p and "not Gingham's" in p
                           for p in cluster.node_status(lab.files, "node1")["problems"]),
               timeout=2)


def test_config_set_rejects_bad_configs_in_one_line(three_nodes, tmp_path, cli):
    lab, _ = three_nodes
    for text, says in (("{", "not JSON"), ('{"Network": "10.0.0.0/16", "SubnetLen": 31}',
                                            "over /30"),
                       ('{"Network": "10.0.0.0/16", "Backend": {"Type": "x"}}',
                        "unknown backend")):
        path = tmp_path / "net-conf.json"
        path.write_text(text)
        result = cli("--lab", lab.name, "config", "set", "-f", str(path))
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and says in result.stderr
    assert json.loads(cli("--lab", lab.name, "config", "show").stdout)["Network"] \
        == "10.244.0.0/16", "a rejected config changes nothing"


def test_host_gw_refuses_a_next_hop_behind_a_router(make_lab, cli):
    lab = make_lab(2)
    with control.lab_registry(lab.files.load()) as registry:
        from gingham.subnet.lease import LeaseAttrs

        far = LeaseAttrs(ipaddress.IPv4Address("192.168.60.13"), "host-gw", "node9")
        registry.write_lease(ipaddress.IPv4Network("10.244.9.0/24"), far, 0, 0)
    why = "next hop 192.168.60.13 is not on a directly connected subnet"
    wait_until(lambda: any(why in p for p in
                           cluster.node_status(lab.files, "node1")["problems"]), timeout=2)
    assert "10.244.9.0/24" not in gingham_routes(lab, "node1"), "no half-route"
    status = cli("lab", "status", "--name", lab.name).stdout
    assert why in status and "problems reported by the agents" in status


def test_a_config_that_strands_leases_is_refused_and_no_lease_ever_overlaps(make_lab, cli,
                                                                            tmp_path):
    """The issue's case: a running 3-node vxlan lab, then SubnetLen 28 from SubnetMin
    10.244.1.0, inside node1's /24."""
    lab = make_lab(3, backend="vxlan")
    small = {"Network": "10.244.0.0/16", "SubnetLen": 28, "SubnetMin": "10.244.1.0",
             "Backend": {"Type": "vxlan"}}
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps(small))
    refused = cli("--lab", lab.name, "config", "set", "-f", str(path))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    for k in (1, 2, 3):
        assert f"10.244.{k}.0/24 of node{k} is a /24, not a /28 (SubnetLen)" in refused.stderr
    assert json.loads(cli("--lab", lab.name, "config", "show").stdout)["SubnetLen"] == 24

    # Past `config set`, straight into the store (as an older version or a hand could):
    # the running nodes keep their leases and say why, and a node added now gets a /28
    # that overlaps none of them.
    with control.lab_registry(lab.files.load()) as registry:
        registry.store.put("/gingham/network/config", json.dumps(small).encode())
    wait_until(lambda: all(any("does not fit this node's lease" in p
                               for p in cluster.node_status(lab.files, f"node{k}")["problems"])
                           for k in (1, 2, 3)), timeout=10, step=0.1)
    added = cli("lab", "node", "add", "--name", lab.name)
    assert added.returncode == 0, added.stderr
    assert leases(lab)["10.244.4.0/28"] == "node4"
    subnets = [ipaddress.ip_network(s) for s in leases(lab)]
    assert not any(a.overlaps(b) for a in subnets for b in subnets if a != b), subnets
    pods = [lab.add_pod(f"node{k}", f"default/q{k}") for k in (1, 2, 3, 4)]
    assert ipaddress.ip_address(pods[3].ip) in ipaddress.ip_network("10.244.4.0/28")
    for node in ("node1", "node2", "node3", "node4"):
        routes = [ipaddress.ip_network(d) for d in gingham_routes(lab, node)]
        assert not any(a.overlaps(b) for a in routes for b in routes if a != b), routes
    report = json.loads(cli("lab", "check", "--name", lab.name, "--json").stdout)
    assert [r for r in report["results"] if not r["ok"]] == []
