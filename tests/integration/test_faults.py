"""Faults while pods talk: agents killed -9, the datastore frozen or restarted, agents racing
for subnets, and bad input (an unreachable or untrusted datastore, corrupt leases, a network
config that does not parse). Real namespaces, real agents, a real etcd, real traffic.

What is asserted is what an operator would see: packets keep flowing, every node holds
exactly one subnet, and each problem is one clear line while the node keeps serving what it
already has (CNI ADD for its subnet, its routes, its pods)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gingham.dataplane import netns, nft
from gingham.lab import cluster, control, procs
from gingham.lab import etcd as etcd_proc
from gingham.lab.plan import CONTROL
from gingham.store.etcd import EtcdStore
from gingham.store.factory import open_store
from gingham.subnet.lease import LeaseAttrs, subnet_key
from gingham.subnet.manager import LeaseManager
from gingham.subnet.registry import SubnetRegistry

DATASTORES = ["embedded", "etcd"]
NODE_IP = {"node1": "192.168.50.11", "node2": "192.168.50.12", "node3": "192.168.50.13"}
SUBNET = {"node1": "10.244.1.0/24", "node2": "10.244.2.0/24", "node3": "10.244.3.0/24"}
CONTROL_IP = "192.168.50.2"
SUBNETS_PREFIX = "/gingham/network/subnets/"
CONFIG_KEY = "/gingham/network/config"
MAX_LOST = 0  # pings lost over a whole fault window: a restart or an outage costs none


# -- observing a lab ------------------------------------------------------------------


def wait_for(what: str, condition: Callable[[], object], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def status(lab, node: str) -> dict:
    return cluster.node_status(lab.files, node) or {}


def routes(lab, node: str) -> dict[str, str]:
    """Gingham's routes in the node (proto 71): destination -> next hop."""
    out = subprocess.run(["ip", "-n", lab.netns(node), "-j", "-4", "route", "show",
                          "proto", "71"], capture_output=True, text=True, check=True).stdout
    return {r["dst"]: r.get("gateway", "") for r in json.loads(out or "[]")}


def expected_routes(node: str, nodes: list[str]) -> dict[str, str]:
    return {SUBNET[n]: NODE_IP[n] for n in nodes if n != node}


def masq_nodes(lab, node: str) -> set[str]:
    """The masquerade table's node set: pod traffic to these is never NATed."""
    with netns.entered(procs.netns_path(lab.netns(node))):  # libnftables binds here
        objects = nft.list_table("ip", "gingham") or []
    found = next((o["set"] for o in objects if o.get("set", {}).get("name") == "nodes"), {})
    return {e if isinstance(e, str) else e["prefix"]["addr"] for e in found.get("elem", [])}


class MasqSampler:
    """Samples nodes' masquerade node sets until stopped: a restart must never shrink
    them, even for a moment (pod traffic to another node would be NATed meanwhile)."""

    def __init__(self, lab, nodes: list[str]) -> None:
        self.samples: list[tuple[str, set[str]]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(lab, nodes), daemon=True)
        self.thread.start()

    def _run(self, lab, nodes: list[str]) -> None:
        while not self.stopping.wait(0.005):
            for node in nodes:
                self.samples.append((node, masq_nodes(lab, node)))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)


def leases_by_node(lab) -> dict[str, list[str]]:
    with control.lab_registry(lab.files.load()) as registry:
        listing = registry.leases()
    held: dict[str, list[str]] = {}
    for lease in listing.leases:
        held.setdefault(lease.attrs.node_name, []).append(str(lease.subnet))
    return held


def log_size(lab, node: str) -> int:
    path = lab.files.agent_log(node)
    return path.stat().st_size if path.exists() else 0


