"""The lab's agents as processes: their PIDs, the CPU they used, their memory."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from gingham.lab import cluster
from gingham.lab.state import LabFiles

CPU_TICK = os.sysconf("SC_CLK_TCK")


def agent_pids(files: LabFiles) -> list[int]:
    """The agents themselves (not their supervisors, which sleep in the kernel)."""
    return sorted(cluster.supervisor_state(files, node)["agentPid"]
                  for node in files.load().supervisors)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used, all threads included."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CPU_TICK


def memory_mib(pids: list[int]) -> tuple[float, float]:
    """Sum of RSS and of PSS (shared pages split among their sharers), in MiB."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def resident_mib(pid: int) -> tuple[float, float]:
    """One process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MiB;
    zeros if it is gone."""
    found = {"VmRSS": 0.0, "VmHWM": 0.0}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in found:
                found[key] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]
