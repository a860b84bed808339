"""The embedded datastore: one SQLite file shared by every process of a host.

It keeps etcd's model (store-wide revision, per-key create/mod revisions, leases, an event
log for watches) in four tables. Writers serialise on SQLite's write lock (BEGIN
IMMEDIATE, WAL mode) and, after a commit that changed anything, ring the doorbell of every
watch of every process (doorbell.py); a watch sleeps until rung, then reads the log past
what it has seen. Expired leases are reaped by whichever process touches the store next,
watches waking for the earliest expiry, so no daemon is needed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from gingham.store.contract import (
    DELETE,
    PUT,
    Compacted,
    Event,
    KeyValue,
    LeaseNotFound,
    StoreStalled,
    StoreUnavailable,
)
from gingham.store.doorbell import Doorbell, doorbell_dir, ring

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL,
    create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, lease INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (rev INTEGER PRIMARY KEY, type TEXT NOT NULL,
    key TEXT NOT NULL, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL,
    expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compacted', 0);
"""
# A watch re-reads this often even unrung: a writer killed between COMMIT and its ring, or
# one that is not this code (the sqlite3 shell), rings nobody.
SAFETY_REREAD = 5.0
BUSY_TIMEOUT = 30.0  # how long a writer waits for the write lock before giving up
LOG_KEEP = 100_000  # revisions of history kept for watchers that fall behind


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with prefix."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


