"""`gingham lab` end to end through the CLI: build, pods, check, look inside, tear down, and
every way a user can get it wrong. Real namespaces, a real agent, real pings."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gingham.lab import cluster, procs
from gingham.lab.plan import LabPlan, netns_name
from gingham.lab.state import LabFiles, LabRecord

NODE1 = "192.168.50.11"
EXTERNAL = "192.168.50.254"
POD_SUBNET = ipaddress.ip_network("10.244.1.0/24")
PODS = ("web", "client1", "client2")
# A name no test makes (unique names are "t" + hex), for "no such lab" errors.
NO_LAB = "nolabzz"
GINGHAM = Path(sys.executable).parent / "gingham"


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error: non-zero exit, one line on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gingham: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def lab_namespaces(name: str) -> list[str]:
    return procs.list_netns(f"{name}-")


@pytest.fixture(scope="module")
def built(make_module_lab):
    """One lab made by `gingham lab up`, three pods added by `gingham lab pod add`; shared
    by the tests that only look. Yields (lab, {pod ref: the IP `pod add` printed})."""
    lab = make_module_lab(via_cli=True)
    ips = {}
    for pod in PODS:
        add = lab.gingham("pod", "add", "node1", f"default/{pod}", "--label", f"app={pod}")
        assert add.returncode == 0, add.stderr
        ips[f"default/{pod}"] = add.stdout.strip()
    return lab, ips


# -- a working lab --------------------------------------------------------------------


def test_up_prints_the_nodes_and_external(cli, lab_name):
    up = cli("lab", "up", "--name", lab_name, "--nodes", "2")
    assert up.returncode == 0, up.stderr
    assert up.stdout.splitlines() == [f"node1  {NODE1}  pods 10.244.1.0/24",
                                      "node2  192.168.50.12  pods 10.244.2.0/24",
                                      f"external  {EXTERNAL}"]
    assert up.stderr == ""
    assert lab_namespaces(lab_name) == sorted(
        netns_name(lab_name, h) for h in ("external", "node1", "node2", "underlay"))


def test_pod_add_prints_distinct_addresses_from_the_node_subnet(built):
    _, ips = built
    addresses = [ipaddress.ip_address(ip) for ip in ips.values()]
    assert len(set(addresses)) == len(PODS)
    assert all(a in POD_SUBNET and a != POD_SUBNET[1] for a in addresses)


def test_check_table_reports_everything_reachable(built):
    lab, ips = built
    proc = lab.gingham("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["KIND", "FROM", "TO", "ADDRESS", "RESULT", "RTT"]
    rows = [line.split() for line in lines[1:-1]]
    # every pod to every other pod, the node to every pod, every pod to external
    assert len(rows) == 6 + 3 + 3
    assert all(row[4] == "ok" for row in rows), proc.stdout
    assert {(r[1], r[2], r[3]) for r in rows if r[0] == "pod-pod"} == {
        (a, b, ips[b]) for a in ips for b in ips if a != b}
    assert lines[-1] == "12/12 reachable"
    assert proc.stderr == ""


def test_check_json_parses_and_reports_everything_reachable(built):
    lab, ips = built
    proc = lab.gingham("check", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    results = report["results"]
    kinds = [r["kind"] for r in results]
    assert (kinds.count("pod-pod"), kinds.count("node-pod"), kinds.count("pod-external")) \
        == (6, 3, 3)
    assert all(r["ok"] and r["rtt_ms"] is not None for r in results)
    assert {r["address"] for r in results if r["kind"] == "node-pod"} == set(ips.values())
    assert {r["address"] for r in results if r["kind"] == "pod-external"} == {EXTERNAL}


def test_pods_reach_each_other_their_node_and_external(built):
    # `check` pings node -> pod; here the other way round, and by the pods' own hands.
    lab, ips = built
    for pod, ip in ips.items():
        for address in (NODE1, str(POD_SUBNET[1]), EXTERNAL,
                        *(other for other in ips.values() if other != ip)):
            assert lab.pings(pod, address), f"{pod} cannot reach {address}"


def test_pod_list_table_and_json(built):
    lab, ips = built
    table = lab.gingham("pod", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["POD", "NODE", "IP", "NETNS", "LABELS"]
    assert [line.split() for line in lines[1:]] == [
        [ref, "node1", ips[ref], f"{lab.name}-pod-default-{ref.split('/')[1]}",
         f"app={ref.split('/')[1]}"] for ref in sorted(ips)]
    listed = json.loads(lab.gingham("pod", "list", "--json").stdout)
    assert {(p["namespace"], p["name"], p["node"], p["ip"]) for p in listed} == {
        ("default", ref.split("/")[1], "node1", ip) for ref, ip in ips.items()}
    assert all(p["labels"] == {"app": p["name"]} for p in listed)


def test_status_table_and_json(built):
    lab, _ = built
    supervisor = lab.files.load().supervisors["node1"]
    pid = cluster.supervisor_state(lab.files, "node1")["agentPid"]
    table = lab.gingham("status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == (f"lab {lab.name}: pod CIDR 10.244.0.0/16, backend host-gw, datastore "
                        f"embedded, ip-masq on, underlay 192.168.50.0/24, external {EXTERNAL}")
    assert lines[1].split() == ["NODE", "ADDRESS", "POD", "SUBNET", "DATASTORE", "AGENT", "PID",
                                "RESTARTS", "PODS"]
    assert lines[2].split() == ["node1", NODE1, "10.244.1.0/24", "ok", "running", str(pid), "0",
                                "3"]
    status = json.loads(lab.gingham("status", "--json").stdout)
    assert status == {
        "name": lab.name, "podCidr": "10.244.0.0/16", "external": EXTERNAL,
        "datastore": "embedded", "backend": "host-gw", "ipMasq": True,
        "nodes": [{"name": "node1", "address": NODE1, "podSubnet": "10.244.1.0/24",
                   "datastore": "ok", "agentPid": pid, "agent": "running", "pods": 3,
                   "restarts": 0, "lastExit": None, "supervisorPid": supervisor,
                   "problems": []}],
    }


@pytest.mark.parametrize("target", ["node1", "default/web", "external"])
def test_exec_runs_in_the_target(built, target):
    lab, ips = built
    expected = {"node1": NODE1, "external": EXTERNAL}.get(target) or ips[target]
    proc = lab.gingham("exec", target, "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert proc.returncode == 0, proc.stderr
    assert f" {expected}/" in proc.stdout


def test_exec_passes_the_exit_status_through(built):
    lab, _ = built
    assert lab.gingham("exec", "external", "--", "sh", "-c", "exit 7").returncode == 7


def test_up_on_an_existing_lab_fails_and_leaves_it_working(built, cli):
    lab, _ = built
    assert_one_line_error(cli("lab", "up", "--name", lab.name), "already exists")
    assert len(lab_namespaces(lab.name)) == 3 + len(PODS)
    assert lab.gingham("check").returncode == 0
    assert "running" in lab.gingham("status").stdout


# -- bad input ------------------------------------------------------------------------

BAD_INPUT = [
    (["up", "--name", "Bad-1"], "lab name 'Bad-1'"),
    (["down", "--name", "UPPER"], "lab name 'UPPER'"),
    (["up", "--name", NO_LAB, "--nodes", "0"], "--nodes"),
    (["up", "--name", "{lab}"], "already exists"),
    (["pod", "add", "--name", "{lab}", "node9", "default/x"], "no node 'node9'"),
    (["pod", "add", "--name", "{lab}", "node1", "noslash"], "NAMESPACE/POD"),
    (["pod", "add", "--name", "{lab}", "node1", "Default/X"], "NAMESPACE/POD"),
    (["pod", "add", "--name", "{lab}", "node1", "default/web"], "already exists"),
    (["pod", "add", "--name", "{lab}", "node1", "default/x", "--port", "80"], "--port"),
    (["pod", "add", "--name", "{lab}", "node1", "default/x", "--ingress-rate", "fast"],
     "--ingress-rate"),
    (["pod", "add", "--name", "{lab}", "node1", "default/x", "--label", "novalue"], "--label"),
    (["pod", "add", "--name", "{lab}", "node1"], "NAMESPACE/POD"),
    (["pod", "add", "--name", NO_LAB, "node1", "default/x"], f"no lab named '{NO_LAB}'"),
    (["pod", "del", "--name", "{lab}", "default/nothere"], "no pod default/nothere"),
    (["pod", "del", "--name", "{lab}", "nothere"], "NAMESPACE/POD"),
    (["pod", "list", "--name", NO_LAB], f"no lab named '{NO_LAB}'"),
    (["status", "--name", NO_LAB], f"no lab named '{NO_LAB}'"),
    (["check", "--name", NO_LAB], f"no lab named '{NO_LAB}'"),
    (["exec", "--name", "{lab}", "node9", "true"], "no node 'node9'"),
    (["exec", "--name", "{lab}", "default/nothere", "true"], "no pod default/nothere"),
    (["exec", "--name", "{lab}", "node1", "no-such-command"], "cannot run 'no-such-command'"),
    (["exec", "--name", NO_LAB, "node1", "true"], f"no lab named '{NO_LAB}'"),
    (["nosuchcommand"], "No such command"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD_INPUT,
                         ids=[" ".join(a).replace("{lab}", "LAB") for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line(built, cli, argv, needle):
    lab, _ = built
    before = lab.files.record_path.read_text()
    assert_one_line_error(cli("lab", *(a.format(lab=lab.name) for a in argv)), needle)
    # ...and changes nothing, nor leaves anything behind for a lab that does not exist.
    assert lab.files.record_path.read_text() == before
    assert not LabFiles(NO_LAB).dir.exists()
    assert not lab_namespaces(NO_LAB)


BAD_TOPOLOGIES = {
    "not-yaml": ("segments:\n  - {name: left, cidr: 192.168.50.0/24}\nnodes: a: b\n",
                 "cannot read {path}: line 3, column 9: mapping values are not allowed here"),
    "cut-off": ("segments:\n  - {name: left, cidr: 192.168.50.0/24}\n"
                "  - {name: right, cidr: 192.168.60.0/24}\n"
                "  - {name: far, cidr: 192.168.70.0/24}\n"
                "routers:\n  - {name: router1, segments: [left, right]}\n"
                "nodes:\n  - {name: node1, segment: left}\n  - {name: node2, segment: far}\n"
                "external: {segment: left}\n",
                "segment(s) far cannot be reached through routers from segment left, where "
                "the external host is: join them with a router"),
}


@pytest.mark.parametrize("case", BAD_TOPOLOGIES)
def test_a_bad_topology_file_is_one_line_and_builds_nothing(cli, lab_name, tmp_path, case):
    text, says = BAD_TOPOLOGIES[case]
    path = tmp_path / "t.yaml"
    path.write_text(text)
    line = assert_one_line_error(cli("lab", "up", "--name", lab_name, "-f", str(path)))
    assert line == f"gingham: error: {says.format(path=path)}"
    assert not lab_namespaces(lab_name) and not LabFiles(lab_name).dir.exists()


@pytest.mark.parametrize(("backend", "option", "says"), [
    ("host-gw", "Foo=1", "unknown host-gw option(s): Foo (known: none)"),
    ("vxlan", "VNI=abc", "vxlan VNI 'abc' is not a number"),
    ("udp", "Port=true", "udp Port True is not a number"),
])
def test_bad_backend_options_fail_lab_up_in_one_line(cli, lab_name, backend, option, says):
    up = cli("lab", "up", "--name", lab_name, "--backend", backend, "--backend-option", option)
    assert_one_line_error(up, says)
    assert not lab_namespaces(lab_name)


def to_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """`gingham ARGS | head -0`, deterministically: stdout is a pipe whose reader is gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([str(GINGHAM), *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=60, check=False)
    finally:
        os.close(write)


@pytest.mark.parametrize("argv", [["lab", "status", "--name", "{lab}"],
                                  ["lab", "status", "--name", "{lab}", "--json"],
                                  ["lab", "pod", "list", "--name", "{lab}"],
                                  ["--lab", "{lab}", "get", "nodes"]])
def test_output_to_a_closed_pipe_ends_quietly(built, argv):
    lab, _ = built
    proc = to_closed_pipe(*(a.format(lab=lab.name) for a in argv))
    assert (proc.returncode, proc.stderr) == (1, "")


def test_exec_gives_the_command_the_default_sigpipe(built):
    # `gingham lab exec node1 -- yes | head -1`: `yes` dies of SIGPIPE, as it would in a
    # shell, instead of inheriting Python's ignored SIGPIPE and complaining.
    lab, _ = built
    proc = to_closed_pipe("lab", "exec", "--name", lab.name, "node1", "--", "yes")
    assert (proc.returncode, proc.stderr) == (-signal.SIGPIPE, "")


def test_pods_whose_namespace_names_clash_are_refused(lab):
    assert lab.gingham("pod", "add", "node1", "a-b/c").returncode == 0
    assert_one_line_error(lab.gingham("pod", "add", "node1", "a/b-c"),
                          f"{lab.name}-pod-a-b-c", "a-b/c")
    assert list(lab.files.load().pods) == ["a-b/c"]
    assert lab.pings("a-b/c", "192.168.50.11")


def test_failed_pod_add_leaves_nothing_behind(lab):
    agent = lab.files.load().supervisors["node1"]
    procs.stop_pids([agent])  # the gingham plugin now fails: its agent is gone
    failed = lab.gingham("pod", "add", "node1", "default/x", "--port", "8080:80")
    assert_one_line_error(failed, "gingham ADD failed", "agent unreachable")
    assert lab.files.load().pods == {}
    assert not procs.list_netns(f"{lab.name}-pod-")
    rules = lab.run("node1", "iptables-nft-save", "-t", "nat").stdout
    assert "8080" not in rules


def test_pod_add_over_a_stale_namespace_fails_and_leaves_it_alone(lab):
    stale = f"{lab.name}-pod-default-x"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert_one_line_error(lab.gingham("pod", "add", "node1", "default/x"),
                          f"could not create namespace {stale}")
    assert procs.list_netns(stale) == [stale]
    assert lab.files.load().pods == {}


# -- down -----------------------------------------------------------------------------


def test_down_removes_the_lab_and_is_idempotent(cli, lab_name):
    assert cli("lab", "up", "--name", lab_name).returncode == 0
    assert cli("lab", "pod", "add", "--name", lab_name, "node1", "default/a").returncode == 0
    agent = LabFiles(lab_name).load().supervisors["node1"]
    first = cli("lab", "down", "--name", lab_name)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"lab {lab_name}: removed 4 namespaces"
    assert not lab_namespaces(lab_name)
    assert not LabFiles(lab_name).dir.exists()
    assert not procs.is_alive(agent)
    for _ in range(2):
        again = cli("lab", "down", "--name", lab_name)
        assert (again.returncode, again.stdout.strip(), again.stderr) == \
            (0, f"lab {lab_name}: removed 0 namespaces", "")
    assert not LabFiles(lab_name).dir.exists()


def test_down_after_the_agent_crashed(cli, lab_name):
    assert cli("lab", "up", "--name", lab_name, "--nodes", "2").returncode == 0
    add = cli("lab", "pod", "add", "--name", lab_name, "node1", "default/a",
                  "--port", "8080:80", "--ingress-rate", "10M")
    assert add.returncode == 0, add.stderr
    files = LabFiles(lab_name)
    supervisors = files.load().supervisors
    agents = {node: cluster.supervisor_state(files, node)["agentPid"] for node in supervisors}
    for pid in (supervisors["node1"], agents["node1"]):  # the whole agent service crashed
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while procs.is_alive(agents["node1"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    status = cli("lab", "status", "--name", lab_name)
    assert [line.split()[4] for line in status.stdout.splitlines()[2:]] == ["down", "running"]
    down = cli("lab", "down", "--name", lab_name)
    assert down.returncode == 0, down.stderr
    assert not lab_namespaces(lab_name)
    assert not LabFiles(lab_name).dir.exists()
    assert not any(procs.is_alive(pid) for pid in [*agents.values(), *supervisors.values()])


def test_down_after_a_half_built_up(cli, lab_name):
    # What `up` leaves if it dies between steps: the record, some namespaces, and a process
    # in one of them that the record does not know about.
    plan = LabPlan.single_segment(lab_name, 2)
    files = LabFiles(lab_name)
    files.create(LabRecord(lab_name, cluster._plan_json(plan)))
    for host in ("underlay", "external", "node1"):
        subprocess.run(["ip", "netns", "add", netns_name(lab_name, host)], check=True)
    stray = procs.popen_in(netns_name(lab_name, "node1"), ["sleep", "300"])
    try:
        down = cli("lab", "down", "--name", lab_name)
        assert down.returncode == 0, down.stderr
        assert down.stdout.strip() == f"lab {lab_name}: removed 3 namespaces"
        assert stray.wait(timeout=5) == -signal.SIGTERM
        assert not lab_namespaces(lab_name)
        assert not files.dir.exists()
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_down_of_namespaces_without_a_record(cli, lab_name):
    subprocess.run(["ip", "netns", "add", netns_name(lab_name, "node1")], check=True)
    # `up` refuses to build over them (and leaves them alone)...
    assert_one_line_error(cli("lab", "up", "--name", lab_name), "already exists")
    assert lab_namespaces(lab_name) == [netns_name(lab_name, "node1")]
    # ...and `down` removes them.
    assert cli("lab", "down", "--name", lab_name).returncode == 0
    assert not lab_namespaces(lab_name)


def test_failed_up_removes_what_it_built(lab_name, monkeypatch):
    def broken_agent(files, plan, node):
        return [sys.executable, "-c",
                "import sys; print('ERROR no uplink eth9', file=sys.stderr); sys.exit(1)"]

    monkeypatch.setattr(cluster, "agent_argv", broken_agent)
    with pytest.raises(cluster.LabError) as failure:
        cluster.up(LabPlan.single_segment(lab_name, 2))
    assert str(failure.value) == (f"lab up failed, half-built lab {lab_name} removed: "
                                  "agent of node1 exited during start: ERROR no uplink eth9")
    assert not lab_namespaces(lab_name)
    assert not LabFiles(lab_name).dir.exists()


def test_failed_node_add_removes_what_it_added(make_lab, monkeypatch):
    lab = make_lab(1)
    pod = lab.add_pod("node1", "default/a")
    real_argv = cluster.agent_argv

    def broken_for_node2(files, record, node):
        if node.name != "node2":
            return real_argv(files, record, node)
        return [sys.executable, "-c",
                "import sys; print('ERROR no uplink eth9', file=sys.stderr); sys.exit(1)"]

    monkeypatch.setattr(cluster, "agent_argv", broken_for_node2)
    with pytest.raises(cluster.LabError) as failure:
        cluster.add_node(lab.name, lab.files)
    assert str(failure.value) == ("lab node add failed, node2 removed: agent of node2 exited "
                                  "during start: ERROR no uplink eth9")
    record = lab.files.load()
    assert [n["name"] for n in record.plan["nodes"]] == ["node1"]
    assert list(record.supervisors) == ["node1"]
    assert not procs.list_netns(lab.netns("node2"))
    assert not lab.files.node_dir("node2").exists()
    assert "node2" not in lab.run("underlay", "ip", "-o", "link", "show").stdout
    # The lab goes on as before, and the next node add takes the name again.
    monkeypatch.setattr(cluster, "agent_argv", real_argv)
    assert cluster.add_node(lab.name, lab.files).name == "node2"
    assert lab.pings("node2", pod.ip)


# -- several labs, and failures `check` must see ---------------------------------------


def test_two_labs_at_once_do_not_collide(make_lab):
    first, second = make_lab(1), make_lab(1)
    ips = {}
    for lab in (first, second):
        ips[lab.name] = [lab.add_pod("node1", f"default/{p}").ip for p in ("a", "b")]
    # Same plan, same addresses, separate worlds.
    assert ips[first.name] == ips[second.name]
    for lab in (first, second):
        assert lab.gingham("check").returncode == 0
    cluster.down(first.name)
    assert not lab_namespaces(first.name)
    assert len(lab_namespaces(second.name)) == 5
    proc = second.gingham("check")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1] == "6/6 reachable"


def test_check_fails_when_a_pod_is_unreachable(lab):
    lab.add_pod("node1", "default/a")
    lab.add_pod("node1", "default/b")
    assert lab.gingham("check").returncode == 0
    assert lab.gingham("exec", "default/b", "--", "ip", "link", "set", "eth0", "down") \
        .returncode == 0
    table = lab.gingham("check")
    assert table.returncode == 1
    assert_one_line_error(table, "4 of 6 probes failed")
    failed = {tuple(line.split()[:3]) for line in table.stdout.splitlines()
              if "UNREACHABLE" in line}
    assert failed == {("pod-pod", "default/a", "default/b"),
                      ("pod-pod", "default/b", "default/a"),
                      ("node-pod", "node1", "default/b"),
                      ("pod-external", "default/b", "external")}
    assert table.stdout.splitlines()[-1] == "2/6 reachable"
    report = json.loads(lab.gingham("check", "--json").stdout)
    assert report["ok"] is False
    assert sum(not r["ok"] for r in report["results"]) == 4


def test_check_of_a_lab_without_pods_says_why_it_fails(lab):
    proc = lab.gingham("check")
    assert_one_line_error(proc, "no pods to check")
