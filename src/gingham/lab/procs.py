"""Processes inside a lab's namespaces: start them there, find them, stop them by PID.

A child inherits the namespace of the thread that forks it, so running a command "in" a
namespace is: step this thread in, spawn, step back. No `ip netns exec` mount games.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from gingham.dataplane import netns

NETNS_DIR = Path("/run/netns")
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def add_netns(name: str) -> None:
    """`ip netns add`, from this (root) mount namespace, so the name is visible to all."""
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"could not create namespace {name}: {proc.stderr.strip()}")


def run_in(ns: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    with netns.entered(netns_path(ns)):
        return subprocess.run(argv, **kwargs)


def popen_in(ns: str, argv: list[str], **kwargs) -> subprocess.Popen:
    with netns.entered(netns_path(ns)):
        return subprocess.Popen(argv, **kwargs)


class ExecFailed(RuntimeError):
    pass


def exec_in(ns: str, argv: list[str]) -> None:
    """Replace this (single-threaded) process with `argv` inside the namespace."""
    try:
        fd = netns.open_netns(netns_path(ns))
    except netns.NetnsNotFound:
        raise ExecFailed(f"namespace {ns} does not exist (was it removed behind the lab's "
                         "back? `gingham lab down` cleans up)") from None
    netns.setns(fd)
    # Python ignores SIGPIPE and SIGXFSZ, and an exec keeps ignored signals ignored: give the
    # command the defaults, as subprocess does for its children (restore_signals), or
    # `gingham lab exec node1 -- yes | head -1` makes `yes` complain of a broken pipe.
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in RESTORED_SIGNALS}
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # Bare OSError text ("[Errno 2] No such file or directory") would not name the command.
        raise ExecFailed(f"cannot run {argv[0]!r} in {ns}: {err.strerror}") from None


def list_netns(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def pids_in_netns(ns: str) -> list[int]:
    """Every process whose network namespace is `ns` (what `ip netns pids` prints)."""
    try:
        target = os.stat(netns_path(ns))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry.name))
    return found


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still "exists"; it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def stop_pids(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL what is left."""
    alive = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [p for p in alive if is_alive(p)]
        if not alive:
            break
    for pid in pids:  # reap those that were our own children
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
