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


def ring_all(directory: Path) -> None:
    """Ring every doorbell in `directory` once (after a commit; returns at once). Never
    raises: the commit is done, and a watcher nobody rang re-reads soon anyway."""
    try:
        with _opened(directory) as fd, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.setblocking(False)
            for name in os.listdir(fd):
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

    def __init__(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        self.path = directory / f"{os.getpid()}-{secrets.token_hex(4)}"
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
