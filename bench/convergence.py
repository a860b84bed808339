"""Route convergence: a lease written to (or deleted from) the datastore → its host-gw route
present on (or gone from) every node.

For each datastore and lab size a lab is built, and a synthetic lease is written straight
through the registry for a fake node whose public IP is on the underlay (host-gw only needs
the next hop on-link; nothing is ever sent to it). Every node's routing table is watched
with a netlink route monitor opened inside its namespace, and the first RTM_NEWROUTE (then
RTM_DELROUTE) for the subnet is timestamped per node. Latency is per node, from just before
the datastore call to the kernel's notification; p50/p99/max are over all nodes of all
samples. The agents' CPU per change is what all agents used over the measured changes
(utime + stime), per change and per agent: flat in the lab's size when a change costs an
agent O(1) work, growing with it when every change makes every agent look at every lease.

Targets (2 cores): p99 < 250 ms at 50 nodes and < 500 ms at 100; CPU per change per agent
at 100 nodes at most 1.5x that at 10. Exit 0 when every target measured is met, 2 if not.

    .venv/bin/python bench/convergence.py [--samples 10] [--nodes 10,50,100]
                                          [--datastores embedded,etcd] [--lab-prefix conv]
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import sys
import time
from dataclasses import dataclass, field

from agentstat import agent_pids, cpu_seconds, memory_mib
from benchkit import (
    BenchError,
    add_lab_prefix,
    bench_lab,
    csv_list,
    lab_name,
    log,
    percentile,
    ready_to_run,
    run_all,
)
from gingham.dataplane import netns
from gingham.dataplane.routes import GINGHAM_PROTO, MAIN_TABLE
from gingham.lab import control, procs
from gingham.lab.plan import DEFAULT_POD_CIDR, LabPlan, netns_name
from gingham.lab.topology import FIRST_NODE_HOST
from gingham.subnet.lease import Lease, LeaseAttrs
from gingham.subnet.registry import SubnetRegistry
from kernelwatch import DEL, NEW, ROUTE, Change, Entry, KernelWatch

TARGET_P99_MS = {50: 250.0, 100: 500.0}  # lab size -> p99 target
CPU_SIZES = (10, 100)  # CPU per change per agent at the second at most CPU_RATIO x the first
CPU_RATIO = 1.5
# Fake nodes: subnets and underlay addresses no lab node can have (node k is
# 10.244.k.0/24 at 192.168.50.(10+k), so at most 189 nodes); .254 is the external host.
FAKE_BASE = 200
FAKE_COUNT = 50
MAX_NODES = FAKE_BASE - FIRST_NODE_HOST - 1
MESH_TIMEOUT = 120.0
SAMPLE_TIMEOUT = 20.0


# -- one configuration -------------------------------------------------------------------


def wait_for_mesh(lab: str, nodes: list[str], timeout: float = MESH_TIMEOUT) -> None:
    """Until every node routes to every other node's subnet: the lab is settled."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while True:
        still = []
        for node in pending:
            with netns.iproute(procs.netns_path(netns_name(lab, node))) as ipr:
                routes = ipr.get_routes(family=2, table=MAIN_TABLE, proto=GINGHAM_PROTO)
            if len(routes) < len(nodes) - 1:
                still.append(node)
        pending = still
        if not pending:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"routes to every other node missing on {', '.join(pending)} "
                             f"after {timeout:.0f}s")
        time.sleep(0.5)


@dataclass
class Result:
    datastore: str
    nodes: int
    build_s: float = 0.0
    mesh_s: float = 0.0
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    idle_cpu_pct: float = 0.0  # of one core, all agents together, with nothing changing
    sample_cpu_s: float = 0.0  # all agents, over the measured changes
    sample_s: float = 0.0  # how long the measured changes took, settling included
    changes: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"add": [], "del": []})
    # Per sample, the fastest node: the datastore's notification plus one agent's own
    # work, with no wait for a CPU; the rest of the spread is agents queueing for the CPUs.
    first: dict[str, list[float]] = field(default_factory=lambda: {"add": [], "del": []})
    missing: dict[str, int] = field(default_factory=lambda: {"add": 0, "del": 0})
    overruns: int = 0

    def cpu_ms_per_change(self, net_of_idle: bool = False) -> float:
        """Per agent and per change; `net_of_idle` leaves out what the agents would have
        used meanwhile with nothing changing (the embedded store's polling)."""
        if not self.changes:
            return 0.0
        cpu = self.sample_cpu_s
        if net_of_idle:
            cpu -= self.idle_cpu_pct / 100 * self.sample_s
        return cpu / self.changes / self.nodes * 1000


