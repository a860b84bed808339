"""Whether the datastore answers, as status.json's `datastore` field says it: the one writer
of that field while the agent runs.

Once the store is open, one probe (Store.probe: what a write would need, writing nothing)
runs about every second on a thread and a connection of its own, so it never waits behind
the watch or the lease loop, nor they behind it. A probe not back within DEADLINE makes the
verdict `stalled` at once, but is not abandoned: no other probe is sent while it is
outstanding (a stalled store gets no pile of requests from us), and its answer, whenever it
comes, is the recovery.

Verdicts: `ok`; `stalled` (nothing came back in time: a frozen etcd, the embedded store's
write lock held elsewhere); `unreachable: <reason>` (the store said no: refused, reset, a
TLS alert, no quorum). Until the node has joined, a failed join shows as `error: <why>`,
since that is what keeps the node out of the cluster; only `stalled` goes over it, being
what the store is doing now rather than the last attempt's outcome.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable

from gingham.agent.status import StatusFile
from gingham.store.contract import StoreError, StoreStalled

log = logging.getLogger("gingham.agent.datastore")
INTERVAL = 1.0  # between the end of one probe and the start of the next
DEADLINE = 2.0  # a probe out longer than this is a stall
OK, STALLED, CONNECTING = "ok", "stalled", "connecting"
UNREACHABLE = "unreachable: "


def verdict(error: BaseException | None) -> str:
    """What one probe's outcome says about the store."""
    if error is None:
        return OK
    if isinstance(error, StoreStalled):
        return STALLED
    return f"{UNREACHABLE}{error}"


def overdue(current: str) -> str:
    """The verdict while a probe is past its deadline. A store already known to refuse is
    left as that: a refusal slow to come again (e.g. an ARP timeout) is no news."""
    return current if current.startswith(UNREACHABLE) else STALLED


def shown(current: str, join_error: str) -> str:
    """The `datastore` field, from the probe's verdict and the last join failure ("" once
    joined, or while no join has failed yet)."""
    if current == STALLED or not join_error:
        return current
    return f"error: {join_error}"


class DatastoreHealth:
    def __init__(self, status: StatusFile, interval: float = INTERVAL,
                 deadline: float = DEADLINE) -> None:
        self.status = status
        self.interval, self.deadline = interval, deadline
        self._current = CONNECTING
        self._join_error = ""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[str] = queue.SimpleQueue()

    def start(self, probe: Callable[[], None]) -> None:
        threading.Thread(target=self._prober, args=(probe,), name="datastore-probe",
                         daemon=True).start()
        threading.Thread(target=self._run, name="datastore-health", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self._requests.put(False)

    def join_failed(self, why: str) -> None:
        with self._lock:
            self._join_error = why
            self._publish()

    def joined(self) -> None:
        """The join just went through, which is an answer from the store."""
        with self._lock:
            self._join_error = ""
            self._set(OK)

    def _set(self, current: str) -> None:
        if current != self._current:
            if current == OK:
                log.info("datastore: ok")
            else:
                log.warning("datastore: %s", current if current != STALLED
                            else f"stalled (no answer within {self.deadline:g}s)")
            self._current = current
        self._publish()

    def _publish(self) -> None:
        self.status.update(datastore=shown(self._current, self._join_error))

    def _prober(self, probe: Callable[[], None]) -> None:
        """Runs the probes one at a time, always on this thread (its own connection)."""
        while self._requests.get():
            try:
                probe()
                self._results.put(OK)
            except StoreError as err:
                self._results.put(verdict(err))
            except Exception as err:  # a fault in the probe must not end the probing
                log.exception("datastore probe failed")
                self._results.put(verdict(err))

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._requests.put(True)
            outcome = self._outcome(time.monotonic() + self.deadline)
            if outcome is None and not self._stopping.is_set():
                # Past the deadline: stalled until this probe comes back.
                with self._lock:
                    self._set(overdue(self._current))
                outcome = self._outcome(math.inf)
            if outcome is None:
                return  # stopping
            with self._lock:
                self._set(outcome)
            self._stopping.wait(self.interval)

    def _outcome(self, until: float) -> str | None:
        """The outstanding probe's verdict; None if `until` passes first or on stopping."""
        while not self._stopping.is_set():
            wait = min(0.5, until - time.monotonic())
            if wait <= 0:
                return None
            try:
                return self._results.get(timeout=wait)
            except queue.Empty:
                continue
        return None
