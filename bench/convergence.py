"""Route convergence: a lease written to (or deleted from) the datastore → its host-gw route
present on (or gone from) every node.

For each datastore and lab size a lab is built, and a synthetic lease is written straight
through the registry for a fake node whose public IP is on the underlay (host-gw only needs
the next hop on-link; nothing is ever sent to it). Every node's routing table is watched
with a netlink route monitor opened inside its namespace, and the first RTM_NEWROUTE (then
RTM_DELROUTE) for the subnet is timestamped per node. Latency is per node, from just before
the datastore call to the kernel's notification; p50/p99/max are over all nodes of all
samples.

    .venv/bin/python bench/convergence.py [--samples 10] [--nodes 10,50]
                                          [--datastores embedded,etcd]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import secrets
import selectors
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import BenchError, bench_lab, log, sigterm_as_interrupt
from gingham.dataplane import netns
from gingham.dataplane.routes import GINGHAM_PROTO, MAIN_TABLE
from gingham.lab import cluster, control, procs
from gingham.lab.plan import DEFAULT_POD_CIDR, LabPlan, netns_name
from gingham.lab.state import LabFiles
from gingham.subnet.lease import Lease, LeaseAttrs
from gingham.subnet.registry import SubnetRegistry

TARGET_P99_MS = 1000.0
TARGET_NODES = 50
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_OVERRUN_ERRNO = 105  # ENOBUFS: the monitor fell behind and lost notifications
RTA_DST, RTA_TABLE = 1, 15
NLMSG = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
# Fake nodes: subnets and underlay addresses no lab node of up to 199 nodes can have
# (node k is 10.244.k.0/24 at 192.168.50.(10+k)); .254 is the lab's external host.
FAKE_BASE = 200
FAKE_COUNT = 50
MESH_TIMEOUT = 120.0
SAMPLE_TIMEOUT = 20.0
CPU_TICK = os.sysconf("SC_CLK_TCK")


# -- watching every node's routing table --------------------------------------------------


class RouteMonitor:
    """One netlink socket per node namespace, all read by one thread: the time a route
    notification is read is the time the agent's change reached that node's kernel (the
    reader sleeps in select, so it wakes as soon as the kernel queues the message)."""

    def __init__(self, lab: str, nodes: list[str]) -> None:
        self.nodes = nodes
        self._selector = selectors.DefaultSelector()
        self._socks: list[socket.socket] = []
        self._cond = threading.Condition()
        # (op, dst) -> node -> first time seen, for the ops armed by `expect`.
        self._seen: dict[tuple[int, ipaddress.IPv4Network], dict[str, float]] = {}
        self.overruns = 0
        self._stop = threading.Event()
        try:
            for node in nodes:
                # A socket stays in the namespace it was made in: step in, make it, step out.
                with netns.entered(procs.netns_path(netns_name(lab, node))):
                    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
                self._socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.bind((0, RTMGRP_IPV4_ROUTE))
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ, node)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._run, name="route-monitor", daemon=True)
        self._thread.start()

    def expect(self, op: int, dst: ipaddress.IPv4Network) -> None:
        """Start recording `op` (RTM_NEWROUTE/RTM_DELROUTE) for `dst`: call before the change."""
        with self._cond:
            self._seen[(op, dst)] = {}

    def wait(self, op: int, dst: ipaddress.IPv4Network, timeout: float) -> dict[str, float]:
        """Node -> monotonic time of the first notification, once every node has one (or at
        the timeout, with whatever arrived)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = self._seen[(op, dst)]
            while len(seen) < len(self.nodes):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            del self._seen[(op, dst)]
            return dict(seen)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.2):
                now = time.monotonic()
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                while True:
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        break
                    except OSError as err:
                        if err.errno == NLMSG_OVERRUN_ERRNO:
                            self.overruns += 1
                            continue
                        if self._stop.is_set():
                            return
                        raise
                    self._parse(key.data, data, now)

    def _parse(self, node: str, data: bytes, now: float) -> None:
        at = 0
        while at + NLMSG.size <= len(data):
            size, kind, _, _, _ = NLMSG.unpack_from(data, at)
            if size < NLMSG.size:
                return
            if kind in (RTM_NEWROUTE, RTM_DELROUTE):
                body = data[at + NLMSG.size:at + size]
                family, dst_len, _, _, table, proto, _, _, _ = RTMSG.unpack_from(body)
                attrs = netns.attributes(body, RTMSG.size)
                if RTA_TABLE in attrs:
                    (table,) = struct.unpack("=I", attrs[RTA_TABLE][:4])
                if family == socket.AF_INET and proto == GINGHAM_PROTO \
                        and table == MAIN_TABLE and RTA_DST in attrs:
                    dst = ipaddress.IPv4Network(
                        (socket.inet_ntoa(attrs[RTA_DST][:4]), dst_len))
                    with self._cond:
                        seen = self._seen.get((kind, dst))
                        if seen is not None and node not in seen:
                            seen[node] = now
                            self._cond.notify_all()
            at += (size + 3) & ~3

    def close(self) -> None:
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(2)
        self._selector.close()
        for sock in self._socks:
            sock.close()


