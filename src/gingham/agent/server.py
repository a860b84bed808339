"""The agent's unix socket: one connection per plugin exec, served by a fixed set of workers.

Each worker thread accepts and answers calls itself, so a call never waits on a hand-off
between threads (a pool fed by one accepting thread costs a wake-up per call), and keeps its
netlink handles between calls (see CniService.node). The kernel gives each connection to
one of the workers blocked in accept.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from gingham.agent.cni_service import CniService
from gingham.cni.spec import INTERNAL, CniError
from gingham.cni.wire import WireError, decode_request, encode_reply

log = logging.getLogger("gingham.agent.server")
MAX_REQUEST = 16 << 20
ACCEPT_RETRY = 0.1  # seconds, after accept fails for want of fds or memory


class PluginServer:
    def __init__(self, path: Path, service: CniService, workers: int) -> None:
        self.path = path
        self.service = service
        self.workers = max(1, workers)
        self.sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def bind(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a stale socket from a crashed agent
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(256)
        self.sock = sock

    def serve_forever(self) -> None:
        """Serve until stop(); the calling thread only waits (signals reach it there)."""
        assert self.sock is not None
        self._threads = [threading.Thread(target=self._work, name=f"cni-{i}", daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        self._stopping.wait()

    def stop(self) -> None:
        self._stopping.set()
        if self.sock is not None:
            # Wakes every worker blocked in accept (EINVAL); a worker mid-call finishes it.
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        self.path.unlink(missing_ok=True)
        for thread in self._threads:
            thread.join()
        self.service.close()

    def _work(self) -> None:
        assert self.sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError as err:
                if self._stopping.is_set():
                    return
                # EMFILE, ENOBUFS, ECONNABORTED...: transient; a worker must not die of it.
                log.warning("accept failed: %s", err)
                time.sleep(ACCEPT_RETRY)
                continue
            try:
                self._serve(conn)
            except WireError as err:  # too large: dropped unanswered, the shim says so
                log.warning("dropped a plugin call: %s", err)
            except Exception:
                log.exception("a plugin call failed outside the CNI service")

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = self._read_all(conn)
            if not data:
                return  # a readiness probe: connected, sent nothing
            try:
                status, body = self.service.handle(decode_request(data))
            except WireError as err:
                status, body = 1, CniError(INTERNAL, "malformed plugin request",
                                           str(err)).to_json().encode()
            try:
                conn.sendall(encode_reply(status, body))
            except OSError as err:  # the plugin was killed while we worked
                log.warning("could not answer a plugin call: %s", err)

    @staticmethod
    def _read_all(conn: socket.socket) -> bytes:
        chunks, size = [], 0
        while chunk := conn.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REQUEST:
                raise WireError("request too large")
        return b"".join(chunks)