def fake_lease(i: int) -> tuple[ipaddress.IPv4Network, LeaseAttrs]:
    k = FAKE_BASE + i % FAKE_COUNT
    subnet = list(DEFAULT_POD_CIDR.subnets(new_prefix=24))[k]
    return subnet, LeaseAttrs(ipaddress.IPv4Address(f"192.168.50.{k}"), "host-gw", f"fake{k}")


def timed_change(monitor: KernelWatch, op: str, dst: ipaddress.IPv4Network, change,
                 result: Result, label: str, record: bool) -> None:
    expected = Change(op, Entry(ROUTE, str(dst)))
    monitor.expect([expected])
    t0 = time.monotonic()
    change()
    seen = monitor.wait([expected], SAMPLE_TIMEOUT)[expected]
    # The agents' follow-up work (masquerade set, status file) is part of the change's cost.
    time.sleep(0.3)
    if not record:
        return
    result.latencies[label] += [t - t0 for t in seen.values()]
    if seen:
        result.first[label].append(min(seen.values()) - t0)
    result.missing[label] += len(monitor.labels) - len(seen)
    result.changes += 1


def sample(registry: SubnetRegistry, monitor: KernelWatch, i: int, result: Result,
           record: bool, settle: float) -> None:
    subnet, attrs = fake_lease(i)
    written: list[Lease] = []

    def write() -> None:
        lease = registry.write_lease(subnet, attrs, 0, 0)
        if lease is None:
            raise BenchError(f"a lease for {subnet} already exists")
        written.append(lease)

    try:
        timed_change(monitor, NEW, subnet, write, result, "add", record)
        time.sleep(settle)
    finally:
        if written:
            timed_change(monitor, DEL, subnet, lambda: registry.delete_lease(written[0]),
                         result, "del", record)
    time.sleep(settle)


def run_config(datastore: str, nodes: int, samples: int, settle: float,
               lab_prefix: str) -> Result:
    result = Result(datastore, nodes)
    name = lab_name(lab_prefix)
    log(f"{datastore}/{nodes}: building lab {name}")
    with bench_lab(LabPlan.single_segment(name, nodes, datastore=datastore,
                                          backend="host-gw")) as (files, build_s):
        result.build_s = build_s
        node_names = [f"node{k}" for k in range(1, nodes + 1)]
        started = time.monotonic()
        wait_for_mesh(name, node_names)
        result.mesh_s = time.monotonic() - started
        pids = agent_pids(files)
        log(f"{datastore}/{nodes}: up in {build_s:.1f}s, full mesh {result.mesh_s:.1f}s later")
        time.sleep(1.0)  # the last agents' start-up work out of the idle measurement
        cpu0 = cpu_seconds(pids)
        time.sleep(3.0)
        result.idle_cpu_pct = (cpu_seconds(pids) - cpu0) / 3.0 * 100
        result.rss_mib, result.pss_mib = memory_mib(pids)
        monitor = KernelWatch({node: netns_name(name, node) for node in node_names})
        try:
            with control.lab_registry(files.load()) as registry:
                # One untimed round first: lazy imports and first-use caches in the agents.
                sample(registry, monitor, 0, result, record=False, settle=settle)
                cpu0, started = cpu_seconds(pids), time.monotonic()
                for i in range(1, samples + 1):
                    sample(registry, monitor, i, result, record=True, settle=settle)
                result.sample_cpu_s = cpu_seconds(pids) - cpu0
                result.sample_s = time.monotonic() - started
            result.overruns = monitor.overruns
        finally:
            monitor.close()
        log(f"{datastore}/{nodes}: measured; tearing down")
    return result


# -- report -------------------------------------------------------------------------------


def latency_verdict(r: Result) -> bool | None:
    """Whether the size's p99 target is met on adds and deletes (None: no target)."""
    target = TARGET_P99_MS.get(r.nodes)
    if target is None:
        return None
    return all(r.latencies[op] and percentile(r.latencies[op], 99) * 1000 < target
               and not r.missing[op] for op in ("add", "del"))


def cpu_ratios(results: list[Result]) -> dict[str, float]:
    """Datastore -> CPU per change per agent at CPU_SIZES[1] over that at CPU_SIZES[0]."""
    ratios = {}
    for datastore in dict.fromkeys(r.datastore for r in results):
        by_size = {r.nodes: r.cpu_ms_per_change() for r in results if r.datastore == datastore}
        small, big = (by_size.get(n) for n in CPU_SIZES)
        if small and big is not None:
            ratios[datastore] = big / small
    return ratios


