"""The CNI service's side of the workload objects: a pod is recorded on ADD and removed on
DEL. A call never waits for it: the datastore write is the recorder thread's, after the
answer (an ADD is a runtime's critical path, and Flannel mode serves pods while the
datastore is down). What could not be written is kept, in order, and written as soon as
the datastore answers again; nothing is lost, and the latest word on a pod wins."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from gingham.store.contract import StoreError
from gingham.workloads.store import WorkloadStore

log = logging.getLogger("gingham.workloads.recorder")
RETRY = 2.0


class WorkloadRecorder:
    def __init__(self, workloads: WorkloadStore, node: str) -> None:
        self.workloads = workloads
        self.node = node
        self._pending: OrderedDict[tuple[str, str], Callable[[], None]] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._retry_loop, name="workload-recorder",
                                        daemon=True)
        self._thread.start()

    def added(self, namespace: str, name: str, ip: str, container_id: str) -> None:
        self._write((namespace, name), lambda: self.workloads.attach(
            namespace, name, self.node, ip, container_id))

    def deleted(self, namespace: str, name: str, container_id: str) -> None:
        self._write((namespace, name),
                    lambda: self.workloads.detach(namespace, name, container_id))

    def _write(self, pod: tuple[str, str], write: Callable[[], None]) -> None:
        with self._lock:
            self._pending.pop(pod, None)  # an older word that still waits: this one wins
            self._pending[pod] = write
        self._wake.set()

    def _retry_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(RETRY)
            self._wake.clear()
            while not self._stopping.is_set():
                with self._lock:
                    if not self._pending:
                        break
                    pod, write = next(iter(self._pending.items()))
                try:
                    write()
                except (StoreError, RuntimeError) as err:
                    log.warning("pod %s/%s not recorded yet (%s); retrying", *pod, err)
                    self._stopping.wait(RETRY)
                    continue
                with self._lock:
                    if self._pending.get(pod) is write:
                        del self._pending[pod]

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending (or `timeout`); whether all was written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.flush(2.0)  # a stopping agent writes what it can first
        self._stopping.set()
        self._wake.set()
        self._thread.join(5)
