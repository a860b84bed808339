"""The embedded store's watchers sleep until a writer commits: an event written by another
process reaches them within a few ms, a burst from several processes arrives whole and in
order, cancel() and close() end an idle watch at once from any thread, and watches that end
leave no file descriptor or doorbell behind."""

from __future__ import annotations

import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gingham.store.contract import DELETE, PUT, Event, StoreUnavailable
from gingham.store.doorbell import STALE_AFTER, doorbell_dir
from gingham.store.sqlite import SAFETY_REREAD, EmbeddedStore

PROMPT = 0.2  # s: "at once", with room for a busy 2-core box
WRITER = """
import sys, time
from pathlib import Path
from gingham.store.sqlite import EmbeddedStore
store = EmbeddedStore(Path(sys.argv[1]))
who, count, gap = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sys.stdin.readline()  # go
for i in range(count):
    store.put(f"/w/{who}/{i:05d}", repr(time.time()).encode())
    time.sleep(gap)
"""


def writers(db: Path, who: list[str], count: int, gap: float) -> list[subprocess.Popen]:
    """Processes that each put `count` keys under /w/WHO/ once told to go; each value is
    the wall-clock time the put began (the same clock in every process of the host)."""
    return [subprocess.Popen([sys.executable, "-c", WRITER, str(db), name, str(count),
                              str(gap)], stdin=subprocess.PIPE, text=True) for name in who]


def go(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.wait(120) == 0


class Collector:
    """A watch iterated on a thread until `until` events have arrived."""

    def __init__(self, store: EmbeddedStore, prefix: str, start: int, until: int) -> None:
        self.watch = store.watch(prefix, start)
        self.events: list[tuple[Event, float]] = []
        self.until = until
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                self.events.append((event, time.time()))
                if len(self.events) >= self.until:
                    return
        finally:
            self.ended.set()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        self.watch.cancel()
        assert not self.thread.is_alive(), f"{len(self.events)}/{self.until} events"


def open_fds(under: Path) -> int:
    """This process's descriptors of files below `under`, and of unix sockets bound there
    (the store's database files and doorbells). Not every descriptor: earlier tests'
    leftovers closing meanwhile would count too."""
    bound = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith(str(under)):
            bound.add(fields[6])  # the inode
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, gone by now
        if target.startswith(str(under)) or target.removeprefix("socket:[")[:-1] in bound:
            count += 1
    return count


def test_an_event_from_another_process_reaches_the_watcher_in_a_few_ms(tmp_path):
    db = tmp_path / "store.db"
    store = EmbeddedStore(db)
    count = 200
    procs = writers(db, ["a"], count, 0.01)
    collector = Collector(store, "/w/", store.put("/start", b"") + 1, count)
    time.sleep(0.2)  # the watcher is asleep before the first write
    go(procs)
    collector.join(30)
    ms = sorted((seen - float(e.value)) * 1000 for e, seen in collector.events)
    p50, p99 = statistics.median(ms), ms[int(len(ms) * 0.99) - 1]
    print(f"\nwatch latency from another process: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {ms[-1]:.2f} ms over {len(ms)}")
    assert p50 < 5.0
    store.close()


def test_a_burst_from_three_processes_reaches_every_watcher_whole_and_in_order(tmp_path):
    db = tmp_path / "store.db"
    store = EmbeddedStore(db)
    who, each = ["a", "b", "c"], 340
    procs = writers(db, who, each, 0)
    start = store.put("/start", b"") + 1
    collectors = [Collector(store, "/w/", start, len(who) * each) for _ in range(2)]
    subset = Collector(store, "/w/b/", start, each)
    go(procs)
    for collector in [*collectors, subset]:
        collector.join(60)
    log, _ = store._events_after("/w/", start - 1)
    for collector in collectors:
        assert [e for e, _ in collector.events] == log
    assert [e for e, _ in subset.events] == [e for e in log if e.key.startswith("/w/b/")]
    assert sorted(e.key for e in log) == [f"/w/{w}/{i:05d}" for w in who for i in range(each)]
    store.close()


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_an_idle_watch_ends_at_once_when_cancelled_or_closed_from_another_thread(tmp_path, how):
    store = EmbeddedStore(tmp_path / "store.db")
    collector = Collector(store, "/idle/", store.put("/x", b"") + 1, 1)
    time.sleep(0.3)  # asleep in its wait
    began = time.monotonic()
    threading.Thread(target=collector.watch.cancel if how == "cancel" else store.close).start()
    assert collector.ended.wait(5)
    took = time.monotonic() - began
    print(f"\n{how} ended the idle watch after {took * 1000:.1f} ms")
    assert took < PROMPT and not collector.events
    store.close()


def test_many_watches_leave_no_descriptor_or_doorbell_behind(tmp_path):
    """Each watch is iterated on one long-lived thread, as an agent's are: the store keeps
    one connection per thread, opened on that thread's first use."""
    store = EmbeddedStore(tmp_path / "store.db")
    start = store.put("/fd/k", b"")
    store.put("/fd/k", b"again")
    with ThreadPoolExecutor(1) as worker:
        worker.submit(store.get, "/fd/k").result()
        before = open_fds(tmp_path)
        for _ in range(200):
            idle = store.watch("/fd/", start + 2)
            iterating = worker.submit(list, idle)
            time.sleep(0.001)
            idle.cancel()  # mostly while it waits
            assert iterating.result(5) == []
            # Abandoned after its first event: the dropped generator ends the iteration.
            assert next(iter(store.watch("/fd/", start))).key == "/fd/k"
        assert open_fds(tmp_path) == before
    assert list(doorbell_dir(store.path).iterdir()) == []
    store.close()


def test_a_lease_that_expires_with_nobody_writing_reaches_the_watcher(tmp_path):
    store = EmbeddedStore(tmp_path / "store.db")
    lease = store.grant(1)
    start = store.put("/l/k", b"", lease=lease)
    collector = Collector(store, "/l/", start + 1, 1)
    collector.join(3)
    assert [(e.type, e.key) for e, _ in collector.events] == [(DELETE, "/l/k")]
    store.close()


def test_a_doorbell_left_by_a_killed_watcher_is_removed_by_the_next_writer(tmp_path):
    store = EmbeddedStore(tmp_path / "store.db")
    doorbells = doorbell_dir(store.path)
    doorbells.mkdir(exist_ok=True)
    stale, fresh = doorbells / "stale", doorbells / "fresh"
    for path in (stale, fresh):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))  # closed without unlinking: what SIGKILL leaves
    old = time.time() - 2 * STALE_AFTER
    os.utime(stale, (old, old))
    store.put("/k", b"")
    # A fresh one may be a watcher between bind() and the kernel finding it: kept a while.
    assert not stale.exists() and fresh.exists()
    store.close()


