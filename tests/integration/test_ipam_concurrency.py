"""IPAM under load and across restarts: concurrent plugin ADDs against one agent never share
an address, every pod so made is reachable, DEL gives every address back, and reservations
outlive the agent that made them."""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gingham.dataplane.podlink import host_veth_name
from gingham.lab import cluster, procs

PODS = 50


@pytest.fixture
def pod_namespaces() -> Iterator[Callable[[int], list[str]]]:
    """Factory: make(n) -> n empty pod namespaces (paths), all removed afterwards."""
    made: list[str] = []

    def make(count: int) -> list[str]:
        names = [f"tipam{secrets.token_hex(4)}" for _ in range(count)]
        for name in names:
            made.append(name)  # first, so a failure midway still cleans up
            subprocess.run(["ip", "netns", "add", name], check=True)
        return [procs.netns_path(name) for name in names]

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


class Plugin:
    """The lab's installed `gingham` executable, exec'd in node1 as a runtime would."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.subnet = lab.plan.node("node1").pod_subnet
        self.gateway = self.subnet.network_address + 1
        self.conf = {"cniVersion": "1.0.0", "name": "gingham", "type": "gingham",
                     "bridge": "cni0", "agentSocket": str(lab.files.agent_socket("node1")),
                     "ipam": {"type": "gingham-ipam"}}

    def __call__(self, command: str, cid: str, netns: str, **extra) -> dict | None:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": str(self.lab.files.bin_dir),
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        proc = procs.run_in(self.lab.netns("node1"), [str(self.lab.files.bin_dir / "gingham")],
                            input=json.dumps({**self.conf, **extra}).encode(), env=env,
                            capture_output=True, timeout=120, check=False)
        assert proc.returncode == 0, f"{command} {cid}: {proc.stdout!r} {proc.stderr!r}"
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def add(self, cid: str, netns: str) -> ipaddress.IPv4Address:
        result = self("ADD", cid, netns)
        assert result is not None
        return ipaddress.IPv4Interface(result["ips"][0]["address"]).ip

    def reservations(self) -> dict[str, str]:
        """Address -> container ID, straight from the agent's state files."""
        pool = self.lab.files.node_dir("node1") / "state" / "ipam" / \
            f"{self.subnet.network_address}-{self.subnet.prefixlen}"
        return {p.name: p.read_text().split("\n")[0] for p in pool.iterdir()
                if p.name[0].isdigit()} if pool.is_dir() else {}

    def host_veths(self) -> set[str]:
        out = subprocess.run(["ip", "-n", self.lab.netns("node1"), "-j", "link", "show"],
                             capture_output=True, text=True, check=True).stdout
        return {link["ifname"] for link in json.loads(out)
                if link["ifname"].startswith("veth")}

    def pod_address(self, netns: str) -> str:
        out = subprocess.run(["ip", "-n", Path(netns).name, "-j", "-4", "addr", "show",
                              "dev", "eth0"], capture_output=True, text=True, check=True).stdout
        return json.loads(out)[0]["addr_info"][0]["local"]

    def pings_gateway(self, netns: str) -> bool:
        return procs.run_in(Path(netns).name,
                            ["ping", "-n", "-q", "-c", "1", "-W", "2", str(self.gateway)],
                            capture_output=True, timeout=10, check=False).returncode == 0


def test_concurrent_adds_never_share_an_address(lab, pod_namespaces) -> None:
    plugin = Plugin(lab)
    namespaces = pod_namespaces(PODS)
    cids = [secrets.token_hex(16) for _ in namespaces]
    with ThreadPoolExecutor(max_workers=PODS) as pool:
        addresses = list(pool.map(plugin.add, cids, namespaces))

    assert len(set(addresses)) == PODS
    assert all(a in plugin.subnet and a != plugin.gateway for a in addresses)
    assert plugin.reservations() == {str(a): c for a, c in zip(addresses, cids, strict=True)}
    assert plugin.host_veths() == {host_veth_name(c, "eth0") for c in cids}
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(plugin.pod_address, namespaces)) == [str(a) for a in addresses]
        reached = list(pool.map(plugin.pings_gateway, namespaces))
    assert all(reached), [str(a) for a, ok in zip(addresses, reached, strict=True) if not ok]

    with ThreadPoolExecutor(max_workers=PODS) as pool:
        list(pool.map(lambda c, n: plugin("DEL", c, n), cids, namespaces))
    assert plugin.reservations() == {}
    assert plugin.host_veths() == set()


def test_reservations_survive_an_agent_restart(lab, pod_namespaces) -> None:
    plugin = Plugin(lab)
    namespaces = pod_namespaces(11)
    old, new_ns = namespaces[:10], namespaces[10]
    cids = [secrets.token_hex(16) for _ in old]
    with ThreadPoolExecutor(max_workers=len(old)) as pool:
        results = dict(zip(cids, pool.map(plugin.add, cids, old), strict=True))
    before = plugin.reservations()
    assert before == {str(a): c for c, a in results.items()}

    node = lab.plan.node("node1")
    with lab.files.locked():
        record = lab.files.load()
        pid = record.supervisors["node1"]
        procs.stop_pids([pid])
        assert not procs.is_alive(pid)
        record.supervisors["node1"] = cluster.start_agent(lab.files, record, node)
        lab.files.save(record)  # so teardown stops the new agent
    cluster.wait_for_agent(lab.files, "node1", record.supervisors["node1"])

    assert plugin.reservations() == before
    assert all(map(plugin.pings_gateway, old))  # the restart disturbed no pod
    fresh = plugin.add(secrets.token_hex(16), new_ns)
    assert str(fresh) not in before
    assert plugin.pings_gateway(new_ns)
    # The new agent owns the old state: CHECK passes, DEL gives the address back.
    first_cid, first_ns = cids[0], old[0]
    first = ipaddress.IPv4Interface(f"{results[first_cid]}/{plugin.subnet.prefixlen}")
    prev = {"cniVersion": "1.0.0",
            "interfaces": [{"name": host_veth_name(first_cid, "eth0")},
                           {"name": "eth0", "sandbox": first_ns}],
            "ips": [{"address": str(first), "gateway": str(plugin.gateway), "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": str(plugin.gateway)}]}
    plugin("CHECK", first_cid, first_ns, prevResult=prev)
    plugin("DEL", first_cid, first_ns)
    assert str(first.ip) not in plugin.reservations()
    assert len(plugin.reservations()) == len(before)  # 9 old + the fresh one
