"""Markers by folder (unit / integration / conformance) and the fixtures that own labs.

Every lab a test makes gets a unique name and is torn down even when the test fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gingham.dataplane import netns as netns_mod
from gingham.lab import cluster, procs
from gingham.lab import etcd as etcd_proc
from gingham.lab.plan import LabPlan, netns_name
from gingham.lab.state import LabFiles
from gingham.lab.topology import parse_topology
from gingham.store.etcd import EtcdStore
from gingham.store.sqlite import EmbeddedStore

ROOT = Path(__file__).parent
# The installed console script, next to the interpreter running the tests (the venv's).
GINGHAM = Path(sys.executable).parent / "gingham"


def pytest_collection_modifyitems(config, items):
    for item in items:
        kind = Path(item.fspath).relative_to(ROOT).parts[0]
        if kind in ("unit", "integration", "conformance"):
            item.add_marker(getattr(pytest.mark, kind))
            if kind != "unit" and os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root (real namespaces)"))


def unique_lab_name() -> str:
    return "t" + secrets.token_hex(3)


@dataclass
class Lab:
    """A running lab and short-hands for driving it in tests."""

    plan: LabPlan
    files: LabFiles

    @property
    def name(self) -> str:
        return self.plan.name

    def netns(self, host: str) -> str:
        return netns_name(self.name, host)

    def add_pod(self, node: str, ref: str, **kwargs):
        return cluster.add_pod(self.name, node, ref, files=self.files, **kwargs)

    def delete_pod(self, ref: str):
        return cluster.delete_pod(self.name, ref, files=self.files)

    def run(self, target: str, *argv: str, check: bool = True, timeout: float = 30,
            **kwargs) -> subprocess.CompletedProcess:
        ns = cluster.target_netns(self.name, target, files=self.files)
        return procs.run_in(ns, list(argv), capture_output=True, text=True, check=check,
                            timeout=timeout, **kwargs)

    def popen(self, target: str, *argv: str, **kwargs) -> subprocess.Popen:
        ns = cluster.target_netns(self.name, target, files=self.files)
        return procs.popen_in(ns, list(argv), **kwargs)

    def capture_one(self, target: str, tcpdump_filter: list[str], then) -> str:
        """tcpdump's account (-nv) of the first packet on `target`'s br0 that matches the
        filter, while `then()` makes traffic; the capture is stopped whatever happens."""
        capture = self.popen(target, "tcpdump", "-nvli", "br0", "-c", "1", *tcpdump_filter,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            time.sleep(0.5)  # tcpdump attaches before the traffic starts
            then()
            return capture.communicate(timeout=5)[0]
        finally:
            if capture.poll() is None:
                capture.kill()
                capture.wait()

    def pings(self, source: str, address: str) -> bool:
        return self.run(source, "ping", "-n", "-c", "1", "-W", "2", address,
                        check=False).returncode == 0

    def conflist(self, node: str = "node1") -> dict:
        return json.loads((self.files.conf_dir(node) / "10-gingham.conflist").read_text())

    @classmethod
    def of(cls, name: str) -> Lab:
        """The Lab of a lab built elsewhere (e.g. by `gingham lab up`)."""
        files = LabFiles(name)
        return cls(cluster.plan_of(files.load()), files)

    def netns_path(self, target: str) -> str:
        return procs.netns_path(cluster.target_netns(self.name, target, files=self.files))

    def gingham(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """`gingham lab COMMAND --name <this lab> ARGS...` through the CLI. `--name` goes right
        after the (sub)command, so it can never land after an `exec ... --`."""
        split = 2 if args[:1] == ("pod",) else 1
        return gingham("lab", *args[:split], "--name", self.name, *args[split:], **kwargs)

    def tcp_peer(self, receiver: str, sender: str, address: str, *,
                 bind: str | None = None, timeout: float = 3.0) -> str:
        """Connect over TCP from `sender` to `address` and return the source address the
        listener in `receiver` saw. Both sockets are made in their namespaces by this process
        (a socket stays in the namespace it was created in), so the check costs no fork."""
        with netns_mod.entered(self.netns_path(receiver)):
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with server:
            server.bind(("0.0.0.0", 0))  # an unused port: no conntrack entry of earlier tests
            server.listen(1)
            server.settimeout(timeout)
            with netns_mod.entered(self.netns_path(sender)):
                client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with client:
                client.settimeout(timeout)
                if bind is not None:
                    client.bind((bind, 0))
                client.connect((address, server.getsockname()[1]))
                conn, peer = server.accept()
                conn.close()
        return peer[0]

    def wait_listening(self, target: str, port: int, timeout: float = 10.0) -> None:
        """Wait until something in `target` listens on TCP `port`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run(target, "ss", "-Hltn", f"sport = :{port}").stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on {target}:{port} after {timeout}s")


