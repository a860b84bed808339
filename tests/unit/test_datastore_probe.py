"""The datastore health probe: its verdicts, the `datastore` field they make, the timing
(a probe out past its deadline is a stall, and only one is ever out), and the embedded
store's probe and stall against a write lock held by another connection."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from gingham.agent.datastore_health import (
    CONNECTING,
    OK,
    STALLED,
    DatastoreHealth,
    overdue,
    shown,
    verdict,
)
from gingham.agent.status import AgentStatus, StatusFile
from gingham.store.contract import StoreStalled, StoreUnavailable
from gingham.store.sqlite import EmbeddedStore

INTERVAL, DEADLINE = 0.05, 0.3


def test_verdicts():
    assert verdict(None) == "ok"
    assert verdict(StoreStalled("no answer")) == "stalled"
    assert verdict(StoreUnavailable("refused")) == "unreachable: refused"


def test_an_overdue_probe_is_a_stall_unless_the_store_already_refuses():
    assert overdue(OK) == overdue(CONNECTING) == overdue(STALLED) == "stalled"
    assert overdue("unreachable: refused") == "unreachable: refused"


@pytest.mark.parametrize(("current", "join_error", "field"), [
    (OK, "", "ok"),
    (CONNECTING, "", "connecting"),
    ("unreachable: refused", "", "unreachable: refused"),
    # Not joined yet: why the join failed is what keeps the node out...
    (OK, "network config is not JSON", "error: network config is not JSON"),
    ("unreachable: refused", "no etcd endpoint answered: refused",
     "error: no etcd endpoint answered: refused"),
    # ...unless the store is not answering now, which the last attempt cannot know.
    (STALLED, "network config is not JSON", "stalled"),
])
def test_the_field_shown(current, join_error, field):
    assert shown(current, join_error) == field


class GatedProbe:
    """A probe that answers what it is told, or nothing while closed; counts overlap."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.error: Exception | None = None
        self.calls = self.running = self.most_running = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            self.open.wait()
            if self.error is not None:
                raise self.error
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def health(tmp_path):
    status = StatusFile(tmp_path / "status.json", AgentStatus(node="node1"))
    made = DatastoreHealth(status, interval=INTERVAL, deadline=DEADLINE)
    yield made, status
    made.stop()


def field_becomes(status: StatusFile, value: str, timeout: float = 3.0) -> float:
    """Seconds until status.datastore reads `value`."""
    start = time.monotonic()
    while status.status.datastore != value:
        assert time.monotonic() - start < timeout, status.status.datastore
        time.sleep(0.005)
    return time.monotonic() - start


def test_stall_at_the_deadline_recovery_with_the_answer_and_one_probe_out(health):
    made, status = health
    probe = GatedProbe()
    made.start(probe)
    field_becomes(status, "ok")
    probe.open.clear()
    assert field_becomes(status, "stalled") < DEADLINE + INTERVAL + 0.2
    calls = probe.calls
    time.sleep(5 * DEADLINE)
    assert probe.calls == calls, "a second probe was sent while one was out"
    probe.open.set()
    assert field_becomes(status, "ok") < 0.1  # the outstanding probe's answer is the news
    time.sleep(3 * INTERVAL)
    assert probe.most_running == 1


def test_a_refusal_is_unreachable_and_a_slow_one_stays_so(health):
    made, status = health
    probe = GatedProbe()
    probe.error = StoreUnavailable("no etcd endpoint answered: refused")
    made.start(probe)
    field_becomes(status, "unreachable: no etcd endpoint answered: refused")
    probe.open.clear()  # the next refusal takes longer than the deadline
    time.sleep(2 * DEADLINE)
    assert status.status.datastore == "unreachable: no etcd endpoint answered: refused"
    probe.error = None
    probe.open.set()
    field_becomes(status, "ok")


def test_a_probe_that_breaks_is_a_verdict_not_the_end_of_probing(health):
    made, status = health
    probe = GatedProbe()
    probe.error = ValueError("bug")
    made.start(probe)
    field_becomes(status, "unreachable: bug")
    probe.error = None
    field_becomes(status, "ok")


def test_join_errors_until_joined_and_a_stall_over_them(health):
    made, status = health
    probe = GatedProbe()
    made.join_failed("network config is not JSON")
    assert status.status.datastore == "error: network config is not JSON"
    made.start(probe)
    time.sleep(3 * INTERVAL)  # the store answers, but the node is still not in
    assert status.status.datastore == "error: network config is not JSON"
    probe.open.clear()
    field_becomes(status, "stalled")
    probe.open.set()
    field_becomes(status, "error: network config is not JSON")
    made.joined()
    assert status.status.datastore == "ok"


def test_status_file_is_not_rewritten_while_nothing_changes(health):
    made, status = health
    made.start(GatedProbe())
    field_becomes(status, "ok")
    written = status.path.stat().st_mtime_ns
    time.sleep(5 * INTERVAL)
    assert status.path.stat().st_mtime_ns == written


def test_embedded_store_probe_and_writes_stall_on_a_held_write_lock(tmp_path):
    store = EmbeddedStore(tmp_path / "store.db", timeout=0.2)
    store.put("/k", b"v")
    store.probe()
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert store.get("/k").value == b"v"  # WAL: readers never wait...
        with pytest.raises(StoreStalled, match=r"write lock held elsewhere for 0\.2s"):
            store.probe()  # ...so the probe takes the write lock, as a renewal must
        with pytest.raises(StoreStalled):
            store.put("/k", b"w")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.probe()
    assert store.get("/k").value == b"v"  # the probe wrote nothing
    store.close()
