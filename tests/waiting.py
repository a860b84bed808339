"""Waiting in integration tests for what the agents do asynchronously."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(check: Callable[[], object], timeout: float = 10.0,
               every: float = 0.1) -> bool:
    """Whether `check()` comes true within `timeout` seconds (looked at every `every`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return bool(check())