class EmbeddedStore:
    def __init__(self, path: Path, log_keep: int = LOG_KEEP,
                 timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        self.log_keep = log_keep
        self.timeout = timeout
        self._local = threading.local()
        self._closed = threading.Event()
        self._doorbells = doorbell_dir(path)
        self._watches: weakref.WeakSet[SqliteWatch] = weakref.WeakSet()
        self._watches_lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db().executescript(SCHEMA)
        except (sqlite3.Error, OSError) as err:
            raise StoreUnavailable(f"embedded store {path}: {err}") from err

    # -- connections and transactions ---------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.timeout)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    class _Txn:
        def __init__(self, store: EmbeddedStore) -> None:
            self.store = store
            self.db = store._db()

        def __enter__(self) -> sqlite3.Connection:
            self.store._local.touched = []  # the keys this transaction changes (_bump)
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self.changes = self.db.total_changes
            except sqlite3.Error as err:
                # In WAL mode only writers wait for each other: the lock held past the
                # timeout is the embedded store's stall, and callers expect a StoreError.
                if getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                    raise StoreStalled(f"embedded store {self.store.path}: write lock held "
                                       f"elsewhere for {self.store.timeout:g}s") from err
                raise StoreUnavailable(f"embedded store {self.store.path}: {err}") from err
            return self.db

        def __exit__(self, kind, value, tb) -> None:
            if kind:
                self.db.execute("ROLLBACK")
                return
            self.db.execute("COMMIT")
            if self.db.total_changes != self.changes:  # not a probe, nor a CAS that lost
                ring(self.store._doorbells, self.store._local.touched)

    def _write(self) -> _Txn:
        return self._Txn(self)

    def _bump(self, db: sqlite3.Connection, kind: str, key: str, value: bytes) -> int:
        (rev,) = db.execute("SELECT value + 1 FROM meta WHERE name='revision'").fetchone()
        db.execute("UPDATE meta SET value=? WHERE name='revision'", (rev,))
        db.execute("INSERT INTO log VALUES (?, ?, ?, ?)", (rev, kind, key, value))
        self._local.touched.append(key)
        if rev % min(1000, self.log_keep) == 0:
            db.execute("DELETE FROM log WHERE rev <= ?", (rev - self.log_keep,))
            db.execute("UPDATE meta SET value=max(value, ?) WHERE name='compacted'",
                       (rev - self.log_keep,))
        return rev

    def _reap(self, db: sqlite3.Connection) -> None:
        """Drop expired leases and their keys (inside a write transaction)."""
        now = time.time()
        for (lease,) in db.execute("SELECT id FROM leases WHERE expires < ?", (now,)).fetchall():
            self._revoke(db, lease)

    def _revoke(self, db: sqlite3.Connection, lease: int) -> None:
        keys = db.execute("SELECT key FROM kv WHERE lease=? ORDER BY key", (lease,)).fetchall()
        for (key,) in keys:
            db.execute("DELETE FROM kv WHERE key=?", (key,))
            self._bump(db, DELETE, key, b"")
        db.execute("DELETE FROM leases WHERE id=?", (lease,))

    def _reap_if_due(self) -> float | None:
        """Reap if a lease has expired; returns when the earliest lease expires(d) (wall
        clock, None: no lease)."""
        db = self._db()
        (due,) = db.execute("SELECT min(expires) FROM leases").fetchone()
        if due is not None and due < time.time():
            with self._write() as wdb:
                self._reap(wdb)
        return due

    # -- reads --------------------------------------------------------------------------

    @staticmethod
    def _kv(row) -> KeyValue:
        return KeyValue(row[0], bytes(row[1]), row[2], row[3], row[4])

    def get(self, key: str) -> KeyValue | None:
        self._reap_if_due()
        row = self._db().execute("SELECT * FROM kv WHERE key=?", (key,)).fetchone()
        return self._kv(row) if row else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._reap_if_due()
        db = self._db()
        db.execute("BEGIN")  # one snapshot for the rows and the revision
        try:
            rows = db.execute("SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                              (prefix, prefix_end(prefix))).fetchall()
            (rev,) = db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        finally:
            db.execute("COMMIT")
        return [self._kv(r) for r in rows], rev

    # -- writes -------------------------------------------------------------------------

    def _set(self, db: sqlite3.Connection, key: str, value: bytes, lease: int) -> int:
        if lease and not db.execute("SELECT 1 FROM leases WHERE id=?", (lease,)).fetchone():
            raise LeaseNotFound(f"lease {lease:x} not found")
        rev = self._bump(db, PUT, key, value)
        db.execute(
            "INSERT INTO kv VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "value=excluded.value, mod_rev=excluded.mod_rev, lease=excluded.lease",
            (key, value, rev, rev, lease))
        return rev

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        with self._write() as db:
            self._reap(db)
            return self._set(db, key, value, lease)

    def compare_and_swap(self, key: str, value: bytes, mod_revision: int,
                         lease: int = 0, guard: tuple[str, int] | None = None) -> bool:
        with self._write() as db:
            self._reap(db)
            for k, rev in [(key, mod_revision), *([guard] if guard else [])]:
                row = db.execute("SELECT mod_rev FROM kv WHERE key=?", (k,)).fetchone()
                if (row[0] if row else 0) != rev:
                    return False
            self._set(db, key, value, lease)
            return True

    def delete(self, key: str) -> bool:
        with self._write() as db:
            self._reap(db)
            if db.execute("DELETE FROM kv WHERE key=?", (key,)).rowcount == 0:
                return False
            self._bump(db, DELETE, key, b"")
            return True

    def compare_and_delete(self, key: str, mod_revision: int) -> bool:
        with self._write() as db:
            self._reap(db)
            if db.execute("DELETE FROM kv WHERE key=? AND mod_rev=?",
                          (key, mod_revision)).rowcount == 0:
                return False
            self._bump(db, DELETE, key, b"")
            return True

    # -- leases -------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        with self._write() as db:
            cur = db.execute("INSERT INTO leases (ttl, expires) VALUES (?, ?)",
                             (ttl, time.time() + ttl))
            return int(cur.lastrowid or 0)

    def keepalive(self, lease: int) -> int:
        with self._write() as db:
            self._reap(db)
            row = db.execute("SELECT ttl FROM leases WHERE id=?", (lease,)).fetchone()
            if row is None:
                raise LeaseNotFound(f"lease {lease:x} not found")
            db.execute("UPDATE leases SET expires=? WHERE id=?", (time.time() + row[0], lease))
            return int(row[0])

    def revoke(self, lease: int) -> None:
        with self._write() as db:
            self._revoke(db, lease)

    def probe(self) -> None:
        # Readers never wait in WAL mode, so a read proves nothing: take the write lock (as
        # every lease renewal must), read, and commit nothing.
        with self._write() as db:
            db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()

    # -- watch --------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> SqliteWatch:
        watch = SqliteWatch(self, prefix, start_revision)
        with self._watches_lock:
            self._watches.add(watch)
        return watch

    def _events_after(self, prefix: str, after: int) -> tuple[list[Event], int]:
        """Events past `after`, and the revision they are complete up to (one snapshot, so
        a commit between the two reads cannot be skipped)."""
        db = self._db()
        db.execute("BEGIN")
        try:
            (compacted,) = db.execute("SELECT value FROM meta WHERE name='compacted'").fetchone()
            if after < compacted:
                raise Compacted(compacted + 1)
            rows = db.execute(
                "SELECT rev, type, key, value FROM log WHERE rev > ? AND key >= ? AND key < ? "
                "ORDER BY rev", (after, prefix, prefix_end(prefix))).fetchall()
            (rev,) = db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        finally:
            db.execute("COMMIT")
        return [Event(t, k, bytes(v), r) for r, t, k, v in rows], rev

    def watch_check(self, prefix: str, after_revision: int) -> tuple[int, int]:
        (count, oldest) = self._db().execute(
            "SELECT count(*), min(CASE WHEN mod_rev > ? THEN mod_rev END) FROM kv "
            "WHERE key >= ? AND key < ?", (after_revision, prefix, prefix_end(prefix))).fetchone()
        return count, oldest or 0

    def close(self) -> None:
        self._closed.set()
        with self._watches_lock:
            watches = list(self._watches)
        for watch in watches:
            watch.cancel()
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class SqliteWatch:
    # It re-reads the log every few seconds unrung, and a local file has no partitions:
    # it cannot go silent while the store holds news, so informers need not check it.
    rereads = True

    def __init__(self, store: EmbeddedStore, prefix: str, start_revision: int) -> None:
        self.store, self.prefix, self.seen = store, prefix, start_revision - 1
        self._cancelled = threading.Event()
        self._doorbell: Doorbell | None = None

    def cancel(self) -> None:
        self._cancelled.set()
        doorbell = self._doorbell  # set before the iteration first looks at _cancelled
        if doorbell is not None:
            doorbell.stop()

    def __iter__(self) -> Iterator[Event]:
        try:
            # Bound before the first read: a commit that read does not show rings it.
            doorbell = self._doorbell = Doorbell(self.store._doorbells, self.prefix)
        except OSError as err:
            raise StoreUnavailable(f"embedded store {self.store.path}: no doorbell for a "
                                   f"watch: {err}") from err
        try:
            while not (self._cancelled.is_set() or self.store._closed.is_set()):
                try:
                    due = self.store._reap_if_due()
                    events, rev = self.store._events_after(self.prefix, self.seen)
                except sqlite3.Error as err:
                    raise StoreUnavailable(f"embedded store {self.store.path}: {err}") from err
                for event in events:
                    self.seen = event.revision
                    yield event
                self.seen = max(self.seen, rev)
                doorbell.wait(SAFETY_REREAD if due is None
                              else min(SAFETY_REREAD, max(0.0, due - time.time())))
        finally:
            doorbell.close()