def gingham(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the `gingham` CLI; never raises on a non-zero exit (tests look at it)."""
    return subprocess.run([str(GINGHAM), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="session")
def cli():
    """The `gingham` CLI runner, for test modules (they cannot import this conftest reliably:
    another folder has a conftest.py too, and both import as `conftest`)."""
    return gingham


@contextlib.contextmanager
def lab_factory() -> Iterator:
    """make(nodes=1, via_cli=False, **plan_kwargs) -> Lab; every lab made is torn down, however
    the tests using it end. With via_cli the lab is built by `gingham lab up [*cli_args]`, as a
    user would."""
    made: list[str] = []

    def make(nodes: int = 1, *, via_cli: bool = False, cli_args: tuple[str, ...] = (),
             topology: Path | None = None, **kwargs) -> Lab:
        # Plan fields the constructors do not take (Calico mode's), set on the plan made.
        extra = {k: kwargs.pop(k) for k in ("mode", "encap", "cross_subnet", "bgp")
                 if k in kwargs}
        if topology is not None:
            plan = LabPlan.from_topology(unique_lab_name(),
                                         parse_topology(yaml.safe_load(topology.read_text())),
                                         **kwargs)
        else:
            plan = LabPlan.single_segment(unique_lab_name(), nodes, **kwargs)
        plan = dataclasses.replace(plan, **extra)
        made.append(plan.name)
        if via_cli:
            assert not kwargs, "via_cli builds the default plan"
            proc = gingham("lab", "up", "--name", plan.name, "--nodes", str(nodes), *cli_args)
            assert proc.returncode == 0, proc.stderr
            plan = cluster.plan_of(LabFiles(plan.name).load())
        else:
            cluster.up(plan)
        return Lab(plan, LabFiles(plan.name))

    try:
        yield make
    finally:
        for name in made:
            cluster.down(name)


@pytest.fixture(scope="module")
def make_module_lab():
    """Labs shared by a module's tests (see lab_factory)."""
    with lab_factory() as make:
        yield make


@pytest.fixture
def lab_name() -> Iterator[str]:
    """A unique lab name for a lab a test builds itself (e.g. with `gingham lab up`); whatever
    exists under that name afterwards is torn down."""
    name = unique_lab_name()
    yield name
    cluster.down(name)


@pytest.fixture
def make_lab():
    """Labs for one test (see lab_factory)."""
    with lab_factory() as make:
        yield make


@pytest.fixture
def lab(make_lab) -> Lab:
    """A one-node lab."""
    return make_lab(1)


# -- datastores on loopback, for the store contract and the lease-space tests ---------


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class EtcdCluster:
    """Real etcd members on loopback, stopped by PID however the test ends."""

    def __init__(self, root: Path, size: int = 1, tls: bool = False) -> None:
        ports = free_ports(2 * size)
        self.members = [
            etcd_proc.EtcdMember(f"m{i}", "127.0.0.1", ports[2 * i], ports[2 * i + 1],
                                 root / f"m{i}", tls)
            for i in range(size)
        ]
        self.tls = etcd_proc.make_tls(root / "tls", ["127.0.0.1"]) if tls else None
        self.procs = [etcd_proc.start_member(m, self.members, root / f"{m.name}.log",
                                             tls=self.tls) for m in self.members]
        self.urls = [m.client_url for m in self.members]

    def wait(self) -> None:
        etcd_proc.wait_ready(self.urls, tls=self.tls)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[index]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i, signal.SIGTERM)


@pytest.fixture(name="free_ports")
def free_ports_fixture():
    return free_ports


@pytest.fixture
def etcd_cluster(tmp_path) -> Iterator:
    made: list[EtcdCluster] = []

    def make(size: int = 1, tls: bool = False) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path / f"etcd{len(made)}", size, tls)
        made.append(cluster)
        cluster.wait()
        return cluster

    yield make
    for each in made:
        each.stop()


@pytest.fixture(params=["embedded", "etcd"])
def store(request, tmp_path, etcd_cluster):
    if request.param == "embedded":
        s = EmbeddedStore(tmp_path / "store.db")
    else:
        s = EtcdStore(etcd_cluster(1).urls)
    yield s
    s.close()