def report(results: list[Result], samples: int, seconds: float) -> bool:
    print(f"\nRoute convergence (host-gw), {samples} samples per configuration, "
          f"{seconds:.0f}s total")
    print(f"{'datastore':<9} {'nodes':>5} {'op':<4} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'missing':>7} {'first ms':>8}")
    for r in results:
        for op in ("add", "del"):
            ms = [s * 1000 for s in r.latencies[op]]
            if not ms:
                print(f"{r.datastore:<9} {r.nodes:>5} {op:<4} no samples")
                continue
            print(f"{r.datastore:<9} {r.nodes:>5} {op:<4} {len(ms):>5} "
                  f"{percentile(ms, 50):8.1f} {percentile(ms, 99):8.1f} {max(ms):8.1f} "
                  f"{r.missing[op]:>7} "
                  f"{percentile([s * 1000 for s in r.first[op]], 50):8.1f}")
    print(f"\n{'datastore':<9} {'nodes':>5} {'up s':>6} {'mesh s':>6} {'RSS MiB':>8} "
          f"{'PSS MiB':>8} {'idle cpu%':>9} {'cpu ms/change/agent':>19} {'net of idle':>11}")
    for r in results:
        print(f"{r.datastore:<9} {r.nodes:>5} {r.build_s:6.1f} {r.mesh_s:6.1f} "
              f"{r.rss_mib:8.0f} {r.pss_mib:8.0f} {r.idle_cpu_pct:9.1f} "
              f"{r.cpu_ms_per_change():19.2f} {r.cpu_ms_per_change(net_of_idle=True):11.2f}")
        if r.overruns:
            print(f"  warning: {r.overruns} monitor overruns; some notifications were lost")
    print("(first: median over samples of the fastest node's latency; missing: node "
          f"notifications not seen within {SAMPLE_TIMEOUT:.0f}s)")
    print("(up: cluster.up, which returns once every agent has seen every node; mesh: the "
          "further wait until every route is in every kernel; idle cpu: all agents, "
          "% of one core; cpu ms/change/agent: all agents' CPU over the measured changes, "
          "settling included, per change and per agent; net of idle: less the idle rate)")
    verdicts = []
    for size, target in TARGET_P99_MS.items():
        judged = [(r.datastore, latency_verdict(r)) for r in results if r.nodes == size]
        if not judged:
            print(f"target p99 < {target:.0f} ms at {size} nodes: not measured")
            continue
        for datastore, met in judged:
            print(f"target p99 < {target:.0f} ms at {size} nodes ({datastore}): "
                  f"{'met' if met else 'MISSED'}")
            verdicts.append(bool(met))
    ratios = cpu_ratios(results)
    what = (f"target cpu per change per agent at {CPU_SIZES[1]} nodes <= {CPU_RATIO}x "
            f"that at {CPU_SIZES[0]}")
    if not ratios:
        print(f"{what}: not measured")
    for datastore, ratio in ratios.items():
        print(f"{what} ({datastore}): {ratio:.2f}x, {'met' if ratio <= CPU_RATIO else 'MISSED'}")
        verdicts.append(ratio <= CPU_RATIO)
    return all(verdicts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10,
                        help="lease add+delete rounds per configuration (default 10)")
    parser.add_argument("--nodes", default="10,50,100", help="lab sizes (default 10,50,100)")
    parser.add_argument("--datastores", default="embedded,etcd",
                        help="datastores (default embedded,etcd)")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between changes (default 0.3)")
    add_lab_prefix(parser, "conv")
    args = parser.parse_args()
    try:
        sizes = [int(n) for n in csv_list(args.nodes)]
    except ValueError:
        parser.error("--nodes takes comma-separated integers")
    datastores = csv_list(args.datastores)
    if args.samples < 1 or not sizes or min(sizes) < 1 or max(sizes) > MAX_NODES:
        parser.error(f"--samples must be at least 1 and --nodes between 1 and {MAX_NODES}")
    if not datastores or set(datastores) - {"embedded", "etcd"}:
        parser.error("--datastores takes embedded and/or etcd")
    ready_to_run(parser, args)
    started = time.monotonic()
    return run_all(
        (functools.partial(run_config, datastore, nodes, args.samples, args.settle,
                           args.lab_prefix) for datastore in datastores for nodes in sizes),
        lambda results: report(results, args.samples, time.monotonic() - started))


if __name__ == "__main__":
    sys.exit(main())
