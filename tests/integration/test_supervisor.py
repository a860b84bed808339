"""The lab's agent supervisor on its own: restarts with a growing pause, restarts on
request at once, stops its child and leaves nothing running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gingham.lab import procs


def state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def until(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def supervise(tmp_path: Path, *argv: str) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / "supervisor.json"
    proc = subprocess.Popen([sys.executable, "-m", "gingham.lab.supervisor", str(path), "--",
                             *argv])
    until(lambda: state(path))  # a child that fails at once is gone again within ms
    return proc, path


def test_a_failing_child_is_restarted_with_a_doubling_pause(tmp_path):
    proc, path = supervise(tmp_path, "/bin/sh", "-c", "exit 3")
    try:
        time.sleep(2.5)  # pauses 0.2 + 0.4 + 0.8 + 1.6: three by now, unless the box is slow
        got = state(path)
        assert 2 <= got["restarts"] <= 4, got  # at a steady 0.2 s it would be ~12
        assert got["lastExit"] == "exited with code 3"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_sighup_restarts_at_once_and_sigterm_stops_the_child_first(tmp_path):
    proc, path = supervise(tmp_path, "/bin/sleep", "60")
    first = until(lambda: state(path).get("agentPid"))
    try:
        os.kill(first, signal.SIGKILL)  # a crash: restarted after the first pause
        second = until(lambda: (p := state(path).get("agentPid")) not in (None, first) and p)
        assert state(path)["lastExit"] == "killed by SIGKILL"
        started = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        third = until(lambda: (p := state(path).get("agentPid")) not in (None, second) and p)
        assert time.monotonic() - started < 1.0
        assert not procs.is_alive(second)
        got = state(path)
        assert (got["restarts"], got["exits"]) == (2, 2)
        assert got["lastExit"] == "restarted on purpose (killed by SIGTERM)"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not procs.is_alive(third)
    assert state(path)["agentPid"] is None


def test_usage_error():
    done = subprocess.run([sys.executable, "-m", "gingham.lab.supervisor", "x.json"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
