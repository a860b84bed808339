"""An informer per kind: list, then watch from the listing's revision + 1, handing every
change on to the reconcile loop. The listing is the first path and the path after any
error: a Compacted watch relists at once, other errors after a backoff. The picture is
never cleared on an error, so the dataplane stays as it is while the datastore is away.

A watch can also go quiet without failing (its etcd member cut off from the others, the
connection left open). While such a watch (not one that re-reads the store itself) is
quiet, the informer asks the store every
CHECK_INTERVAL what the watch should still deliver (Store.watch_check); if the store holds
a change the watch has not brought after CHECK_GRACE, or the check itself fails, the
watch is dropped and the kind relisted."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gingham.store.contract import DELETE, Compacted, KeyValue, Store, StoreError, Watch
from gingham.sync.kinds import Kind, Undecodable

log = logging.getLogger("gingham.sync.informer")
RETRY_MIN, RETRY_MAX = 0.5, 10.0
CHECK_INTERVAL = 2.0
CHECK_GRACE = 1.0


@dataclass(frozen=True)
class Snapshot:
    """Everything of a kind at one revision: it replaces what was known of the kind."""

    kind: str
    objects: dict[str, object]  # key -> object or Undecodable
    revision: int


@dataclass(frozen=True)
class Change:
    kind: str
    key: str
    obj: object | None  # None: deleted; Undecodable: a value that does not decode
    revision: int


Update = Snapshot | Change


def decoded(kind: Kind, kv: KeyValue) -> object:
    try:
        return kind.decode(kv)
    except ValueError as err:
        return Undecodable(str(err))


class Informer:
    def __init__(self, store: Store, kind: Kind, deliver: Callable[[Update], None]) -> None:
        self.store = store
        self.kind = kind
        self.deliver = deliver
        self.stopping = threading.Event()
        self._watch: Watch | None = None
        self._lock = threading.Lock()
        self._created: dict[str, int] = {}  # key -> create revision, of every key held
        self._seen = 0  # the revision everything up to which has been delivered
        self._delivered = 0  # changes delivered, for telling a live watch from a quiet one
        self._quiet_since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind.name}",
                                        daemon=True)
        self._checker = threading.Thread(target=self._check_loop,
                                         name=f"watch-check-{kind.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._checker.start()

    def stop(self) -> None:
        self.stopping.set()
        self._drop_watch()
        self._thread.join(10)
        self._checker.join(10)

    def _drop_watch(self) -> None:
        with self._lock:
            watch = self._watch
        if watch is not None:
            watch.cancel()

    def _run(self) -> None:
        delay = RETRY_MIN
        while not self.stopping.is_set():
            try:
                self._list_then_watch()
                delay = RETRY_MIN
                continue  # the watch was dropped on purpose (stalled): relist now
            except Compacted as err:
                log.info("%s: watch fell behind (%s); relisting", self.kind.name, err)
                continue
            except StoreError as err:
                log.warning("%s: datastore: %s; keeping what is applied", self.kind.name, err)
            except Exception:
                log.exception("%s: informer failed; relisting", self.kind.name)
            self.stopping.wait(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _list_then_watch(self) -> None:
        kvs, revision = self.store.range(self.kind.prefix)
        self._created = {kv.key: kv.create_revision for kv in kvs}
        self._seen = revision
        self.deliver(Snapshot(self.kind.name, {kv.key: decoded(self.kind, kv) for kv in kvs},
                              revision))
        watch = self.store.watch(self.kind.prefix, revision + 1)
        with self._lock:
            self._watch = watch
        if self.stopping.is_set():
            return
        self._quiet_since = time.monotonic()
        try:
            for event in watch:
                self._on_event(event)
        finally:
            with self._lock:
                self._watch = None

    def _on_event(self, event) -> None:
        if event.type == DELETE:
            self._created.pop(event.key, None)
            obj = None
        else:
            # A key new to the picture was created by this event; a known one keeps the
            # creation it was listed or first seen with.
            created = self._created.setdefault(event.key, event.revision)
            obj = decoded(self.kind, KeyValue(event.key, event.value, created, event.revision))
        self._seen = event.revision
        self._delivered += 1
        self._quiet_since = time.monotonic()
        self.deliver(Change(self.kind.name, event.key, obj, event.revision))

    # -- telling a stalled watch ---------------------------------------------------------

    def _check_loop(self) -> None:
        while not self.stopping.wait(CHECK_INTERVAL):
            watch = self._watch
            if watch is None or getattr(watch, "rereads", False):
                continue  # listing, or a watch that cannot go silent
            if time.monotonic() - self._quiet_since < CHECK_INTERVAL / 2:
                continue  # changes are arriving: the watch is alive
            why = self._stalled()
            if why and not self.stopping.is_set():
                log.warning("%s: watch stalled (%s); relisting", self.kind.name, why)
                self._drop_watch()

    def _stalled(self) -> str:
        """Why the watch looks stalled, or "" while it keeps up."""
        delivered, seen = self._delivered, self._seen
        try:
            count, oldest = self.store.watch_check(self.kind.prefix, seen)
        except StoreError as err:
            return f"the datastore did not answer a check: {err}"
        if not oldest and count == len(self._created):
            return ""
        # A change committed just before the check may still be on its way.
        if self.stopping.wait(CHECK_GRACE) or self._delivered != delivered:
            return ""
        if oldest:
            return f"revision {oldest} not delivered after {CHECK_GRACE:g}s"
        return f"{count} keys stored, {len(self._created)} delivered"