def log_since(lab, node: str, offset: int) -> str:
    with open(lab.files.agent_log(node), "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def joined_since(lab, node: str, since: float) -> dict | None:
    """The node's status once its agent (restarted at `since`) is back in the cluster and has
    applied the leases at least once."""
    st = status(lab, node)
    fresh = st.get("updated", 0) > since and st.get("datastore") == "ok"
    return st if fresh and st.get("routes", 0) + len(st.get("problems", [])) > 0 else None


# -- driving agents and etcd ----------------------------------------------------------


def reap(pid: int) -> None:
    """The lab's agents and etcd are children of this process: no zombie left behind. (The
    subprocess module may have reaped it already.)"""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def kill_agent(lab, node: str, sig: int = signal.SIGKILL) -> None:
    """The node's agent service dies: its supervisor, then the agent, both by `sig`, so
    nothing restarts the agent until start_agent."""
    supervisor = lab.files.load().supervisors[node]
    pid = cluster.supervisor_state(lab.files, node)["agentPid"]
    for each in (supervisor, pid):
        with contextlib.suppress(ProcessLookupError):  # SIGTERM: the supervisor stopped it
            os.kill(each, sig)
        wait_for(f"{each} of {node} to exit", lambda p=each: not procs.is_alive(p), 10)
        reap(each)


def start_agent(lab, node: str, *, store_args: list[str] | None = None,
                wait: bool = True) -> int:
    """(Re)start the node's agent as the lab does, with other datastore flags if given; the
    supervisor's PID is recorded so the lab's teardown stops it whatever happens."""
    with lab.files.locked():
        record = lab.files.load()
        plan_node = cluster.plan_of(record).node(node)
        argv = cluster.agent_argv(lab.files, record, plan_node)
        if store_args is not None:
            standard = control.agent_store_args(record)
            at = next(i for i in range(len(argv)) if argv[i:i + len(standard)] == standard)
            argv[at:at + len(standard)] = store_args
        pid = cluster.start_agent(lab.files, record, plan_node, argv)
        record.supervisors[node] = pid
        lab.files.save(record)
    if wait:
        cluster.wait_for_agent(lab.files, node, pid)
    return pid


def restart_agent(lab, node: str, **kwargs) -> float:
    """Stop the node's agent (SIGTERM) and start it again; returns when it was restarted."""
    kill_agent(lab, node, signal.SIGTERM)
    since = time.time()
    start_agent(lab, node, **kwargs)
    return since


def etcd_pid(lab) -> int:
    return int(lab.files.load().datastore["pid"])


def restart_etcd(lab) -> None:
    """Start the lab's etcd member again, same data dir and argv, and record its PID."""
    with lab.files.locked():
        record = lab.files.load()
        member = control.etcd_member(cluster.plan_of(record), lab.files)
        proc = etcd_proc.start_member(member, [member], lab.files.dir / "etcd.log",
                                      netns=lab.netns(CONTROL))
        record.datastore["pid"] = proc.pid
        lab.files.save(record)
    with netns.entered(procs.netns_path(lab.netns(CONTROL))):
        etcd_proc.wait_ready([member.client_url], proc)


# -- traffic --------------------------------------------------------------------------


class Pinger:
    """`ping -i 0.1` running in one namespace until stopped: (sent, received)."""

    def __init__(self, lab, source: str, address: str) -> None:
        self.what = f"{source} -> {address}"
        self.proc = lab.popen(source, "ping", "-n", "-i", "0.1", address,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self) -> tuple[int, int]:
        """(sent, answered), leaving out the last echo: ping exits at once on SIGINT, so
        that one may still have been on its way back; any earlier one missing was lost."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # ping prints its tally and exits
        out, err = self.proc.communicate(timeout=10)
        found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert found, f"ping {self.what}: {out}{err}"
        sent = int(found[1]) - 1
        answered = {int(n) for n in re.findall(r"icmp_seq=(\d+) ", out)}
        return sent, len(answered & set(range(1, sent + 1)))


class TcpStream:
    """One TCP connection between pods carrying an 8-byte counter every 20 ms. It must
    survive the fault with every byte delivered and no long silence."""

    def __init__(self, lab, sender: str, receiver: str, address: str) -> None:
        # A socket stays in the namespace it was made in: make each in its pod, use it here.
        with netns.entered(lab.netns_path(receiver)):
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with netns.entered(lab.netns_path(sender)):
            self.client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with server:
            server.bind(("0.0.0.0", 0))
            server.listen(1)
            server.settimeout(5)
            self.client.settimeout(5)
            self.client.connect((address, server.getsockname()[1]))
            self.conn, _ = server.accept()
        self.conn.settimeout(5)
        self.sent = self.received = 0
        self.max_gap = 0.0
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._receive, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        try:
            while not self.stopping.wait(0.02):
                self.client.sendall(struct.pack("!Q", self.sent))
                self.sent += 1
            self.client.shutdown(socket.SHUT_WR)
        except OSError as err:
            self.errors.append(f"send: {err}")

    def _receive(self) -> None:
        last = time.monotonic()
        try:
            while data := self.conn.recv(65536):
                now = time.monotonic()
                self.max_gap = max(self.max_gap, now - last)
                last = now
                self.received += len(data)
        except OSError as err:
            self.errors.append(f"receive: {err}")

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)
        self.client.close()
        self.conn.close()


@pytest.fixture
def traffic() -> Iterator[list]:
    """Pingers and streams a test starts; stopped however the test ends."""
    running: list = []
    yield running
    for item in running:
        with contextlib.suppress(Exception):
            item.stop()


def assert_continuous(pingers: list[Pinger], stream: TcpStream | None = None,
                      max_lost: int = MAX_LOST) -> None:
    tallies = {p.what: p.stop() for p in pingers}
    for what, (sent, received) in tallies.items():
        assert sent >= 20 and sent - received <= max_lost, f"{what}: {tallies}"
    if stream is not None:
        stream.stop()
        assert not stream.errors, stream.errors
        assert stream.sent > 20 and stream.received == 8 * stream.sent
        assert stream.max_gap < 1.5, f"the stream stalled for {stream.max_gap:.2f}s"


# -- 1. agents killed -9 while pods talk ----------------------------------------------


@pytest.mark.parametrize("datastore", DATASTORES)
def test_agents_killed_mid_traffic_break_no_path_and_keep_their_subnets(
        make_lab, traffic, datastore):
    lab = make_lab(2, datastore=datastore)
    nodes = ["node1", "node2"]
    a = lab.add_pod("node1", "default/a").ip
    c = lab.add_pod("node2", "default/c").ip
    for node in nodes:
        assert routes(lab, node) == expected_routes(node, nodes)
    traffic += [Pinger(lab, "default/a", c), Pinger(lab, "node1", c),
                Pinger(lab, "default/c", a)]
    stream = TcpStream(lab, "default/a", "default/c", c)
    traffic.append(stream)
    time.sleep(0.5)

    for node in nodes:  # both at once: no agent anywhere
        kill_agent(lab, node)
    time.sleep(1.0)
    # Nothing is torn down by an agent's death: routes, bridge, pods stay.
    for node in nodes:
        assert routes(lab, node) == expected_routes(node, nodes)
    assert lab.pings("default/a", c)

    since = time.time()
    sampler = MasqSampler(lab, nodes)
    traffic.append(sampler)
    for node in nodes:
        start_agent(lab, node, wait=False)
    for node in nodes:
        cluster.wait_for_agent(lab.files, node, lab.files.load().supervisors[node])
        st = wait_for(f"{node} rejoined", lambda n=node: joined_since(lab, n, since))
        assert st["subnet"] == SUBNET[node] and st["problems"] == []
        assert routes(lab, node) == expected_routes(node, nodes)
    time.sleep(0.5)
    sampler.stop()
    every_node = {NODE_IP[n] for n in nodes}
    assert len(sampler.samples) > 20
    assert [s for s in sampler.samples if s[1] != every_node] == []
    assert_continuous(traffic[:3], stream)

    # Each node took its own lease back: one per node name, the same subnets.
    assert leases_by_node(lab) == {node: [SUBNET[node]] for node in nodes}
    # And the restarted agent serves CNI for that subnet: a new pod reaches the old ones.
    b = lab.add_pod("node1", "default/b").ip
    assert ipaddress.ip_address(b) in ipaddress.ip_network(SUBNET["node1"])
    assert lab.pings("default/b", c) and lab.pings("default/c", b)


# -- 2. the datastore goes away for a while -------------------------------------------


def test_etcd_frozen_then_killed_leaves_traffic_alone_and_agents_catch_up(make_lab, traffic):
    lab = make_lab(2, datastore="etcd")
    a = lab.add_pod("node1", "default/a").ip
    c = lab.add_pod("node2", "default/c").ip
    traffic += [Pinger(lab, "default/a", c), Pinger(lab, "node2", a)]

    # Frozen for 10 s (a stalled disk, a paused VM): connections stay open, requests hang.
    # A node joins meanwhile: its agent keeps trying and gets its lease once etcd is back.
    added: list = []
    adder = threading.Thread(target=lambda: added.append(cluster.add_node(lab.name, lab.files)),
                             daemon=True)
    pid = etcd_pid(lab)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2)
        adder.start()
        time.sleep(8)
        for node in ("node1", "node2"):
            assert routes(lab, node) == expected_routes(node, ["node1", "node2"])
    finally:
        os.kill(pid, signal.SIGCONT)
    adder.join(40)
    assert [n.name for n in added] == ["node3"], "node3 did not join after the outage"
    nodes = ["node1", "node2", "node3"]
    for node in nodes:
        wait_for(f"{node} to route to every other node",
                 lambda n=node: routes(lab, n) == expected_routes(n, nodes))
        assert status(lab, node)["datastore"] == "ok"
    d = lab.add_pod("node3", "default/d").ip
    assert lab.pings("default/d", c) and lab.pings("default/a", d)

    # Killed and restarted with the same data dir: the agents' watches break, they say so,
    # and they catch up with what changed right after the restart. A client that was
    # connected before (as an agent's renewal loop is) works at once after the restart.
    in_control = procs.netns_path(lab.netns(CONTROL))
    client = EtcdStore([f"http://{CONTROL_IP}:2379"])
    with netns.entered(in_control):  # its connection is made, and kept, in that namespace
        registry = SubnetRegistry(client)
        registry.leases()
    since = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for("etcd to exit", lambda: not procs.is_alive(pid), 10)
    reap(pid)
    for node in nodes:
        wait_for(f"{node} to notice the outage",
                 lambda n=node: status(lab, n)["datastore"].startswith("unreachable: "))
        assert f"http://{CONTROL_IP}:2379" in status(lab, node)["datastore"]
        assert routes(lab, node) == expected_routes(node, nodes)
    time.sleep(1)
    restart_etcd(lab)
    ghost = ipaddress.ip_network("10.244.20.0/24")
    with netns.entered(in_control):
        assert registry.write_lease(ghost, LeaseAttrs(ipaddress.ip_address("192.168.50.99"),
                                                      "host-gw", "ghost"), 0, 0)
    client.close()
    for node in nodes:
        wait_for(f"{node} to route the lease written after the restart",
                 lambda n=node: routes(lab, n).get(str(ghost)) == "192.168.50.99")
        st = wait_for(f"{node} back to ok",
                      lambda n=node: (s := status(lab, n))["datastore"] == "ok"
                      and s["updated"] > since and s)
        assert st["problems"] == []
    # The leases outlived etcd's restart (same data dir): still exactly one per node.
    assert leases_by_node(lab) == {**{n: [SUBNET[n]] for n in nodes}, "ghost": [str(ghost)]}
    assert_continuous(traffic)


# -- 3. agents racing for subnets -----------------------------------------------------


@pytest.mark.parametrize("datastore", DATASTORES)
def test_racing_acquires_never_share_a_subnet(make_lab, datastore):
    lab = make_lab(1, datastore=datastore)
    options, ns = control.store_options(lab.files.load())
    racers = 12
    barrier = threading.Barrier(racers)
    contested = ipaddress.ip_network("10.244.50.0/24")

    def race(i: int):
        # Each racer is its own client with its own connection; with etcd it talks from
        # node1's namespace over the underlay, as an agent does.
        with contextlib.ExitStack() as stack:
            if ns is not None:
                stack.enter_context(netns.entered(lab.netns_path("node1")))
            store = open_store(options)
            stack.callback(store.close)
            registry = SubnetRegistry(store)
            manager = LeaseManager(registry, registry.get_config())
            attrs = LeaseAttrs(ipaddress.ip_address(f"192.168.50.{100 + i}"), "host-gw",
                               f"racer{i}")
            barrier.wait(30)
            # Half go for one contested subnet, half for "the lowest free" (all the same).
            return manager.acquire(attrs, contested if i % 2 else None)

    with ThreadPoolExecutor(racers) as pool:
        won = list(pool.map(race, range(racers)))
    subnets = [lease.subnet for lease in won]
    assert len(set(subnets)) == racers, sorted(map(str, subnets))
    assert subnets.count(contested) == 1
    assert ipaddress.ip_network(SUBNET["node1"]) not in subnets
    held = leases_by_node(lab)
    assert held == {"node1": [SUBNET["node1"]],
                    **{lease.attrs.node_name: [str(lease.subnet)] for lease in won}}
    # node1's agent saw every one of them through its watch.
    want = {str(lease.subnet): str(lease.attrs.public_ip) for lease in won}
    wait_for("node1 to route to every racer", lambda: routes(lab, "node1") == want)


# -- 4. bad input ---------------------------------------------------------------------


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gingham: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def agent_argv(node: str, store_args: list[str], home: Path) -> list[str]:
    return [sys.executable, "-m", "gingham.cli.main", "agent", "--node-name", node,
            *store_args, "--iface", "eth0", "--bridge", "ghost0",
            "--socket", str(home / "agent.sock"), "--state-dir", str(home / "state"),
            "--run-dir", str(home / "run")]


@pytest.mark.parametrize("kind", ["etcd", "embedded"])
def test_fresh_agent_with_an_unreachable_datastore_keeps_retrying(lab, kind):
    """No datastore and nothing to fall back on: the agent says why in one line, once,
    and keeps trying (an operator may bring the datastore up) without touching the node."""
    home = lab.files.dir / "ghost"
    if kind == "etcd":  # a closed port in the node's own namespace: refused at once
        store_args, needle = ["--datastore", "etcd", "--endpoints", "http://127.0.0.1:1"], \
            "http://127.0.0.1:1"
    else:  # a store path that can never be created (its parent is a file)
        bad = lab.files.record_path / "store.db"
        store_args, needle = ["--datastore", "embedded", "--store-path", str(bad)], str(bad)
    before = routes(lab, "node1")
    home.mkdir()
    with open(home / "agent.log", "wb") as log:
        proc = procs.popen_in(lab.netns("node1"), agent_argv("ghost", store_args, home),
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                              start_new_session=True)
    try:
        path = home / "run" / "status.json"
        st = wait_for("the agent to report the datastore",
                      lambda: (s := json.loads(path.read_text()) if path.exists() else {})
                      .get("datastore", "").startswith("error: ") and s)
        assert needle in st["datastore"] and st["subnet"] == ""
        time.sleep(5)  # more than two join retries
        assert proc.poll() is None, (home / "agent.log").read_text()
        text = (home / "agent.log").read_text()
        errors = lines_with(text, "cannot join the cluster")
        assert len(errors) == 1 and needle in errors[0], text  # said once, not per retry
        assert "Traceback" not in text
        assert not (home / "agent.sock").exists()  # no subnet, nothing to serve
        assert routes(lab, "node1") == before and status(lab, "node1")["datastore"] == "ok"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, (home / "agent.log").read_text()  # a clean stop


@pytest.mark.parametrize(("store_args", "needle"), [
    (["--datastore", "etcd"], "--datastore etcd needs --endpoints"),
    (["--endpoints", "ftp://192.168.50.2:2379"], "is not http(s)://HOST:PORT"),
])
def test_agent_with_unusable_datastore_flags_fails_in_one_line(lab, store_args, needle):
    """Flags no retry can fix end the start at once, as one `gingham: error:` line."""
    home = lab.files.dir / "ghost"
    proc = lab.run("node1", *agent_argv("ghost", store_args, home), check=False)
    assert_one_line_error(proc, needle)
    assert not (home / "run" / "subnet.env").exists()


@pytest.fixture(scope="module")
def degraded_lab(make_module_lab):
    """Two etcd nodes with pods a (node1) and c (node2), and a second etcd member in the
    control namespace that wants client certificates. Yields (lab, pods, tls, other_ca)."""
    lab = make_module_lab(2, datastore="etcd")
    pods = {"a": lab.add_pod("node1", "default/a").ip, "c": lab.add_pod("node2", "default/c").ip}
    tls = etcd_proc.make_tls(lab.files.dir / "tls", [CONTROL_IP])
    other = etcd_proc.make_tls(lab.files.dir / "tls-other", [CONTROL_IP])
    member = etcd_proc.EtcdMember("secure", CONTROL_IP, 2479, 2480,
                                  lab.files.dir / "etcd-secure", tls=True)
    proc = etcd_proc.start_member(member, [member], lab.files.dir / "etcd-secure.log",
                                  netns=lab.netns(CONTROL), tls=tls)
    try:
        with netns.entered(procs.netns_path(lab.netns(CONTROL))):
            etcd_proc.wait_ready([member.client_url], proc, tls)  # the right cert works
        yield lab, pods, tls, other
    finally:
        proc.terminate()
        proc.wait(10)


SECURE = f"https://{CONTROL_IP}:2479"
REFUSED = "TLS: etcd did not accept the client certificate"
BAD_DATASTORES = {
    # name: (datastore flags given tls/other, what the error line must say)
    "closed-port": (lambda tls, other: ["--datastore", "etcd", "--endpoints",
                                        f"http://{CONTROL_IP}:1"],
                    (f"http://{CONTROL_IP}:1", "Connection refused")),
    "no-client-cert": (lambda tls, other: ["--datastore", "etcd", "--endpoints", SECURE,
                                           "--etcd-cafile", str(tls.ca)],
                       (SECURE, REFUSED)),
    "cert-of-another-ca": (lambda tls, other: ["--datastore", "etcd", "--endpoints", SECURE,
                                               "--etcd-cafile", str(tls.ca),
                                               "--etcd-certfile", str(other.client_cert),
                                               "--etcd-keyfile", str(other.client_key)],
                           (SECURE, REFUSED)),
    "untrusted-server": (lambda tls, other: ["--datastore", "etcd", "--endpoints", SECURE,
                                             "--etcd-cafile", str(other.ca),
                                             "--etcd-certfile", str(tls.client_cert),
                                             "--etcd-keyfile", str(tls.client_key)],
                         (SECURE, "TLS: etcd's server certificate is not trusted")),
    "missing-cert-file": (lambda tls, other: ["--datastore", "etcd", "--endpoints", SECURE,
                                              "--etcd-cafile", str(tls.ca),
                                              "--etcd-certfile", "/nonexistent/client.pem",
                                              "--etcd-keyfile", str(tls.client_key)],
                          ("cannot load etcd TLS files", "No such file")),
}


def assert_serving_previous_subnet(lab, pods: dict[str, str], offset: int,
                                   needles: tuple[str, ...], pod: str) -> None:
    """node1's agent cannot join, says so once, and serves what it had meanwhile."""
    st = wait_for("node1 to report why it cannot join",
                  lambda: (s := status(lab, "node1"))["datastore"].startswith("error: ")
                  and s)
    assert all(needle in st["datastore"] for needle in needles), st
    assert st["subnet"] == SUBNET["node1"], st
    text = log_since(lab, "node1", offset)
    errors = lines_with(text, "cannot join the cluster")
    assert len(errors) == 1 and all(needle in errors[0] for needle in needles), text
    assert lines_with(text, f"serving the previous subnet {SUBNET['node1']}"), text
    assert "Traceback" not in text
    # Nothing programmed is touched, and CNI ADD still works for the node's subnet.
    assert routes(lab, "node1") == {SUBNET["node2"]: NODE_IP["node2"]}
    assert lab.pings("default/a", pods["c"])
    new = lab.add_pod("node1", pod).ip
    assert ipaddress.ip_address(new) in ipaddress.ip_network(SUBNET["node1"])
    assert lab.pings(pod, pods["c"]) and lab.pings("default/c", new)
    lab.delete_pod(pod)


@pytest.mark.parametrize("case", BAD_DATASTORES)
def test_restart_against_a_bad_datastore_serves_the_previous_subnet(degraded_lab, case):
    lab, pods, tls, other = degraded_lab
    make_args, needles = BAD_DATASTORES[case]
    offset = log_size(lab, "node1")
    try:
        restart_agent(lab, "node1", store_args=make_args(tls, other))
        assert_serving_previous_subnet(lab, pods, offset, needles, f"default/{case}")
    finally:
        since = restart_agent(lab, "node1")  # the right datastore again
        wait_for("node1 to rejoin", lambda: joined_since(lab, "node1", since))
    assert routes(lab, "node1") == {SUBNET["node2"]: NODE_IP["node2"]}


def test_network_config_that_does_not_parse(degraded_lab, cli, tmp_path):
    lab, pods, _, _ = degraded_lab
    with control.lab_registry(lab.files.load()) as registry:
        good = registry.store.get(CONFIG_KEY).value
    # Through the CLI: refused with one line, the stored config untouched.
    for text, needle in (('{"Network": "10.244.0.0/16",', "network config is not JSON"),
                         ('["10.244.0.0/16"]', "must be a JSON object"),
                         ('{"Network": "10.244.0.0/16", "Backend": {"Type": "carrier-pigeon"}}',
                          "unknown backend type 'carrier-pigeon'")):
        path = tmp_path / "net-conf.json"
        path.write_text(text)
        assert_one_line_error(cli("--lab", lab.name, "config", "set", "-f", str(path)), needle)
    with control.lab_registry(lab.files.load()) as registry:
        assert registry.store.get(CONFIG_KEY).value == good
        # Straight into the datastore, past the CLI's check.
        registry.store.put(CONFIG_KEY, b"{garbage")
    try:
        # The running agents never re-read it; a restarting one reports it and serves on.
        offset = log_size(lab, "node1")
        restart_agent(lab, "node1")
        assert_serving_previous_subnet(lab, pods, offset,
                                       (f"{CONFIG_KEY}: network config is not JSON",),
                                       "default/during-bad-config")
        assert status(lab, "node2")["datastore"] == "ok"
        assert routes(lab, "node2") == {SUBNET["node1"]: NODE_IP["node1"]}
    finally:
        with control.lab_registry(lab.files.load()) as registry:
            registry.store.put(CONFIG_KEY, good)
    # The operator fixed it: the waiting agent joins on its own, same subnet.
    st = wait_for("node1 to join once the config is fixed",
                  lambda: (s := status(lab, "node1"))["datastore"] == "ok" and s)
    assert st["subnet"] == SUBNET["node1"]
    assert leases_by_node(lab) == {"node1": [SUBNET["node1"]], "node2": [SUBNET["node2"]]}


@pytest.mark.parametrize("datastore", DATASTORES)
def test_corrupt_leases_are_reported_and_routes_stay(make_lab, cli, datastore):
    lab = make_lab(2, datastore=datastore)
    a = lab.add_pod("node1", "default/a").ip
    c = lab.add_pod("node2", "default/c").ip
    node2_key = subnet_key("/gingham/network", ipaddress.ip_network(SUBNET["node2"]))
    garbage = {f"{SUBNETS_PREFIX}10.244.9.0-24": b"{not json",
               f"{SUBNETS_PREFIX}junk": b"{}",
               node2_key: b'{"PublicIP": "not an address", "BackendType": "host-gw"}'}
    with control.lab_registry(lab.files.load()) as registry:
        node2_lease = registry.store.get(node2_key).lease
        for key, value in garbage.items():
            # node2's key keeps its datastore lease, as if only its value went bad.
            registry.store.put(key, value, node2_lease if key == node2_key else 0)

    def reported(node: str) -> dict | None:
        st = status(lab, node)
        keys = {p.split(": ", 1)[0] for p in st.get("problems", [])}
        return st if set(garbage) - {node2_key if node == "node2" else ""} <= keys else None

    for node in ("node1", "node2"):
        st = wait_for(f"{node} to report the corrupt values", lambda n=node: reported(n))
        assert st["datastore"] == "ok"
    # What was programmed for node2's (now unreadable) lease stays.
    assert routes(lab, "node1") == {SUBNET["node2"]: NODE_IP["node2"]}
    assert routes(lab, "node2") == {SUBNET["node1"]: NODE_IP["node1"]}
    assert lab.pings("default/a", c) and lab.pings("default/c", a)

    # Also across a restart, when the agent has no memory of the lease's last good value.
    kill_agent(lab, "node1")
    since = time.time()
    start_agent(lab, "node1")
    wait_for("node1 to rejoin and report again",
             lambda: joined_since(lab, "node1", since) and reported("node1"))
    assert routes(lab, "node1") == {SUBNET["node2"]: NODE_IP["node2"]}
    assert NODE_IP["node2"] in masq_nodes(lab, "node1")  # node2 still not NATed to
    assert lab.pings("default/a", c) and lab.pings("default/c", a)

    # The CLI lists the good leases and warns once per bad key.
    listed = cli("--lab", lab.name, "get", "subnets", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [row["node"] for row in json.loads(listed.stdout)] == ["node1"]
    warnings = listed.stderr.strip().splitlines()
    assert sorted(w.split(": ", 2)[1] for w in warnings) == sorted(garbage), warnings

    # node2 restarting while its own lease is unreadable: it does not trade the subnet its
    # pods use for another one; it says why and serves on.
    offset = log_size(lab, "node2")
    restart_agent(lab, "node2")
    st = wait_for("node2 to report its unreadable lease",
                  lambda: (s := status(lab, "node2"))["datastore"].startswith("error: ") and s)
    assert node2_key in st["datastore"] and st["subnet"] == SUBNET["node2"], st
    errors = lines_with(log_since(lab, "node2", offset), "cannot join the cluster")
    assert len(errors) == 1 and node2_key in errors[0], errors
    assert "node2" not in leases_by_node(lab)
    e = lab.add_pod("node2", "default/e").ip
    assert ipaddress.ip_address(e) in ipaddress.ip_network(SUBNET["node2"])
    assert lab.pings("default/a", e) and lab.pings("default/e", a)

    # The operator deletes the bad values: the problems clear, node2 leases its subnet again.
    with control.lab_registry(lab.files.load()) as registry:
        for key in garbage:
            registry.store.delete(key)
    for node in ("node1", "node2"):
        st = wait_for(f"{node} to be ok with no problems",
                      lambda n=node: (s := status(lab, n))["datastore"] == "ok"
                      and s["problems"] == [] and s)
        assert st["subnet"] == SUBNET[node]
        wait_for(f"{node}'s routes", lambda n=node: routes(lab, n)
                 == expected_routes(n, ["node1", "node2"]))
    assert leases_by_node(lab) == {"node1": [SUBNET["node1"]], "node2": [SUBNET["node2"]]}
    assert lab.pings("default/a", e) and lab.pings("default/c", a)


# -- 5. supervised agents: a crash is answered, and costs the pods nothing --------------


def agent_pid(lab, node: str) -> int | None:
    return cluster.supervisor_state(lab.files, node).get("agentPid")


@pytest.mark.parametrize(("datastore", "backend"), [("embedded", "host-gw"),
                                                    ("etcd", "vxlan")])
def test_a_killed_agent_is_restarted_by_its_supervisor_and_no_packet_is_lost(
        make_lab, cli, traffic, datastore, backend):
    lab = make_lab(2, datastore=datastore, backend=backend)
    a = lab.add_pod("node1", "default/a").ip
    c = lab.add_pod("node2", "default/c").ip
    traffic += [Pinger(lab, "default/a", c), Pinger(lab, "node2", a),
                Pinger(lab, "default/c", a)]
    stream = TcpStream(lab, "default/c", "default/a", a)
    traffic.append(stream)
    time.sleep(0.5)
    before = agent_pid(lab, "node1")
    with control.lab_registry(lab.files.load()) as registry:
        lease_before = {x.attrs.node_name: x.subnet for x in registry.leases().leases}

    os.kill(before, signal.SIGKILL)
    after = wait_for("the supervisor to start a new agent",
                     lambda: (p := agent_pid(lab, "node1")) not in (None, before) and p)
    cluster.wait_for_agent(lab.files, "node1", lab.files.load().supervisors["node1"], exits=1)
    wait_for("node1 rejoined", lambda: joined_since(lab, "node1", time.time() - 5))
    time.sleep(2.0)
    assert_continuous(traffic[:3], stream, max_lost=0)

    shown = json.loads(cli("lab", "status", "--name", lab.name, "--json").stdout)["nodes"][0]
    assert (shown["agent"], shown["agentPid"], shown["restarts"], shown["lastExit"]) == \
        ("running", after, 1, "killed by SIGKILL")
    table = cli("lab", "status", "--name", lab.name).stdout.splitlines()
    assert table[2].split()[5:7] == [str(after), "1"], table
    # It took its lease back and its pods' addresses: a new pod gets a new address.
    with control.lab_registry(lab.files.load()) as registry:
        assert {x.attrs.node_name: x.subnet for x in registry.leases().leases} == lease_before
    b = lab.add_pod("node1", "default/b").ip
    assert b != a and ipaddress.ip_address(b) in lease_before["node1"]
    assert cli("lab", "check", "--name", lab.name).returncode == 0


def test_node_restart_restarts_on_purpose_and_changes_no_route(make_lab, cli, traffic):
    lab = make_lab(2)
    a = lab.add_pod("node1", "default/a").ip
    c = lab.add_pod("node2", "default/c").ip
    before = agent_pid(lab, "node1")
    pinger = Pinger(lab, "default/c", a)
    traffic.append(pinger)
    monitor = subprocess.Popen(["ip", "-4", "-n", lab.netns("node1"), "monitor", "route"],
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        restarted = cli("lab", "node", "restart", "--name", lab.name, "node1")
        assert restarted.returncode == 0, restarted.stderr
        time.sleep(1.5)
    finally:
        monitor.send_signal(signal.SIGTERM)
        changes = monitor.communicate(timeout=5)[0]
    assert changes == "", f"a restart changed routes: {changes}"
    pid = int(restarted.stdout)
    assert pid != before and pid == agent_pid(lab, "node1")
    assert_continuous([pinger], max_lost=0)
    state = cluster.supervisor_state(lab.files, "node1")
    assert state["restarts"] == 1 and state["lastExit"].startswith("restarted on purpose")
    assert lab.pings("default/a", c)
    unknown = cli("lab", "node", "restart", "--name", lab.name, "node9")
    assert unknown.returncode == 1 and "has no node 'node9'" in unknown.stderr


def test_check_fails_while_an_agent_is_down_or_reports_a_problem(make_lab, cli):
    lab = make_lab(2)
    lab.add_pod("node1", "default/a")
    lab.add_pod("node2", "default/c")
    assert cli("lab", "check", "--name", lab.name).returncode == 0
    # Down: the pods still reach each other (routes stay), but the check says who is down.
    assert cli("lab", "node", "stop", "--name", lab.name, "node2").returncode == 0
    down = cli("lab", "check", "--name", lab.name)
    assert down.returncode == 1 and "reachable" in down.stdout
    assert down.stderr.strip() == ("gingham: error: agent not running on node2 (down, last "
                                   "exited with code 0)"), down.stderr
    report = json.loads(cli("lab", "check", "--name", lab.name, "--json").stdout)
    assert report["ok"] is False and report["agentsDown"] == ["node2"]
    table = cli("lab", "status", "--name", lab.name).stdout.splitlines()
    assert table[3].split()[3:7] == ["-", "down", "-", "0"], table
    started = cli("lab", "node", "start", "--name", lab.name, "node2")
    assert started.returncode == 0, started.stderr
    again = cli("lab", "node", "start", "--name", lab.name, "node2")
    assert again.returncode == 1 and "running already" in again.stderr
    wait_for("node2 synced", lambda: status_ok(lab, "node2"))
    assert cli("lab", "check", "--name", lab.name).returncode == 0

    # A problem: a lease someone wrote by hand into node1's subnet.
    intruder = LeaseAttrs(ipaddress.IPv4Address("192.168.50.99"), "host-gw", "intruder")
    with control.lab_registry(lab.files.load()) as registry:
        registry.store.put(subnet_key(registry.prefix, ipaddress.ip_network("10.244.1.16/28")),
                           intruder.encode())
    wait_for("node2 to report the overlap", lambda: status(lab, "node2")["problems"])
    troubled = cli("lab", "check", "--name", lab.name)
    assert troubled.returncode == 1
    assert "problems reported by node1, node2" in troubled.stderr, troubled.stderr
    assert "overlaps the earlier lease 10.244.1.0/24 of node1; not routed" in troubled.stdout
    # The intruder is never routed, and node1 is not cut off by it.
    assert "10.244.1.16/28" not in routes(lab, "node2")
    assert routes(lab, "node2") == expected_routes("node2", ["node1", "node2"])
    assert lab.pings("default/c", lab.files.load().pods["default/a"].ip)


def status_ok(lab, node: str) -> bool:
    st = status(lab, node)
    return st.get("datastore") == "ok" and st.get("peers") == 1 and not st.get("problems")
