"""Scale: one real agent against a datastore holding N synthetic peer leases.

For each backend and N, a one-node lab is built on a big underlay (172.16.0.0/16, so every
peer's public IP is on the node's segment, as host-gw needs) with a big pod network
(10.0.0.0/10 in /24s). The agent is stopped, N leases of peers that exist only in the
datastore are written straight through the registry (vxlan ones with a VNI and a VTEP MAC),
and the agent is started again: it joins a cluster of N+1 nodes. A netlink monitor in the
node's namespace counts what the agent programs (routes of protocol 71; with vxlan also
permanent neighbours and FDB entries) and timestamps the moment all N are there. Then,
one at a time, a lease is written and deleted, and the time from the datastore call to the
kernel's last notification for it (route; with vxlan also neighbour and FDB entry) is one
sample. Memory is the agent's VmRSS and VmHWM (peak); CPU per change is what the agent used
over the measured changes, settling included, per change.

Targets (2 cores): all 5000 peers programmed < 10 s after the agent starts; one change
applied < 50 ms p99; peak RSS < 100 MiB. Exit 0 when all are met, 2 if one is missed.

    .venv/bin/python bench/scale_sim.py [--peers 1000,5000] [--backends host-gw,vxlan]
                                        [--samples 50] [--datastore embedded|etcd]
"""

from __future__ import annotations

import argparse
import collections
import functools
import ipaddress
import re
import sys
import threading
import time
from dataclasses import dataclass, field

from agentstat import cpu_seconds, resident_mib
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
from gingham.lab import cluster, control
from gingham.lab.plan import LabPlan, netns_name
from gingham.lab.state import LabFiles
from gingham.subnet.lease import Lease, LeaseAttrs
from gingham.subnet.registry import SubnetRegistry
from kernelwatch import DEL, FDB, NEIGH, NEW, ROUTE, Change, Entry, KernelWatch, dump

TARGET_JOIN_S = 10.0
TARGET_P99_MS = 50.0
TARGET_PEAK_RSS_MIB = 100.0
NODE = "node1"
POD_CIDR = ipaddress.IPv4Network("10.0.0.0/10")
UNDERLAY = ipaddress.IPv4Network("172.16.0.0/16")
PEER_SUBNET_BASE = 256  # peer i leases /24 number 256+i (10.1.0.0/24 on), clear of node1's
PEER_HOST_BASE = 1024  # peer i is at 172.16.4.0 + i, clear of the lab's own hosts
MAX_PEERS = 10_000
VNI = 1
POLL = 0.05
SAMPLE_TIMEOUT = 30.0
STATUS_GRACE = 10.0  # after the kernel is complete, how long status.json may lag
LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (.*)$")
NUMBERS = re.compile(r"\d+(\.\d+)*")


# -- the synthetic peers -------------------------------------------------------------------


def peer_subnet(i: int) -> ipaddress.IPv4Network:
    first = int(POD_CIDR.network_address) + (PEER_SUBNET_BASE + i) * 256
    return ipaddress.IPv4Network((first, 24))


def peer_mac(i: int) -> str:
    """A locally administered unicast MAC, one per peer."""
    return "02:" + ":".join(f"{b:02x}" for b in i.to_bytes(5, "big"))


def peer_lease(i: int, backend: str) -> tuple[ipaddress.IPv4Network, LeaseAttrs]:
    data = {"VNI": VNI, "VtepMAC": peer_mac(i)} if backend == "vxlan" else {}
    return peer_subnet(i), LeaseAttrs(UNDERLAY.network_address + PEER_HOST_BASE + i,
                                      backend, f"peer{i}", data)


def peer_entries(i: int, backend: str) -> list[Entry]:
    """What the agent programs for peer i."""
    subnet = peer_subnet(i)
    entries = [Entry(ROUTE, str(subnet))]
    if backend == "vxlan":
        entries += [Entry(NEIGH, str(subnet.network_address)), Entry(FDB, peer_mac(i))]
    return entries


def kinds_of(backend: str) -> tuple[str, ...]:
    return (ROUTE, NEIGH, FDB) if backend == "vxlan" else (ROUTE,)


def write_peer(registry: SubnetRegistry, i: int, backend: str) -> Lease:
    subnet, attrs = peer_lease(i, backend)
    lease = registry.write_lease(subnet, attrs, 0, 0)
    if lease is None:
        raise BenchError(f"a lease for {subnet} already exists")
    return lease


# -- counting what the agent has programmed ------------------------------------------------


