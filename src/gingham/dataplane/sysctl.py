"""Per-namespace sysctls. /proc/sys/net follows the writing thread's namespace."""

from __future__ import annotations

from pathlib import Path


def ensure(key: str, value: str) -> bool:
    """Set `key` (dotted) to `value` unless it already is; True if it changed."""
    path = Path("/proc/sys") / key.replace(".", "/")
    if path.read_text().strip() == value:
        return False
    path.write_text(value)
    return True
