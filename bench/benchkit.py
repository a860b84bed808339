"""What the benchmarks share: their error, their log, and labs torn down whatever happens
(Ctrl-C and SIGTERM too), but never a lab that was there before them."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from gingham.lab import cluster
from gingham.lab.plan import LabPlan, PlanError, check_lab_name
from gingham.lab.state import LabFiles

T = TypeVar("T")


class BenchError(RuntimeError):
    pass


class LabTaken(BenchError):
    """A lab of that name exists already: someone else's, never torn down."""


def lab_name(prefix: str) -> str:
    """A fresh lab name: `prefix` (up to 4 letters/digits) and 6 random hex digits."""
    return prefix + secrets.token_hex(3)


def add_lab_prefix(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--lab-prefix", default=default,
                        help=f"labs are named this (1-4 letters/digits) + 6 hex "
                             f"(default {default})")


def ready_to_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What every lab-building bench checks before it builds anything (a usable
    --lab-prefix, root); from here on SIGTERM takes Ctrl-C's path."""
    try:
        check_lab_name(lab_name(args.lab_prefix))
    except PlanError:
        parser.error("--lab-prefix takes 1-4 lowercase letters/digits, starting with a letter")
    if os.geteuid() != 0:
        parser.error("needs root: it builds network namespaces")
    sigterm_as_interrupt()


def run_all(runs: Iterable[Callable[[], T]], report: Callable[[list[T]], bool]) -> int:
    """Each measurement in turn, then the report of those that finished, even when a later
    one failed or was interrupted. The exit code: 0 every target met, 2 one missed, 1 a
    measurement failed, 130 interrupted."""
    results: list[T] = []
    code = None
    try:
        for run in runs:
            results.append(run())
    except (BenchError, cluster.LabError) as err:
        print(f"bench failed: {err}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    met = report(results) if results else False
    return code if code is not None else 0 if met else 2


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
