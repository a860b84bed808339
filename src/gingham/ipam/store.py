"""Reservations on disk, one file per address, in a directory per pool.

The layout follows host-local (`<dir>/<pool>/<ip>` holding the owner, plus
`last_reserved_ip`), so state survives agent restarts and is readable with `cat`.
One agent owns a directory; an flock still guards it against a second writer.

Creating a file costs ~0.3 ms on this machine's ext4 (allocating the inode), a third of an
agent's ADD; linking a name to an existing one ~15 us. So each pool keeps a few empty spare
files in its `.spares/` (made off the call's path by `add_spares`; a directory of their own,
so making them leaves the pool's mtime, and so the cache, alone), and a reservation fills
one and links it under the address's name: link() fails on an existing name as O_EXCL would.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LAST_RESERVED = "last_reserved_ip"
LOCK = "lock"
SPARE_DIR = ".spares"
SPARES = 4  # kept ready per pool: a burst of ADDs beyond it creates files on the call's path


@dataclass(frozen=True)
class Owner:
    container_id: str
    ifname: str
    network: str

    def encode(self) -> bytes:
        return f"{self.container_id}\n{self.ifname}\n{self.network}\n".encode()

    @classmethod
    def decode(cls, data: bytes) -> Owner:
        cid, ifname, network, *_ = [*data.decode().split("\n"), "", "", ""]
        return cls(cid, ifname, network)

    def same_attachment(self, container_id: str, ifname: str) -> bool:
        return self.container_id == container_id and self.ifname == ifname


class PoolDirectory:
    """The reservations of one pool; use `locked()` around every read-modify-write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._cache: dict[ipaddress.IPv4Address, Owner] | None = None
        self._cache_mtime = 0
        # The last_reserved_ip hint as last read or written; forgotten with the cache.
        self._last: ipaddress.IPv4Address | None = None
        self._last_known = False
        self._spares: set[str] | None = None  # names in SPARE_DIR, under _thread_lock
        self._lock_fd: int | None = None

    @contextmanager
    def locked(self) -> Iterator[PoolDirectory]:
        with self._thread_lock:
            if self._lock_fd is None:  # kept open: a mkdir and an open per call were ~0.1 ms
                self.path.mkdir(parents=True, exist_ok=True)
                self._lock_fd = os.open(self.path / LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC,
                                        0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._thread_lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def reservations(self) -> dict[ipaddress.IPv4Address, Owner]:
        mtime = os.stat(self.path).st_mtime_ns
        if self._cache is None or mtime != self._cache_mtime:
            self._cache = {}
            for entry in os.scandir(self.path):
                try:
                    address = ipaddress.IPv4Address(entry.name)
                except ValueError:
                    continue
                self._cache[address] = Owner.decode(Path(entry.path).read_bytes())
            self._cache_mtime = mtime
            self._last_known = False
        return self._cache

    def reserve(self, address: ipaddress.IPv4Address, owner: Owner) -> bool:
        """Create the address's file, holding its owner; False if it exists already."""
        target, data = self.path / str(address), owner.encode()
        done = None
        while done is None and self._spares:
            spare = self._spares.pop()
            done = self._reserve_by_spare(spare, target, data)
            if done is False:
                self._spares.add(spare)  # linked to nothing: kept for the next address
        if done is None:
            try:
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        elif not done:
            return False
        self._write_last(address)
        self._remember(address, owner)
        return True

    def _reserve_by_spare(self, spare: str, target: Path, data: bytes) -> bool | None:
        """Fill a spare with data and link it as target: True; False if target exists;
        None if the spare is gone or unusable."""
        path = self.path / SPARE_DIR / spare
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # used by another writer of this directory
            return None
        try:
            info = os.fstat(fd)
            if info.st_nlink != 1:
                # Still also a reservation's name (a crash between link and unlink below):
                # writing it would change that reservation.
                path.unlink()
                return None
            os.pwrite(fd, data, 0)
            if info.st_size > len(data):  # never to 0: that makes ext4 flush at close
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        try:
            os.link(path, target)
        except FileExistsError:
            return False
        path.unlink()
        return True

    def add_spares(self) -> None:
        """Make spare files up to SPARES; without the pool's lock (their names are new)."""
        spare_dir = self.path / SPARE_DIR
        spare_dir.mkdir(exist_ok=True)  # not parents: never remake a pool removed meanwhile
        with self._thread_lock:
            if self._spares is None:  # first time: adopt those an earlier agent left
                self._spares = set(os.listdir(spare_dir))
            missing = SPARES - len(self._spares)
        for _ in range(missing):
            name = secrets.token_hex(4)
            os.close(os.open(spare_dir / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            with self._thread_lock:
                self._spares.add(name)

    def release(self, address: ipaddress.IPv4Address) -> None:
        (self.path / str(address)).unlink(missing_ok=True)
        self._remember(address, None)

    def last_reserved(self) -> ipaddress.IPv4Address | None:
        self.reservations()  # another writer's changes show in the directory's mtime
        if not self._last_known:
            try:
                self._last = ipaddress.IPv4Address(
                    (self.path / LAST_RESERVED).read_text().strip())
            except (FileNotFoundError, ValueError):
                self._last = None
            self._last_known = True
        return self._last

    def _write_last(self, address: ipaddress.IPv4Address) -> None:
        # Written in place, not replaced by rename: a rename makes ext4 flush the new file
        # early (~0.35 ms per ADD). The file is only a hint for where to search next, and
        # last_reserved() reads a torn write as "no hint".
        fd = os.open(self.path / LAST_RESERVED, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, str(address).encode().ljust(15), 0)
        finally:
            os.close(fd)
        self._last, self._last_known = address, True

    def _remember(self, address: ipaddress.IPv4Address, owner: Owner | None) -> None:
        # We hold the lock, so the only change since the cache was read is our own.
        if self._cache is not None:
            if owner is None:
                self._cache.pop(address, None)
            else:
                self._cache[address] = owner
        self._cache_mtime = os.stat(self.path).st_mtime_ns
