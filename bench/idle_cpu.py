"""Idle CPU: what a lab's agents cost with nothing changing.

For each datastore a host-gw lab is built and left to settle (full mesh, then a pause for
the last start-up work); then every agent's user + system CPU (all threads, from
/proc/PID/stat) is read before and after a quiet window. What an idle agent still does:
the datastore health probe (one write-lock-taking probe a second), its watch waiting for
changes, and a lease renewal an hour before the lease's 24 h end (none in the window).

Target: at most 5% of one core for all agents of a 50-node lab on the embedded store.
etcd is measured alongside for comparison (no target). Exit 0 met, 2 missed, 1 failed.

    .venv/bin/python bench/idle_cpu.py [--nodes 50] [--seconds 30] [--settle 10]
                                       [--datastores embedded,etcd] [--lab-prefix idle]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

from agentstat import cpu_seconds
from benchkit import BenchError, bench_lab, csv_list, lab_name, log, ready_to_run, run_all
from convergence import wait_for_mesh
from gingham.lab import cluster
from gingham.lab.plan import LabPlan
from gingham.lab.state import LabFiles

TARGET_PCT = 5.0  # of one core, all agents together
TARGET_NODES = 50
TARGET_DATASTORE = "embedded"


@dataclass
class Result:
    datastore: str
    nodes: int
    seconds: float
    per_agent: dict[str, float] = field(default_factory=dict)  # node -> % of one core

    @property
    def total(self) -> float:
        return sum(self.per_agent.values())

    @property
    def judged(self) -> bool:
        return self.datastore == TARGET_DATASTORE and self.nodes >= TARGET_NODES


def agents_by_node(files: LabFiles) -> dict[str, int]:
    """Node -> its agent's PID (the agent itself, not the supervisor sleeping over it)."""
    return {node: cluster.supervisor_state(files, node)["agentPid"]
            for node in files.load().supervisors}


def measure(datastore: str, nodes: int, seconds: float, settle: float,
            prefix: str) -> Result:
    name = lab_name(prefix)
    log(f"{datastore}/{nodes}: building lab {name}")
    plan = LabPlan.single_segment(name, nodes, datastore=datastore, backend="host-gw")
    with bench_lab(plan) as (files, build_s):
        wait_for_mesh(name, [f"node{k}" for k in range(1, nodes + 1)])
        log(f"{datastore}/{nodes}: up in {build_s:.0f}s; settling {settle:.0f}s, "
            f"then measuring {seconds:.0f}s")
        time.sleep(settle)
        pids = agents_by_node(files)
        before = {node: cpu_seconds([pid]) for node, pid in pids.items()}
        started = time.monotonic()
        time.sleep(seconds)
        after = {node: cpu_seconds([pid]) for node, pid in pids.items()}
        took = time.monotonic() - started
        gone = [node for node, pid in pids.items() if not os.path.exists(f"/proc/{pid}")]
        if gone:
            raise BenchError(f"agents exited during the measurement: {', '.join(gone)}")
        log(f"{datastore}/{nodes}: measured; tearing down")
    per_agent = {node: (after[node] - before[node]) / took * 100 for node in pids}
    return Result(datastore, nodes, took, per_agent)


def report(results: list[Result]) -> bool:
    met = True
    for r in results:
        print(f"\nIdle agents, {r.datastore}, {r.nodes} nodes, {r.seconds:.0f}s "
              f"(% of one core)")
        nodes = sorted(r.per_agent, key=lambda n: int(n.removeprefix("node")))
        for i in range(0, len(nodes), 5):
            print("  ".join(f"{n:>7} {r.per_agent[n]:5.2f}" for n in nodes[i:i + 5]))
        pcts = list(r.per_agent.values())
        print(f"per agent: median {statistics.median(pcts):.2f}, max {max(pcts):.2f}; "
              f"total {r.total:.1f}% of one core")
        if r.judged and r.total > TARGET_PCT:
            met = False
    judged = [r for r in results if r.judged]
    target = f"target: {TARGET_NODES} idle agents on {TARGET_DATASTORE} <= {TARGET_PCT:g}%"
    if not judged:
        print(f"\n{target}: not measured")
        return False
    print(f"\n{target}: {'met' if met else 'MISSED'} "
          f"({', '.join(f'{r.total:.1f}%' for r in judged)})")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=TARGET_NODES,
                        help=f"lab size (default {TARGET_NODES})")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="measurement window (default 30)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="pause after the full mesh, before measuring (default 10)")
    parser.add_argument("--datastores", default="embedded,etcd",
                        help="datastores (default embedded,etcd)")
    parser.add_argument("--lab-prefix", default="idle",
                        help="labs are named this (1-4 letters/digits) + 6 hex (default idle)")
    args = parser.parse_args()
    datastores = csv_list(args.datastores)
    if not 1 <= args.nodes <= 199 or args.seconds <= 0 or args.settle < 0:
        parser.error("--nodes between 1 and 199, --seconds above 0, --settle not negative")
    if not datastores or set(datastores) - {"embedded", "etcd"}:
        parser.error("--datastores takes embedded and/or etcd")
    ready_to_run(parser, args)
    return run_all((functools.partial(measure, datastore, args.nodes, args.seconds,
                                      args.settle, args.lab_prefix)
                    for datastore in datastores), report)


if __name__ == "__main__":
    sys.exit(main())
