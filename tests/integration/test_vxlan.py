"""The vxlan backend in a lab: a VTEP per node, and per remote node the onlink route, the
permanent neighbour and the FDB entry the seeds show; real VXLAN packets on the underlay."""

from __future__ import annotations

import json
import time

import pytest

from gingham.lab import cluster, control, procs


def vtep(lab, node: str) -> dict:
    return json.loads(lab.run(node, "ip", "-j", "-d", "link", "show", "flannel.1").stdout)[0]


def has_route(lab, node: str, dst: str) -> bool:
    out = lab.run(node, "ip", "-j", "route", "show", "proto", "71").stdout
    return any(r["dst"] == dst for r in json.loads(out or "[]"))


def lease_data(lab) -> dict[str, dict]:
    with control.lab_registry(lab.files.load()) as registry:
        return {x.attrs.node_name: {"subnet": str(x.subnet), "ip": str(x.attrs.public_ip),
                                    **x.attrs.backend_data}
                for x in registry.leases().leases}


def entries(lab, node: str) -> tuple[dict, dict, dict]:
    """Gingham routes (dst -> route), flannel.1 neighbours (ip -> mac), FDB (mac -> dst)."""
    routes = json.loads(lab.run(node, "ip", "-j", "route", "show", "proto", "71").stdout)
    neigh = json.loads(lab.run(node, "ip", "-j", "neigh", "show", "dev", "flannel.1").stdout)
    fdb = json.loads(lab.run(node, "bridge", "-j", "fdb", "show", "dev", "flannel.1").stdout)
    return ({r["dst"]: r for r in routes},
            {n["dst"]: (n["lladdr"], n["state"]) for n in neigh},
            {f["mac"]: f.get("dst") for f in fdb if f.get("dst")})


@pytest.fixture(scope="module")
def vxlan_lab(make_module_lab):
    lab = make_module_lab(3, backend="vxlan")
    pods = {k: lab.add_pod(f"node{k}", f"default/v{k}").ip for k in (1, 2, 3)}
    return lab, pods


def test_every_pod_reaches_every_pod_through_the_tunnel(vxlan_lab, cli):
    lab, _ = vxlan_lab
    check = cli("lab", "check", "--name", lab.name, "--json")
    assert check.returncode == 0, check.stdout + check.stderr


