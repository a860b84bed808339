"""A datastore that stops answering shows as `stalled` in every node's status.json and in
`gingham lab status` within 5 s, and as `ok` again within about a second of answering: a
frozen etcd (SIGSTOP: connections open, nothing comes back), and the embedded store with
its write lock held by another process (in WAL mode readers never wait, writers do, and an
agent needs writes to renew its lease). Meanwhile the node keeps serving CNI calls."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator

import pytest

from gingham.lab import cluster

STALL_WITHIN = 5.0  # the bound
RECOVER_WITHIN = 3.0  # ~1 s expected; the rest is room for a busy 2-core box
NODES = ["node1", "node2"]


def datastore_field(lab, node: str) -> str:
    return (cluster.node_status(lab.files, node) or {}).get("datastore", "")


def seconds_until(lab, value: str, since: float, timeout: float) -> dict[str, float]:
    """How long after `since` each node's status.json said `value` (fails past timeout)."""
    took: dict[str, float] = {}
    while len(took) < len(NODES):
        for node in NODES:
            if node not in took and datastore_field(lab, node) == value:
                took[node] = time.monotonic() - since
        if time.monotonic() - since > timeout:
            fields = {n: datastore_field(lab, n) for n in NODES}
            raise AssertionError(f"not all {value!r} after {timeout:.0f}s: {fields}")
        time.sleep(0.02)
    return took


def lab_status_fields(lab) -> dict[str, str]:
    proc = lab.gingham("status", "--json")
    assert proc.returncode == 0, proc.stderr
    return {n["name"]: n["datastore"] for n in json.loads(proc.stdout)["nodes"]}


def assert_outage(lab, report: str, since: float, pod: str) -> None:
    took = seconds_until(lab, "stalled", since, STALL_WITHIN)
    print(f"\n{report}: stalled after {took}")
    assert lab_status_fields(lab) == dict.fromkeys(NODES, "stalled")
    # The probe waits on a thread and connection of its own: CNI ADD is not held up.
    ip = lab.add_pod("node1", pod).ip
    assert lab.pings("node1", ip)
    assert datastore_field(lab, "node1") == "stalled"


def assert_recovery(lab, report: str, since: float) -> None:
    took = seconds_until(lab, "ok", since, RECOVER_WITHIN)
    print(f"{report}: ok again after {took}")
    assert lab_status_fields(lab) == dict.fromkeys(NODES, "ok")


class Outage:
    """When the store stopped answering, and when it was let go (taken just before the
    release: the release wakes the store at once, and this process may not run for a bit)."""

    began = ended = 0.0


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[Outage]:
    outage = Outage()
    os.kill(pid, signal.SIGSTOP)
    outage.began = time.monotonic()
    try:
        yield outage
    finally:
        outage.ended = time.monotonic()
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def write_lock_held(path: str) -> Iterator[Outage]:
    outage = Outage()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        outage.began = time.monotonic()
        yield outage
        outage.ended = time.monotonic()
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def outage(lab, datastore: str) -> contextlib.AbstractContextManager[Outage]:
    record = lab.files.load().datastore
    return frozen(int(record["pid"])) if datastore == "etcd" \
        else write_lock_held(record["path"])


@pytest.mark.parametrize("datastore", ["etcd", "embedded"])
def test_a_store_that_stops_answering_is_stalled_then_ok(make_lab, datastore):
    lab = make_lab(2, datastore=datastore)
    seconds_until(lab, "ok", time.monotonic(), 10)
    with outage(lab, datastore) as first:
        assert_outage(lab, datastore, first.began, "default/during")
        # Longer than etcd's request timeout (5 s): a probe that gave up is a stall too.
        time.sleep(max(0.0, first.began + 8 - time.monotonic()))
        assert lab_status_fields(lab) == dict.fromkeys(NODES, "stalled")
    assert_recovery(lab, datastore, first.ended)
    # Again at once: the first outage left nothing behind that slows the second.
    with outage(lab, datastore) as second:
        seconds_until(lab, "stalled", second.began, STALL_WITHIN)
    assert_recovery(lab, datastore, second.ended)
