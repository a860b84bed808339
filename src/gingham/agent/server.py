"""The agent's unix socket: one connection per plugin exec, served by a worker pool.

Workers keep their netlink handles between calls (see CniService.node), so the pool is
fixed-size rather than a thread per connection.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gingham.agent.cni_service import CniService
from gingham.cni.spec import INTERNAL, CniError
from gingham.cni.wire import WireError, decode_request, encode_reply

log = logging.getLogger("gingham.agent.server")
MAX_REQUEST = 16 << 20


class PluginServer:
    def __init__(self, path: Path, service: CniService, workers: int) -> None:
        self.path = path
        self.service = service
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni")
        self.sock: socket.socket | None = None
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
        assert self.sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            self.pool.submit(self._serve, conn)

    def stop(self) -> None:
        self._stopping.set()
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        self.path.unlink(missing_ok=True)
        self.pool.shutdown(wait=True, cancel_futures=False)

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