class Tally:
    """Entries of each kind present in the node's kernel, kept by the monitor's
    notifications; and the time every kind first reached `target`."""

    def __init__(self, kinds: tuple[str, ...], target: int) -> None:
        self.kinds = kinds
        self.target = target
        self._present: dict[str, set[str]] = {kind: set() for kind in kinds}
        self._lock = threading.Lock()
        self.complete_at: float | None = None

    def reset(self, entries: set[Entry], now: float) -> None:
        with self._lock:
            for kind in self.kinds:
                self._present[kind] = {e.key for e in entries if e.kind == kind}
            self._check(now)

    def see(self, label: str, change: Change, now: float) -> None:
        with self._lock:
            keys = self._present[change.entry.kind]
            if change.op == NEW:
                keys.add(change.entry.key)
            else:
                keys.discard(change.entry.key)
            self._check(now)

    def _check(self, now: float) -> None:
        if self.complete_at is None and \
                all(len(keys) >= self.target for keys in self._present.values()):
            self.complete_at = now

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {kind: len(keys) for kind, keys in self._present.items()}


# -- one configuration -------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    peers: int
    datastore: str
    build_s: float = 0.0
    write_s: float = 0.0  # writing the N leases
    serving_s: float = 0.0  # agent start -> it serves CNI calls
    programmed_s: float | None = None  # agent start -> all N in the kernel
    status_s: float | None = None  # agent start -> status.json says N peers
    counts: dict[str, int] = field(default_factory=dict)  # by a dump, after the join
    rss_join_mib: float = 0.0
    rss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    idle_cpu_pct: float = 0.0
    sample_cpu_s: float = 0.0
    sample_s: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"add": [], "del": []})
    missing: dict[str, int] = field(default_factory=lambda: {"add": 0, "del": 0})
    overruns: int = 0
    notes: list[str] = field(default_factory=list)  # crashes, problems, log warnings

    @property
    def changes(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.missing.values())

    def cpu_ms_per_change(self, net_of_idle: bool = False) -> float:
        if not self.changes:
            return 0.0
        cpu = self.sample_cpu_s
        if net_of_idle:
            cpu -= self.idle_cpu_pct / 100 * self.sample_s
        return cpu / self.changes * 1000


def agent_pid(files: LabFiles) -> tuple[int | None, int]:
    """The agent's PID now and how often it has exited."""
    state = cluster.supervisor_state(files, NODE)
    return state.get("agentPid"), state.get("exits", 0)


def wait_until_programmed(files: LabFiles, ns: str, watch: KernelWatch, tally: Tally,
                          result: Result, started: float, timeout: float) -> None:
    """Until every peer is in the kernel and in the agent's status, the timeout passes or
    the agent exits. A monitor that lost notifications is replaced by dumps."""
    deadline = started + timeout
    complete_seen = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if watch.overruns:
            tally.reset(dump(ns), now)
        if result.status_s is None:
            status = cluster.node_status(files, NODE) or {}
            if status.get("peers", -1) >= result.peers:
                result.status_s = now - started
        if tally.complete_at is not None:
            complete_seen = complete_seen or now
            if result.status_s is not None or now - complete_seen > STATUS_GRACE:
                break
        if agent_pid(files)[1]:
            result.notes.append(f"agent exited while joining: "
                                f"{cluster.supervisor_state(files, NODE).get('lastExit')}")
            break
        time.sleep(POLL)
    if tally.complete_at is not None:
        result.programmed_s = tally.complete_at - started
    else:
        result.notes.append(f"not all {result.peers} peers programmed {timeout:.0f}s after "
                            f"the agent started: {tally.counts()}")
    if result.status_s is None:
        status = cluster.node_status(files, NODE) or {}
        result.notes.append(f"status.json never said {result.peers} peers "
                            f"(peers {status.get('peers')}, routes {status.get('routes')})")


def timed_change(watch: KernelWatch, changes: list[Change], act, result: Result,
                 label: str, record: bool) -> None:
    watch.expect(changes)
    t0 = time.monotonic()
    act()
    seen = watch.wait(changes, SAMPLE_TIMEOUT)
    time.sleep(0.3)  # the agent's follow-up work (masquerade set, status) is the change's cost
    if not record:
        return
    if all(NODE in s for s in seen.values()):
        result.latencies[label].append(max(s[NODE] for s in seen.values()) - t0)
    else:
        result.missing[label] += 1


def sample(registry: SubnetRegistry, watch: KernelWatch, i: int, result: Result,
           record: bool, settle: float) -> None:
    entries = peer_entries(i, result.backend)
    written: list[Lease] = []
    try:
        timed_change(watch, [Change(NEW, e) for e in entries],
                     lambda: written.append(write_peer(registry, i, result.backend)),
                     result, "add", record)
        time.sleep(settle)
    finally:
        if written:
            timed_change(watch, [Change(DEL, e) for e in entries],
                         lambda: registry.delete_lease(written[0]), result, "del", record)
    time.sleep(settle)