def test_each_node_programs_route_neighbour_and_fdb_per_peer(vxlan_lab):
    lab, _ = vxlan_lab
    data = lease_data(lab)
    for k in (1, 2, 3):
        me = f"node{k}"
        device = vtep(lab, me)
        assert device["address"] == data[me]["VtepMAC"] and data[me]["VNI"] == 1
        assert device["mtu"] == 1450
        info = device["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info["local"]) == (1, 8472, data[me]["ip"])
        routes, neigh, fdb = entries(lab, me)
        peers = {n: d for n, d in data.items() if n != me}
        assert set(routes) == {d["subnet"] for d in peers.values()}
        for peer in peers.values():
            gateway = peer["subnet"].split("/")[0]
            route = routes[peer["subnet"]]
            assert (route["gateway"], route["dev"]) == (gateway, "flannel.1")
            assert "onlink" in route["flags"]
            assert neigh[gateway] == (peer["VtepMAC"], ["PERMANENT"])
            assert fdb[peer["VtepMAC"]] == peer["ip"]


def test_pod_mtu_and_subnet_env_leave_room_for_vxlan(vxlan_lab):
    lab, _ = vxlan_lab
    env = (lab.files.node_dir("node1") / "run" / "subnet.env").read_text()
    assert "FLANNEL_MTU=1450" in env
    eth0 = json.loads(lab.run("default/v1", "ip", "-j", "link", "show", "eth0").stdout)[0]
    assert eth0["mtu"] == 1450


def test_pod_traffic_crosses_the_underlay_as_vxlan(vxlan_lab):
    lab, pods = vxlan_lab
    def ping() -> None:
        assert lab.pings("default/v1", pods[2])

    out = lab.capture_one("underlay", ["udp", "port", "8472"], ping)
    assert "192.168.50.11" in out and "192.168.50.12.8472" in out


def test_a_leaving_node_takes_all_three_entries_with_it(make_lab):
    lab = make_lab(2, backend="vxlan")
    node3 = cluster.add_node(lab.name, lab.files)
    mac = lease_data(lab)[node3.name]["VtepMAC"]
    deadline = time.monotonic() + 2
    while mac not in entries(lab, "node1")[2]:
        assert time.monotonic() < deadline, "node3's FDB entry never arrived"
        time.sleep(0.05)
    cluster.delete_node(lab.name, node3.name, lab.files)
    deadline = time.monotonic() + 2
    while True:
        routes, neigh, fdb = entries(lab, "node1")
        if len(routes) == 1 and len(neigh) == 1 and mac not in fdb:
            break
        assert time.monotonic() < deadline, f"stale entries: {routes} {neigh} {fdb}"
        time.sleep(0.05)


def test_vtep_mac_is_stable_across_agent_restarts(make_lab):
    lab = make_lab(2, backend="vxlan")
    before = vtep(lab, "node1")["address"], lease_data(lab)["node1"]["VtepMAC"]
    with lab.files.locked():
        record = lab.files.load()
        procs.stop_pids([record.supervisors["node1"]])
        lab.run("node1", "ip", "link", "del", "flannel.1")  # even a re-created VTEP
        record.supervisors["node1"] = cluster.start_agent(lab.files, record, lab.plan.node("node1"))
        lab.files.save(record)
    cluster.wait_for_agent(lab.files, "node1", record.supervisors["node1"])
    # A restarted agent serves its previous subnet at once and re-creates its VTEP and
    # peers just after: wait for node1's way back to node2, which comes last.
    deadline = time.monotonic() + 3
    while not has_route(lab, "node1", "10.244.2.0/24"):
        assert time.monotonic() < deadline, "node1 never re-programmed its peer"
        time.sleep(0.02)
    assert (vtep(lab, "node1")["address"], lease_data(lab)["node1"]["VtepMAC"]) == before
    assert lab.pings("node2", "10.244.1.1")


def test_direct_routing_uses_host_gw_routes_on_one_segment(make_lab):
    lab = make_lab(2, backend="vxlan", backend_options={"DirectRouting": True})
    deadline = time.monotonic() + 3
    while not has_route(lab, "node1", "10.244.2.0/24"):  # the first sync follows serving
        assert time.monotonic() < deadline, "node1 never routed to node2"
        time.sleep(0.02)
    routes, _, fdb = entries(lab, "node1")
    assert routes["10.244.2.0/24"]["gateway"] == "192.168.50.12"
    assert routes["10.244.2.0/24"]["dev"] == "eth0" and fdb == {}
    assert lab.pings("node1", "10.244.2.1")


def test_bad_vxlan_options_fail_lab_up_clearly(lab_name, cli):
    result = cli("lab", "up", "--name", lab_name, "--backend", "vxlan",
                 "--backend-option", "VNI=99999999")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "VNI 99999999 is out of range" in result.stderr


def test_check_fails_on_a_black_holed_path_mtu_that_pings_miss(make_lab, cli):
    lab = make_lab(2, backend="vxlan")
    lab.add_pod("node1", "default/big1")
    lab.add_pod("node2", "default/big2")
    assert cli("lab", "check", "--name", lab.name).returncode == 0
    # A tunnel narrower than the pods' MTU, and the "fragmentation needed" answers that
    # would tell TCP so dropped: full-size segments from node1's pod vanish.
    lab.run("node1", "ip", "link", "set", "flannel.1", "mtu", "1300")
    lab.run("node1", "nft", "add table ip blackhole ; add chain ip blackhole out "
            "{ type filter hook output priority 0 ; } ; add rule ip blackhole out "
            "icmp type destination-unreachable icmp code frag-needed drop")
    check = cli("lab", "check", "--name", lab.name, "--json")
    assert check.returncode == 1
    failed = [(r["kind"], r["source"], r["target"])
              for r in json.loads(check.stdout)["results"] if not r["ok"]]
    assert failed == [("pod-pod-1MB", "default/big1", "default/big2")]