# -- the agents, as processes ------------------------------------------------------------


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


# -- one configuration -------------------------------------------------------------------


@dataclass
class Result:
    datastore: str
    nodes: int
    build_s: float = 0.0
    mesh_s: float = 0.0
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    idle_cpu_pct: float = 0.0  # of one core, all agents together, with nothing changing
    event_cpu_s: list[float] = field(default_factory=list)  # all agents, per change
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"add": [], "del": []})
    # Per sample, the fastest node: the datastore's notification plus one agent's own
    # work, with no wait for a CPU; the rest of the spread is agents queueing for the CPUs.
    first: dict[str, list[float]] = field(default_factory=lambda: {"add": [], "del": []})
    missing: dict[str, int] = field(default_factory=lambda: {"add": 0, "del": 0})
    overruns: int = 0


def fake_lease(i: int) -> tuple[ipaddress.IPv4Network, LeaseAttrs]:
    k = FAKE_BASE + i % FAKE_COUNT
    subnet = list(DEFAULT_POD_CIDR.subnets(new_prefix=24))[k]
    return subnet, LeaseAttrs(ipaddress.IPv4Address(f"192.168.50.{k}"), "host-gw", f"fake{k}")


def timed_change(monitor: RouteMonitor, op: int, dst: ipaddress.IPv4Network, change,
                 pids: list[int], result: Result, label: str, record: bool) -> None:
    cpu0 = cpu_seconds(pids)
    monitor.expect(op, dst)
    t0 = time.monotonic()
    change()
    seen = monitor.wait(op, dst, SAMPLE_TIMEOUT)
    if not record:
        return
    result.latencies[label] += [t - t0 for t in seen.values()]
    if seen:
        result.first[label].append(min(seen.values()) - t0)
    result.missing[label] += len(monitor.nodes) - len(seen)
    # The agents' follow-up work (masquerade set, status file) is part of the change's cost.
    time.sleep(0.3)
    result.event_cpu_s.append(cpu_seconds(pids) - cpu0)


def sample(registry: SubnetRegistry, monitor: RouteMonitor, i: int, pids: list[int],
           result: Result, record: bool, settle: float) -> None:
    subnet, attrs = fake_lease(i)
    written: list[Lease] = []

    def write() -> None:
        lease = registry.write_lease(subnet, attrs, 0, 0)
        if lease is None:
            raise BenchError(f"a lease for {subnet} already exists")
        written.append(lease)

    try:
        timed_change(monitor, RTM_NEWROUTE, subnet, write, pids, result, "add", record)
        time.sleep(settle)
    finally:
        if written:
            timed_change(monitor, RTM_DELROUTE, subnet,
                         lambda: registry.delete_lease(written[0]), pids, result, "del", record)
    time.sleep(settle)


def run_config(datastore: str, nodes: int, samples: int, settle: float) -> Result:
    result = Result(datastore, nodes)
    name = "conv" + secrets.token_hex(3)
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
        monitor = RouteMonitor(name, node_names)
        try:
            with control.lab_registry(files.load()) as registry:
                # One untimed round first: lazy imports and first-use caches in the agents.
                sample(registry, monitor, 0, pids, result, record=False, settle=settle)
                for i in range(1, samples + 1):
                    sample(registry, monitor, i, pids, result, record=True, settle=settle)
            result.overruns = monitor.overruns
        finally:
            monitor.close()
        log(f"{datastore}/{nodes}: measured; tearing down")
    return result