def test_a_commit_that_rings_no_doorbell_is_still_seen(tmp_path):
    """A writer that is not this code (the sqlite3 shell), or one killed between COMMIT and
    its ring: the slow re-read still delivers it."""
    store = EmbeddedStore(tmp_path / "store.db")
    start = store.put("/k/a", b"") + 1
    collector = Collector(store, "/k/", start, 1)
    time.sleep(0.2)
    foreign = sqlite3.connect(store.path, isolation_level=None)
    foreign.execute("BEGIN IMMEDIATE")
    foreign.execute("UPDATE meta SET value=value+1 WHERE name='revision'")
    foreign.execute("INSERT INTO log SELECT value, 'PUT', '/k/b', x'' FROM meta "
                    "WHERE name='revision'")
    foreign.execute("COMMIT")
    foreign.close()
    collector.join(SAFETY_REREAD + 2)
    assert [(e.type, e.key) for e, _ in collector.events] == [(PUT, "/k/b")]
    store.close()


def test_a_doorbell_directory_that_cannot_be_used_fails_the_watch_not_the_write(tmp_path):
    store = EmbeddedStore(tmp_path / "store.db")
    doorbell_dir(store.path).write_text("not a directory")
    assert store.put("/k", b"v") and store.get("/k").value == b"v"
    with pytest.raises(StoreUnavailable, match="no doorbell"):
        next(iter(store.watch("/k", 1)))
    store.close()