def log_notes(files: LabFiles) -> list[str]:
    """The agent log's warnings and errors, alike ones (differing in numbers) counted once."""
    try:
        lines = files.agent_log(NODE).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    counted: collections.Counter[str] = collections.Counter()
    first: dict[str, str] = {}
    for line in lines:
        found = LOG_LINE.match(line)
        if found:
            shape = NUMBERS.sub("#", found.group(2))
            counted[shape] += 1
            first.setdefault(shape, f"{found.group(1)} {found.group(2)}")
    return [f"agent log, {n}x: {first[shape][:300]}" for shape, n in counted.most_common(5)]


def run_config(backend: str, peers: int, datastore: str, samples: int, settle: float,
               join_timeout: float, lab_prefix: str) -> Result:
    result = Result(backend, peers, datastore)
    name = lab_name(lab_prefix)
    ns = netns_name(name, NODE)
    log(f"{backend}/{peers}: building lab {name}")
    plan = LabPlan.single_segment(name, 1, pod_cidr=POD_CIDR, underlay=UNDERLAY,
                                  datastore=datastore, backend=backend)
    with bench_lab(plan) as (files, build_s):
        result.build_s = build_s
        cluster.stop_agent(files, NODE)
        with control.lab_registry(files.load()) as registry:
            started = time.monotonic()
            for i in range(peers):
                write_peer(registry, i, backend)
            result.write_s = time.monotonic() - started
            log(f"{backend}/{peers}: {peers} leases written in {result.write_s:.1f}s; "
                "starting the agent")
            tally = Tally(kinds_of(backend), peers)
            watch = KernelWatch({NODE: ns}, kinds_of(backend), listener=tally.see)
            try:
                tally.reset(dump(ns), time.monotonic())
                started = time.monotonic()
                pid = cluster.resume_agent(files, NODE)
                result.serving_s = time.monotonic() - started
                wait_until_programmed(files, ns, watch, tally, result, started, join_timeout)
                have = dump(ns)
                result.counts = {kind: sum(1 for e in have if e.kind == kind)
                                 for kind in kinds_of(backend)}
                result.rss_join_mib, _ = resident_mib(pid)
                log(f"{backend}/{peers}: programmed after {seconds(result.programmed_s)}s "
                    f"({result.counts}); sampling")
                if result.programmed_s is not None:
                    measure_changes(registry, watch, files, pid, result, samples, settle)
                result.overruns = watch.overruns
            finally:
                watch.close()
        result.notes += log_notes(files)
        problems = (cluster.node_status(files, NODE) or {}).get("problems", [])
        if problems:
            result.notes.append(f"status.json: {len(problems)} problem(s), first: "
                                f"{problems[0][:300]}")
        log(f"{backend}/{peers}: measured; tearing down")
    return result


def measure_changes(registry: SubnetRegistry, watch: KernelWatch, files: LabFiles, pid: int,
                    result: Result, samples: int, settle: float) -> None:
    time.sleep(1.0)  # the join's follow-up work out of the idle measurement
    cpu0 = cpu_seconds([pid])
    time.sleep(3.0)
    result.idle_cpu_pct = (cpu_seconds([pid]) - cpu0) / 3.0 * 100
    extra = result.peers  # the sampled leases come after the N peers
    # One untimed round first: lazy imports and first-use caches in the agent.
    sample(registry, watch, extra, result, record=False, settle=settle)
    cpu0, started = cpu_seconds([pid]), time.monotonic()
    for i in range(1, samples + 1):
        sample(registry, watch, extra + i, result, record=True, settle=settle)
    result.sample_cpu_s = cpu_seconds([pid]) - cpu0
    result.sample_s = time.monotonic() - started
    now, exits = agent_pid(files)
    if now != pid:
        result.notes.append(f"agent restarted while sampling ({exits} exits; last "
                            f"{cluster.supervisor_state(files, NODE).get('lastExit')})")
    else:
        result.rss_mib, result.peak_rss_mib = resident_mib(pid)


# -- report -------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    ms = [v * 1000 for v in values]
    return f"{percentile(ms, 50):.1f}/{percentile(ms, 99):.1f}/{max(ms):.1f}"


