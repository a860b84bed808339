"""The one dataplane thread (felix's shape): drain what the informers delivered, let each
manager fold it in without I/O, then have the managers that became dirty apply, in a fixed
order. A manager whose apply fails keeps its work dirty and is retried after a backoff of
its own, while the others go on. Every RESYNC_INTERVAL each manager is told to read the
kernel back in full (something outside Gingham may have removed what it made)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from gingham.sync.informer import Change, Snapshot, Update

log = logging.getLogger("gingham.sync.loop")
RETRY_MIN, RETRY_MAX = 0.5, 10.0
RESYNC_INTERVAL = 60.0


class Manager(Protocol):
    name: str
    kinds: tuple[str, ...]

    def on_snapshot(self, kind: str, objects: dict[str, object]) -> None:
        """Everything of `kind` now: replaces what the manager knew of it. No I/O."""
        ...

    def on_update(self, kind: str, key: str, obj: object | None) -> None:
        """One object changed (None: deleted). No I/O: record, mark dirty."""
        ...

    def resync(self) -> None:
        """Make the next apply read the kernel back in full."""
        ...

    def dirty(self) -> bool: ...

    def apply(self) -> list[str]:
        """Apply what became dirty; return the problems standing after it. Raising keeps
        the work dirty for a retry."""
        ...


class _Retry:
    def __init__(self) -> None:
        self.delay = 0.0
        self.due = 0.0

    def failed(self, now: float) -> None:
        self.delay = min(max(self.delay * 2, RETRY_MIN), RETRY_MAX)
        self.due = now + self.delay

    def succeeded(self) -> None:
        self.delay = self.due = 0.0


class ReconcileLoop:
    def __init__(self, managers: list[Manager],
                 report: Callable[[list[str]], None] = lambda problems: None) -> None:
        self.managers = managers
        self.report = report
        self.stopping = threading.Event()
        # None wakes the loop with nothing to fold in (stop() uses it).
        self._updates: queue.SimpleQueue[Update | None] = queue.SimpleQueue()
        self._retry = {m.name: _Retry() for m in managers}
        self._problems: dict[str, list[str]] = {m.name: [] for m in managers}
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    def deliver(self, update: Update) -> None:
        """From any thread (the informers')."""
        self._updates.put(update)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """From any thread: run a turn now (a manager's own state changed, e.g. a process
        it runs exited)."""
        self._updates.put(None)

    def stop(self) -> None:
        self.stopping.set()
        self._updates.put(None)
        self._thread.join(10)

    def handle(self, updates: list[Update | None]) -> None:
        """Fold `updates` in, then apply what became dirty: one turn of the loop (tests
        drive it with this, without the thread)."""
        for update in updates:
            self._dispatch(update)
        self._apply_dirty(time.monotonic())

    def _run(self) -> None:
        resync_at = time.monotonic() + RESYNC_INTERVAL
        updates: list[Update | None] = []
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= resync_at:
                for manager in self.managers:
                    manager.resync()
                resync_at = now + RESYNC_INTERVAL
            self.handle(updates)
            # Dirty still: waiting out a retry, or made dirty by a later manager's apply.
            due = [self._retry[m.name].due for m in self.managers if m.dirty()]
            wait = min([resync_at, *due]) - time.monotonic()
            try:
                updates = [self._updates.get(timeout=max(wait, 0.001))]
            except queue.Empty:
                updates = []
                continue
            while True:  # everything already queued, before any apply
                try:
                    updates.append(self._updates.get_nowait())
                except queue.Empty:
                    break

    def _dispatch(self, update: Update | None) -> None:
        if update is None:
            return
        for manager in self.managers:
            if update.kind not in manager.kinds:
                continue
            if isinstance(update, Snapshot):
                manager.on_snapshot(update.kind, update.objects)
            elif isinstance(update, Change):
                manager.on_update(update.kind, update.key, update.obj)

    def _apply_dirty(self, now: float) -> None:
        changed = False
        for manager in self.managers:  # the fixed order: as given
            retry = self._retry[manager.name]
            if not manager.dirty() or retry.due > now:
                continue
            try:
                problems = manager.apply()
            except Exception as err:
                retry.failed(now)
                log.exception("%s: apply failed; retrying in %.1fs", manager.name, retry.delay)
                problems = [f"{manager.name}: applying failed, retrying: {err}"]
            else:
                retry.succeeded()
            if problems != self._problems[manager.name]:
                self._problems[manager.name] = problems
                changed = True
        if changed:
            self.report(self.problems())

    def problems(self) -> list[str]:
        return [p for m in self.managers for p in self._problems[m.name]]


def stop_all(informers: list, loop: ReconcileLoop | None, server) -> None:
    """An agent's stop, in order: no news comes in, the loop ends, no call is served (each
    may be None: an agent stopped before it had it)."""
    for informer in informers:
        informer.stop()
    if loop is not None:
        loop.stop()
    if server is not None:
        server.stop()
