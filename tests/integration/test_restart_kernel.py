"""An agent restarting on a working node changes nothing in that node's kernel: no link,
address, route, rule, Gingham neighbour or FDB entry, and not the masquerade table, as
`ip monitor`, `bridge monitor` and `nft monitor` in the node see it. The table is kept by
difference: a node joining or leaving changes one element of the `nodes` set; a table
that is not what Gingham writes is rebuilt whole."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time

import pytest

from gingham.dataplane import masquerade, netns, nft
from gingham.lab import cluster

CLUSTER = [ipaddress.IPv4Network("10.244.0.0/16")]
NODES = {ipaddress.IPv4Address("192.168.50.11"), ipaddress.IPv4Address("192.168.50.12")}
MONITORS = {"ip": ["ip", "-4", "monitor", "all"], "bridge": ["bridge", "monitor", "fdb"],
            "nft": ["nft", "monitor"]}


def wait_for(what: str, condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


class Monitors:
    """The monitors above running in one namespace; stop() returns what each printed."""

    def __init__(self, lab, target: str) -> None:
        self.procs = {name: lab.popen(target, *argv, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
                      for name, argv in MONITORS.items()}
        time.sleep(0.3)  # subscribed before anything happens

    def stop(self) -> dict[str, list[str]]:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        return {name: proc.communicate(timeout=5)[0].splitlines()
                for name, proc in self.procs.items()}


def gingham_changes(seen: dict[str, list[str]]) -> list[str]:
    """What the monitors saw, less what the kernel does by itself on a live node (learned
    neighbours and bridge ports changing state)."""
    ip = [line for line in seen["ip"] if line.startswith("[")
          and not (line.startswith("[NEIGH]") and "PERMANENT" not in line)]
    fdb = [line for line in seen["bridge"] if "flannel." in line]
    return ip + fdb + seen["nft"]


@pytest.mark.parametrize(("datastore", "backend"), [("embedded", "host-gw"),
                                                    ("etcd", "vxlan")])
def test_an_agent_killed_and_restarted_changes_nothing_in_the_kernel(make_lab, datastore,
                                                                     backend):
    lab = make_lab(2, datastore=datastore, backend=backend)
    lab.add_pod("node1", "default/a")
    lab.add_pod("node2", "default/c")
    time.sleep(1.5)  # the kernel's delayed link notifications for the new ports go by first
    supervisor = lab.files.load().supervisors["node1"]
    before = cluster.supervisor_state(lab.files, "node1")["agentPid"]
    monitors = Monitors(lab, "node1")
    try:
        since = time.time()
        os.kill(before, signal.SIGKILL)
        cluster.wait_for_agent(lab.files, "node1", supervisor, exits=1)
        wait_for("the new agent to apply the leases",
                 lambda: (st := cluster.node_status(lab.files, "node1") or {})
                 .get("updated", 0) > since and st.get("routes"))
        time.sleep(0.5)  # and anything it would do after its first sync
    finally:
        seen = monitors.stop()
    assert gingham_changes(seen) == [], seen


def test_the_masquerade_table_is_changed_by_difference(lab):
    monitors = Monitors(lab, "node1")
    other = ipaddress.IPv4Address("192.168.50.12")
    try:
        with netns.entered(lab.netns_path("node1")):  # libnftables binds here
            wanted = masquerade.programmed_nodes()
            assert not masquerade.apply(CLUSTER, wanted)
            assert masquerade.apply(CLUSTER, wanted | {other})
            assert masquerade.programmed_nodes() == wanted | {other}
            assert masquerade.apply(CLUSTER, wanted)
    finally:
        seen = monitors.stop()
    assert [line for line in seen["nft"] if not line.startswith("#")] == [
        "add element ip gingham nodes { 192.168.50.12 }",
        "delete element ip gingham nodes { 192.168.50.12 }"]
    with netns.entered(lab.netns_path("node1")):
        # Someone else's rule in Gingham's table: the table is rebuilt as Gingham writes it.
        nft.run([{"add": {"rule": {"family": "ip", "table": "gingham", "chain": "postrouting",
                                   "expr": [{"accept": None}]}}}])
        assert masquerade.apply(CLUSTER, wanted)
        assert not masquerade.apply(CLUSTER, wanted)
        # ip-masq off: no table at all, and nothing to do once it is gone.
        assert masquerade.apply(CLUSTER, wanted, enabled=False)
        assert nft.list_table("ip", "gingham") is None
        assert not masquerade.apply(CLUSTER, wanted, enabled=False)
        assert masquerade.apply(CLUSTER, wanted)
        assert masquerade.programmed_nodes() == wanted