# -- report -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def report(results: list[Result], samples: int, seconds: float) -> bool:
    print(f"\nRoute convergence (host-gw), {samples} samples per configuration, "
          f"{seconds:.0f}s total")
    print(f"{'datastore':<9} {'nodes':>5} {'op':<4} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'missing':>7} {'first ms':>8}")
    verdict = True
    for r in results:
        for op in ("add", "del"):
            ms = [s * 1000 for s in r.latencies[op]]
            if not ms:
                print(f"{r.datastore:<9} {r.nodes:>5} {op:<4} no samples")
                verdict = False
                continue
            p99 = percentile(ms, 99)
            print(f"{r.datastore:<9} {r.nodes:>5} {op:<4} {len(ms):>5} "
                  f"{percentile(ms, 50):8.1f} {p99:8.1f} {max(ms):8.1f} {r.missing[op]:>7} "
                  f"{percentile([s * 1000 for s in r.first[op]], 50):8.1f}")
            if r.nodes >= TARGET_NODES and (p99 >= TARGET_P99_MS or r.missing[op]):
                verdict = False
    print(f"\n{'datastore':<9} {'nodes':>5} {'up s':>6} {'mesh s':>6} {'RSS MiB':>8} "
          f"{'PSS MiB':>8} {'idle cpu%':>9} {'cpu s/change':>12}")
    for r in results:
        per_change = sum(r.event_cpu_s) / len(r.event_cpu_s) if r.event_cpu_s else 0.0
        print(f"{r.datastore:<9} {r.nodes:>5} {r.build_s:6.1f} {r.mesh_s:6.1f} "
              f"{r.rss_mib:8.0f} {r.pss_mib:8.0f} {r.idle_cpu_pct:9.1f} {per_change:12.2f}")
        if r.overruns:
            print(f"  warning: {r.overruns} monitor overruns; some notifications were lost")
    print("(first: median over samples of the fastest node's latency; missing: node "
          f"notifications not seen within {SAMPLE_TIMEOUT:.0f}s)")
    print("(up: cluster.up, which returns once every agent has seen every node; mesh: the "
          "further wait until every route is in every kernel; idle cpu: all agents, "
          "% of one core; cpu s/change: all agents' CPU per lease change)")
    big = [r for r in results if r.nodes >= TARGET_NODES]
    if big:
        print(f"target p99 < {TARGET_P99_MS:.0f} ms at {TARGET_NODES} nodes: "
              f"{'met' if verdict else 'MISSED'}")
    else:
        print(f"target p99 < {TARGET_P99_MS:.0f} ms at {TARGET_NODES} nodes: not measured "
              f"(no configuration with {TARGET_NODES}+ nodes)")
    return verdict


def csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10,
                        help="lease add+delete rounds per configuration (default 10)")
    parser.add_argument("--nodes", default="10,50", help="lab sizes (default 10,50)")
    parser.add_argument("--datastores", default="embedded,etcd",
                        help="datastores (default embedded,etcd)")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between changes (default 0.3)")
    args = parser.parse_args()
    try:
        sizes = [int(n) for n in csv_list(args.nodes)]
    except ValueError:
        parser.error("--nodes takes comma-separated integers")
    datastores = csv_list(args.datastores)
    if args.samples < 1 or not sizes or min(sizes) < 1 or max(sizes) > 199:
        parser.error("--samples must be at least 1 and --nodes between 1 and 199")
    if not datastores or set(datastores) - {"embedded", "etcd"}:
        parser.error("--datastores takes embedded and/or etcd")
    if os.geteuid() != 0:
        parser.error("needs root: it builds network namespaces")
    sigterm_as_interrupt()
    started = time.monotonic()
    results: list[Result] = []
    met = False
    try:
        for datastore in datastores:
            for nodes in sizes:
                results.append(run_config(datastore, nodes, args.samples, args.settle))
    except (BenchError, cluster.LabError) as err:
        print(f"bench failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if results:
            met = report(results, args.samples, time.monotonic() - started)
    return 0 if met else 2


if __name__ == "__main__":
    sys.exit(main())
