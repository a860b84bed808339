"""What every datastore backend offers: etcd v3's model, cut to what Gingham needs.

Keys are strings, values bytes. Every change bumps one store-wide revision; each key
remembers the revision that created it and the one that last modified it. Compare-and-swap
is on the modification revision (0 meaning "absent"). Leases expire after a TTL unless
kept alive, and take their keys with them. A watch streams every change under a prefix
from a given revision on, so a watcher that resumes at last-seen + 1 misses nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

PUT = "PUT"
DELETE = "DELETE"


class StoreError(RuntimeError):
    """A request the store understood and refused, or an answer that makes no sense."""


class StoreUnavailable(StoreError):
    """No endpoint answered (down, unreachable, wrong credentials)."""


class StoreStalled(StoreUnavailable):
    """Reached, but nothing came back in time: a frozen etcd, a write lock held elsewhere."""


class LeaseNotFound(StoreError):
    """The lease expired or was revoked."""


class Compacted(StoreError):
    """The watch's start revision is older than the store keeps history for."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    type: str  # PUT or DELETE
    key: str
    value: bytes  # empty for DELETE
    revision: int  # the revision of this change


class Watch(Protocol):
    # True when the watch itself re-reads the store on a timer (the embedded store's), so
    # it cannot go silent while the store holds news; etcd's can (see sync.informer).
    rereads: bool

    def __iter__(self) -> Iterator[Event]: ...

    def cancel(self) -> None:
        """End the iteration, from any thread."""
        ...


class Store(Protocol):
    def get(self, key: str) -> KeyValue | None: ...

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under prefix, sorted, and the store revision they were read at."""
        ...

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write unconditionally; returns the new revision."""
        ...

    def delete(self, key: str) -> bool: ...

    def compare_and_swap(self, key: str, value: bytes, mod_revision: int,
                         lease: int = 0, guard: tuple[str, int] | None = None) -> bool:
        """Write only if the key's modification revision is `mod_revision` (0: absent),
        and, with `guard` (key, revision), only if that key's is too (in one transaction)."""
        ...

    def compare_and_delete(self, key: str, mod_revision: int) -> bool: ...

    def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; returns its ID."""
        ...

    def keepalive(self, lease: int) -> int:
        """Renew the lease to its full TTL; returns the TTL. Raises LeaseNotFound."""
        ...

    def revoke(self, lease: int) -> None: ...

    def probe(self) -> None:
        """Return once the store would take a write now; writes nothing. Raises StoreStalled
        when it gave up waiting for an answer (after the store's own request timeout),
        StoreUnavailable when the store said no or cannot be reached."""
        ...

    def watch_check(self, prefix: str, after_revision: int) -> tuple[int, int]:
        """What a watch on prefix that has delivered everything up to after_revision
        should still deliver, read linearizably at one revision: the number of keys under
        prefix, and the lowest modification revision above after_revision among them (0:
        none). A watcher compares both with what it holds to tell a stalled watch."""
        ...

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Events under prefix from start_revision on. Iterating blocks; it ends when the
        watch is cancelled and raises StoreUnavailable on a disconnect, Compacted if
        start_revision is no longer kept."""
        ...

    def close(self) -> None: ...
