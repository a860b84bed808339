"""`lab check`: every pod to every pod, every node to every pod, every pod to the external
host, with real ICMP echoes from inside the source namespace."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from gingham.lab.plan import LabPlan, netns_name
from gingham.lab.procs import run_in
from gingham.lab.state import LabRecord

RTT = re.compile(rb"time=([\d.]+) ms")
PARALLEL = 8


@dataclass(frozen=True)
class Probe:
    kind: str  # pod-pod, node-pod, pod-external
    source: str
    source_netns: str
    target: str
    address: str


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    ok: bool
    rtt_ms: float | None

    def to_json(self) -> dict:
        return {**asdict(self.probe), "ok": self.ok, "rtt_ms": self.rtt_ms}


def plan_probes(plan: LabPlan, record: LabRecord) -> list[Probe]:
    pods = sorted(record.pods.values(), key=lambda p: p.ref)
    pods = [p for p in pods if p.ip]
    probes = [
        Probe("pod-pod", a.ref, a.netns, b.ref, b.ip)
        for a in pods for b in pods if a is not b
    ]
    probes += [
        Probe("node-pod", node.name, netns_name(plan.name, node.name), pod.ref, pod.ip)
        for node in plan.nodes for pod in pods
    ]
    probes += [
        Probe("pod-external", pod.ref, pod.netns, plan.external.name,
              str(plan.external.address.ip))
        for pod in pods
    ]
    return probes


def ping(probe: Probe, attempts: int = 2) -> ProbeResult:
    for _ in range(attempts):
        try:
            proc = run_in(probe.source_netns,
                          ["ping", "-n", "-c", "1", "-W", "2", probe.address],
                          capture_output=True, check=False)
        except OSError:  # the source namespace is gone: that is unreachable, not a crash
            return ProbeResult(probe, False, None)
        if proc.returncode == 0:
            found = RTT.search(proc.stdout)
            return ProbeResult(probe, True, float(found.group(1)) if found else None)
    return ProbeResult(probe, False, None)


def run_probes(probes: list[Probe]) -> list[ProbeResult]:
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(ping, probes))


def table_rows(results: list[ProbeResult]) -> list[tuple[str, ...]]:
    rows = [("KIND", "FROM", "TO", "ADDRESS", "RESULT", "RTT")]
    for r in results:
        p = r.probe
        rows.append((p.kind, p.source, p.target, p.address,
                     "ok" if r.ok else "UNREACHABLE",
                     f"{r.rtt_ms:.3f} ms" if r.rtt_ms is not None else "-"))
    return rows
