"""Calling plugin executables directly, as a runtime would, inside a lab node; and looking at
what they left in the kernel and on disk."""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gingham.lab import procs
from gingham.lab.cluster import REFERENCE_PLUGINS
from gingham.lab.plan import LabPlan, netns_name
from gingham.lab.state import LabFiles


@dataclass
class PluginReply:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout) if self.stdout.strip() else None


@dataclass
class PluginCaller:
    """Exec `bin_dir/<plugin>` in the node namespace with CNI_* env and a config on stdin."""

    node_netns: str
    bin_dirs: list = field(default_factory=list)

    def call(self, plugin: str, command: str | None, conf: dict | bytes | None = None, *,
             container_id: str | None = "c1", netns: str | None = None,
             ifname: str | None = "eth0", extra_env: dict | None = None,
             drop_env: tuple[str, ...] = ()) -> PluginReply:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "CNI_PATH": ":".join(map(str, self.bin_dirs))}
        for key, value in (("CNI_COMMAND", command), ("CNI_CONTAINERID", container_id),
                           ("CNI_NETNS", netns), ("CNI_IFNAME", ifname)):
            if value is not None:
                env[key] = value
        env.update(extra_env or {})
        for key in drop_env:
            env.pop(key, None)
        data = conf if isinstance(conf, bytes) else json.dumps(conf or {}).encode()
        binary = next(str(d / plugin) for d in self.bin_dirs if (d / plugin).exists())
        proc = procs.run_in(self.node_netns, [binary], input=data, env=env,
                            capture_output=True, timeout=60, check=False)
        return PluginReply(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@dataclass
class Node:
    """Node 1 of a lab, as the tests look at it: its conf, links and IPAM state."""

    plan: LabPlan
    files: LabFiles
    name: str = "node1"

    @property
    def netns(self) -> str:
        return netns_name(self.plan.name, self.name)

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.plan.node(self.name).address.ip

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.plan.node(self.name).pod_subnet

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def socket(self) -> str:
        return str(self.files.agent_socket(self.name))

    @property
    def ipam_dir(self) -> Path:
        return self.files.node_dir(self.name) / "state" / "ipam"

    def conf(self, **fields) -> dict:
        """A config of the main plugin for this node; `fields` override or add keys."""
        conf = {"cniVersion": "1.1.0", "name": "gingham", "type": "gingham", "bridge": "cni0",
                "agentSocket": self.socket, "ipam": {"type": "gingham-ipam"}}
        conf.update(fields)
        return conf

    def reservations(self) -> dict[str, str]:
        """Address -> owning container ID, from the reservation files of every pool."""
        found: dict[str, str] = {}
        if not self.ipam_dir.is_dir():
            return found
        for pool in self.ipam_dir.iterdir():
            for entry in pool.iterdir() if pool.is_dir() else ():
                try:
                    ipaddress.IPv4Address(entry.name)
                except ValueError:
                    continue
                found[entry.name] = entry.read_text().split("\n")[0]
        return found

    @staticmethod
    def ip(ns: str, *argv: str) -> list[dict]:
        """`ip -j ARGV` inside a namespace given by name or /run/netns path."""
        out = subprocess.run(["ip", "-n", Path(ns).name, "-j", *argv], capture_output=True,
                             text=True, check=True, timeout=10).stdout
        return json.loads(out) if out.strip() else []

    def links(self) -> dict[str, dict]:
        return {link["ifname"]: link for link in self.ip(self.netns, "-d", "link", "show")}

    def pings(self, ns: str, address: object) -> bool:
        """One echo from the namespace (name or path) to `address`."""
        return procs.run_in(Path(ns).name, ["ping", "-n", "-q", "-c", "1", "-W", "2",
                                            str(address)],
                            capture_output=True, timeout=10, check=False).returncode == 0


def _caller(node: Node) -> PluginCaller:
    return PluginCaller(node.netns, [node.files.bin_dir, REFERENCE_PLUGINS])


@pytest.fixture
def plugins(lab) -> PluginCaller:
    return PluginCaller(lab.netns("node1"), [lab.files.bin_dir, REFERENCE_PLUGINS])


@pytest.fixture
def node(lab) -> Node:
    """Node 1 of the per-test lab."""
    return Node(lab.plan, lab.files)


@pytest.fixture(scope="module")
def shared_node(make_module_lab) -> Node:
    """Node 1 of a lab shared by a module's stateless tests (errors, VERSION): a lab per
    test would be most of their run time."""
    lab = make_module_lab(1)
    return Node(lab.plan, lab.files)


@pytest.fixture(scope="module")
def shared_plugins(shared_node) -> PluginCaller:
    return _caller(shared_node)


@pytest.fixture
def pod_netns():
    """Factory for empty pod namespaces, removed afterwards (with whatever is in them)."""
    made: list[str] = []

    def make() -> str:
        name = f"tpod{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return procs.netns_path(name)

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
