"""The informer over an embedded store, and the reconcile loop with recording managers."""

from __future__ import annotations

import threading
import time

import pytest

from gingham.store.sqlite import EmbeddedStore
from gingham.sync import informer as informer_mod
from gingham.sync.informer import Change, Informer, Snapshot
from gingham.sync.kinds import Undecodable
from gingham.sync.loop import ReconcileLoop


class NumberKind:
    name = "numbers"
    prefix = "/t/n/"

    def decode(self, kv) -> int:
        return int(kv.value)  # ValueError for anything else


class SilentWatch:
    """A watch whose connection went quiet, as under a network partition."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def __iter__(self):
        self.cancelled.wait()
        return iter(())

    def cancel(self) -> None:
        self.cancelled.set()


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path):
    s = EmbeddedStore(tmp_path / "s.db")
    yield s
    s.close()


def run_informer(store, updates):
    informer = Informer(store, NumberKind(), updates.append)
    informer.start()
    return informer


def test_listing_then_every_change_in_order_and_bad_values_reported(store):
    store.put("/t/n/a", b"1")
    updates: list = []
    informer = run_informer(store, updates)
    try:
        wait_for(lambda: updates)
        assert isinstance(updates[0], Snapshot) and updates[0].objects == {"/t/n/a": 1}
        store.put("/t/n/b", b"2")
        store.put("/t/n/a", b"x")
        store.delete("/t/n/b")
        store.put("/t/other", b"3")  # another prefix: not this informer's
        wait_for(lambda: len(updates) == 4)
        assert [(u.key, u.obj) for u in updates[1:]] == [
            ("/t/n/b", 2), ("/t/n/a", Undecodable("invalid literal for int() with base 10: b"
                                                  "'x'")), ("/t/n/b", None)]
        assert all(isinstance(u, Change) for u in updates[1:])
    finally:
        informer.stop()


def test_a_silent_watch_is_noticed_and_the_kind_relisted(store, monkeypatch):
    monkeypatch.setattr(informer_mod, "CHECK_INTERVAL", 0.2)
    monkeypatch.setattr(informer_mod, "CHECK_GRACE", 0.2)
    real_watch = store.watch
    watches = iter([SilentWatch()])
    monkeypatch.setattr(store, "watch", lambda prefix, rev: next(watches, None)
                        or real_watch(prefix, rev))
    updates: list = []
    informer = run_informer(store, updates)
    try:
        wait_for(lambda: updates)
        store.put("/t/n/late", b"7")  # the silent watch never says so
        wait_for(lambda: any(isinstance(u, Snapshot) and "/t/n/late" in u.objects
                             for u in updates), timeout=3)
        store.put("/t/n/next", b"8")  # and the new watch delivers again
        wait_for(lambda: any(isinstance(u, Change) and u.key == "/t/n/next" for u in updates))
    finally:
        informer.stop()


def test_a_delete_the_silent_watch_misses_is_noticed_too(store, monkeypatch):
    monkeypatch.setattr(informer_mod, "CHECK_INTERVAL", 0.2)
    monkeypatch.setattr(informer_mod, "CHECK_GRACE", 0.2)
    store.put("/t/n/a", b"1")
    monkeypatch.setattr(store, "watch", lambda prefix, rev: SilentWatch())
    updates: list = []
    informer = run_informer(store, updates)
    try:
        wait_for(lambda: updates)
        store.delete("/t/n/a")
        wait_for(lambda: len(updates) > 1 and updates[-1].objects == {}, timeout=3)
    finally:
        informer.stop()


class Recorder:
    def __init__(self, name: str, log: list, fail: int = 0) -> None:
        self.name, self.kinds, self.log, self.fail = name, ("numbers",), log, fail
        self.pending: list = []

    def on_snapshot(self, kind, objects):
        self.pending.append(("snapshot", sorted(objects)))

    def on_update(self, kind, key, obj):
        self.pending.append((key, obj))

    def resync(self):
        pass

    def dirty(self):
        return bool(self.pending)

    def apply(self):
        if self.fail:
            self.fail -= 1
            raise OSError("netlink said no")
        self.log.append((self.name, self.pending))
        self.pending = []
        return [f"{self.name} ok"]


def test_managers_apply_in_order_and_a_failing_one_retries_while_others_go_on():
    log: list = []
    reported: list = []
    first, failing = Recorder("first", log), Recorder("failing", log, fail=2)
    loop = ReconcileLoop([first, failing], reported.append)
    loop.start()
    try:
        loop.deliver(Snapshot("numbers", {"/t/n/a": 1}, 5))
        loop.deliver(Change("numbers", "/t/n/b", 2, 6))
        loop.deliver(Change("other", "/t/x", 3, 7))  # no manager's kind
        wait_for(lambda: ("failing", [("snapshot", ["/t/n/a"]), ("/t/n/b", 2)]) in log,
                 timeout=5)
        # The batch reached both managers whole; the failing one got it after two retries.
        assert log[0] == ("first", [("snapshot", ["/t/n/a"]), ("/t/n/b", 2)])
        assert any("failing: applying failed, retrying: netlink said no" in p
                   for ps in reported for p in ps)
        assert reported[-1] == ["first ok", "failing ok"]
    finally:
        loop.stop()