def verdicts(r: Result) -> list[tuple[str, bool]]:
    met_p99 = all(r.latencies[op] and not r.missing[op]
                  and percentile(r.latencies[op], 99) * 1000 < TARGET_P99_MS
                  for op in ("add", "del"))
    return [
        (f"all {r.peers} peers programmed < {TARGET_JOIN_S:.0f} s",
         r.programmed_s is not None and r.programmed_s < TARGET_JOIN_S
         and all(n == r.peers for n in r.counts.values())),
        (f"one change applied p99 < {TARGET_P99_MS:.0f} ms", met_p99),
        (f"peak RSS < {TARGET_PEAK_RSS_MIB:.0f} MiB",
         0 < r.peak_rss_mib < TARGET_PEAK_RSS_MIB),
    ]


def report(results: list[Result], samples: int, took: float) -> bool:
    print(f"\nScale: one agent, N synthetic peers, {samples} samples per configuration, "
          f"{took:.0f}s total")
    print(f"{'backend':<8} {'store':<8} {'peers':>5} {'write s':>7} {'serve s':>7} "
          f"{'program s':>9} {'status s':>8} {'add p50/p99/max ms':>20} "
          f"{'del p50/p99/max ms':>20}")
    for r in results:
        print(f"{r.backend:<8} {r.datastore:<8} {r.peers:>5} {r.write_s:7.1f} "
              f"{r.serving_s:7.2f} {seconds(r.programmed_s):>9} {seconds(r.status_s):>8} "
              f"{spread(r.latencies['add']):>20} {spread(r.latencies['del']):>20}")
    print(f"\n{'backend':<8} {'store':<8} {'peers':>5} {'in kernel':>18} {'RSS join':>8} "
          f"{'RSS MiB':>7} {'peak MiB':>8} {'idle cpu%':>9} {'cpu ms/change':>13} "
          f"{'net of idle':>11}")
    for r in results:
        kernel = "/".join(str(r.counts.get(k, "-")) for k in kinds_of(r.backend))
        print(f"{r.backend:<8} {r.datastore:<8} {r.peers:>5} {kernel:>18} "
              f"{r.rss_join_mib:8.0f} {r.rss_mib:7.0f} {r.peak_rss_mib:8.0f} "
              f"{r.idle_cpu_pct:9.1f} {r.cpu_ms_per_change():13.1f} "
              f"{r.cpu_ms_per_change(net_of_idle=True):11.1f}")
    print("(program: agent start -> every peer's entries in the kernel, by netlink "
          "notifications; status: -> status.json says N peers; serve: -> it serves CNI "
          "calls; in kernel: routes[/neighbours/FDB entries] by a dump after the join; "
          "peak: VmHWM; cpu: the agent's over the measured changes, settling included; "
          "net of idle: less its idle rate)")
    met = True
    for r in results:
        for note in r.notes:
            print(f"note {r.backend}/{r.datastore}/{r.peers}: {note}")
        if r.overruns:
            print(f"note {r.backend}/{r.datastore}/{r.peers}: {r.overruns} monitor overruns "
                  "(the join was counted by dumps from then on)")
        if sum(r.missing.values()):
            print(f"note {r.backend}/{r.datastore}/{r.peers}: changes not seen within "
                  f"{SAMPLE_TIMEOUT:.0f}s: {r.missing}")
    for r in results:
        for what, ok in verdicts(r):
            print(f"target {what} ({r.backend}/{r.datastore}/{r.peers}): "
                  f"{'met' if ok else 'MISSED'}")
            met = met and ok
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="1000,5000",
                        help="synthetic peer counts (default 1000,5000)")
    parser.add_argument("--backends", default="host-gw,vxlan",
                        help="backends (default host-gw,vxlan)")
    parser.add_argument("--samples", type=int, default=50,
                        help="lease add+delete rounds per configuration (default 50)")
    parser.add_argument("--datastore", choices=("embedded", "etcd"), default="embedded")
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds between changes (default 0.2)")
    parser.add_argument("--join-timeout", type=float, default=120.0,
                        help="seconds the agent gets to program every peer (default 120)")
    add_lab_prefix(parser, "scal")
    args = parser.parse_args()
    try:
        counts = [int(n) for n in csv_list(args.peers)]
    except ValueError:
        parser.error("--peers takes comma-separated integers")
    backends = csv_list(args.backends)
    if not counts or min(counts) < 1 or max(counts) > MAX_PEERS:
        parser.error(f"--peers takes counts from 1 to {MAX_PEERS}")
    if not backends or set(backends) - {"host-gw", "vxlan"}:
        parser.error("--backends takes host-gw and/or vxlan")
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    ready_to_run(parser, args)
    started = time.monotonic()
    return run_all(
        (functools.partial(run_config, backend, peers, args.datastore, args.samples,
                           args.settle, args.join_timeout, args.lab_prefix)
         for backend in backends for peers in counts),
        lambda results: report(results, args.samples, time.monotonic() - started))


if __name__ == "__main__":
    sys.exit(main())
