"""Doorbells: how a commit to the embedded store wakes the watchers of every process sharing
the file, so that they sleep instead of polling.

A watch, while it iterates, owns a unix datagram socket bound in a directory beside the
database (`store.db-doorbells/`). A writer whose commit changed anything then sends one
byte to every socket there, never blocking: a full queue already means "read the log", and
one read after a wake covers every commit before it, so a burst costs a watcher a few
reads. The writer rings after COMMIT has returned, so a woken watcher sees the change; a
watcher binds before its first read, so a commit it has not read rings it. Pathname
sockets are filesystem objects: they reach watchers in other network namespaces of the
host, as the file does.

A doorbell's name carries the prefix its watch reads (hex, after the last '-'), so a
writer rings only the watches whose prefix one of its keys falls under: a pod's address
written to a block does not wake every agent's pool and node watches. A name without one
(a prefix too long for a file name) is rung for every commit.

A socket file whose socket is gone (its watcher was killed) refuses the ring; the writer
removes it once it is older than STALE_AFTER, since a socket being bound refuses for an
instant too. Socket addresses hold at most 107 bytes, so sockets are addressed through a
descriptor of the directory (/proc/self/fd/N/NAME), however long the database's path is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

STALE_AFTER = 10.0  # s: a refusing socket file younger than this may be mid-bind
RING = b"\x01"
MAX_PREFIX_HEX = 200  # a file name holds 255 bytes: pid, token and this much of a prefix


def doorbell_dir(db: Path) -> Path:
    return db.with_name(db.name + "-doorbells")


@contextlib.contextmanager
def _opened(directory: Path) -> Iterator[int]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _address(fd: int, name: str) -> str:
    return f"/proc/self/fd/{fd}/{name}"


def _watched_prefix(name: str) -> str | None:
    """The prefix a doorbell's watch reads, None if its name does not say."""
    parts = name.split("-")
    if len(parts) < 3:
        return None
    try:
        return bytes.fromhex(parts[-1]).decode()
    except ValueError:
        return None


def ring(directory: Path, keys: list[str]) -> None:
    """Ring, once, every doorbell in `directory` whose watch reads one of `keys` (after a
    commit that changed them; returns at once). Never raises: the commit is done, and a
    watcher nobody rang re-reads soon anyway."""
    try:
        with _opened(directory) as fd, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.setblocking(False)
            for name in os.listdir(fd):
                prefix = _watched_prefix(name)
                if prefix is not None and not any(k.startswith(prefix) for k in keys):
                    continue
                try:
                    out.sendto(RING, _address(fd, name))
                except ConnectionRefusedError:
                    _remove_if_stale(fd, name)
                except OSError:
                    pass  # a full queue is rung already; gone since listed; not a socket
    except OSError:
        return  # none yet (nobody has watched), or unusable: watches fail on it


def _remove_if_stale(fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        if time.time() - os.stat(name, dir_fd=fd).st_mtime > STALE_AFTER:
            os.unlink(name, dir_fd=fd)


class Doorbell:
    """One watch's doorbell: `wait` sleeps until a writer rings it, `stop` ends the waiting
    from any thread, `close` removes it."""

    def __init__(self, directory: Path, prefix: str = "") -> None:
        directory.mkdir(exist_ok=True)
        watched = prefix.encode().hex()
        self.path = directory / (f"{os.getpid()}-{secrets.token_hex(4)}"
                                 + (f"-{watched}" if 0 < len(watched) <= MAX_PREFIX_HEX
                                    else ""))
        self._lock = threading.Lock()  # stop() on other threads vs close()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with _opened(directory) as fd:
                self._sock.bind(_address(fd, self.path.name))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)

    def wait(self, timeout: float) -> None:
        """Until rung (rings queued since the last wait count), stopped, or `timeout`
        seconds; takes every queued ring, so a burst wakes it once."""
        self._poll.poll(timeout * 1000)
        while True:
            try:
                if not self._sock.recv(64):
                    return  # stopped: every later wait returns at once too
            except BlockingIOError:
                return

    def stop(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # closed already: nothing waits
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
