"""The sync loop over an embedded store, with a recording backend instead of the kernel."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from gingham.agent import cluster_sync
from gingham.agent.cluster_sync import ClusterSync
from gingham.agent.status import AgentStatus, StatusFile
from gingham.backends.base import BackendPlan
from gingham.store.sqlite import EmbeddedStore
from gingham.subnet.lease import Lease, LeaseAttrs
from gingham.subnet.registry import SubnetRegistry

N, A = ipaddress.IPv4Network, ipaddress.IPv4Address
OWN = Lease(N("10.244.1.0/24"), LeaseAttrs(A("192.168.50.11"), "host-gw", "node1"))


class RecordingBackend:
    type = "host-gw"

    def __init__(self) -> None:
        self.seen: list[set[str]] = []

    def plan(self, own, leases) -> BackendPlan:
        self.seen.append({str(x.subnet) for x in leases if x.subnet != own.subnet})
        return BackendPlan()

    def apply(self, plan) -> list[str]:
        return []


class SilentWatch:
    """A watch whose connection went quiet, as under a network partition."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def __iter__(self):
        self.cancelled.wait()
        return iter(())

    def cancel(self) -> None:
        self.cancelled.set()


@pytest.fixture
def sync_setup(tmp_path):
    store = EmbeddedStore(tmp_path / "s.db")
    registry = SubnetRegistry(store, "/t")
    backend = RecordingBackend()
    status = StatusFile(tmp_path / "status.json", AgentStatus(node="node1"))
    sync = ClusterSync(registry, backend, lambda: OWN, lambda ips: None, status)
    yield registry, backend, sync
    sync.stop()
    store.close()


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def write(registry, subnet: str, ip: str, node: str) -> None:
    registry.write_lease(N(subnet), LeaseAttrs(A(ip), "host-gw", node), 0, 0)


def test_watch_delivers_new_and_deleted_leases(sync_setup):
    registry, backend, sync = sync_setup
    sync.start()
    write(registry, "10.244.2.0/24", "192.168.50.12", "node2")
    wait_for(lambda: backend.seen and backend.seen[-1] == {"10.244.2.0/24"})
    registry.store.delete("/t/subnets/10.244.2.0-24")
    wait_for(lambda: backend.seen[-1] == set())


def test_a_silent_watch_is_replaced_by_a_periodic_resync(sync_setup, monkeypatch):
    registry, backend, sync = sync_setup
    monkeypatch.setattr(cluster_sync, "RESYNC_INTERVAL", 0.2)
    monkeypatch.setattr(registry, "watch_leases", lambda revision: SilentWatch())
    sync.start()
    wait_for(lambda: backend.seen)
    write(registry, "10.244.3.0/24", "192.168.50.13", "node3")  # the watch never says so
    wait_for(lambda: backend.seen[-1] == {"10.244.3.0/24"}, timeout=3)
