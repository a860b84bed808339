"""Installing the plugin executables: the shim, headed by the venv's interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

PLUGIN_NAMES = ("gingham", "gingham-ipam")
SHIM_SOURCE = Path(__file__).with_name("shim.py")


def install_plugins(bin_dir: Path, python: str = sys.executable) -> list[Path]:
    """Write `gingham` and `gingham-ipam` into bin_dir, atomically (a runtime may be
    exec'ing the old ones)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    # -I: ignore the caller's PYTHON* variables and user site; -S: skip site, ~halves start.
    body = f"#!{python} -IS\n" + SHIM_SOURCE.read_text()
    written = []
    for name in PLUGIN_NAMES:
        target = bin_dir / name
        tmp = bin_dir / f".{name}.tmp"
        tmp.write_text(body)
        tmp.chmod(0o755)
        tmp.replace(target)
        written.append(target)
    return written
