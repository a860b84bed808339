"""What the benchmarks share: their error, their log, and labs torn down whatever happens
(Ctrl-C and SIGTERM too), but never a lab that was there before them."""

from __future__ import annotations

import contextlib
import secrets
import signal
import sys
import time
from collections.abc import Iterator

from gingham.lab import cluster
from gingham.lab.plan import LabPlan
from gingham.lab.state import LabFiles


class BenchError(RuntimeError):
    pass


class LabTaken(BenchError):
    """A lab of that name exists already: someone else's, never torn down."""


def lab_name(prefix: str) -> str:
    """A fresh lab name: `prefix` (up to 4 letters/digits) and 6 random hex digits."""
    return prefix + secrets.token_hex(3)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """SIGTERM takes Ctrl-C's path, so every teardown in a `finally` runs."""
    signal.signal(signal.SIGTERM, _interrupt)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM for a teardown: a second one must not cut it short."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


@contextlib.contextmanager
def bench_lab(plan: LabPlan) -> Iterator[tuple[LabFiles, float]]:
    """The running lab and the seconds `up` took; torn down afterwards, whatever happens."""
    files = LabFiles(plan.name)
    ours = True
    try:
        started = time.monotonic()
        try:
            cluster.up(plan, files)
        except cluster.LabExists as err:
            ours = False
            raise LabTaken(str(err)) from None
        yield files, time.monotonic() - started
    finally:
        if ours:
            with shielded():
                try:
                    cluster.down(plan.name, files)
                except Exception as err:  # report; `gingham lab down --name` can retry
                    log(f"teardown of lab {plan.name} failed: {err}")
