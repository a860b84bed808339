"""`lab check`: every pod to every pod, every node to every pod, every pod to the external
host, with real ICMP echoes from inside the source namespace; and 1 MB over TCP between
every two pods on different nodes, so a path that drops large packets (a black-holed
path MTU) fails the check even where pings pass."""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from gingham.dataplane import netns
from gingham.lab.plan import LabPlan, netns_name
from gingham.lab.procs import netns_path, run_in
from gingham.lab.state import LabRecord

RTT = re.compile(rb"time=([\d.]+) ms")
PARALLEL = 8
TRANSFER = "pod-pod-1MB"
TRANSFER_BYTES = 1 << 20
TRANSFER_TIMEOUT = 5.0


@dataclass(frozen=True)
class Probe:
    kind: str  # pod-pod, node-pod, pod-external, pod-pod-1MB
    source: str
    source_netns: str
    target: str
    address: str
    target_netns: str = ""  # transfers: where the receiver listens


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
    probes += [
        Probe(TRANSFER, a.ref, a.netns, b.ref, b.ip, b.netns)
        for a in pods for b in pods if a.node != b.node
    ]
    return probes


def transfer(probe: Probe) -> ProbeResult:
    """1 MB from source to target over TCP; both sockets are made here, each in its pod's
    namespace (a socket keeps the namespace it was created in), so nothing is exec'd."""
    started = time.monotonic()
    received = 0
    try:
        with netns.entered(netns_path(probe.target_netns)):
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with netns.entered(netns_path(probe.source_netns)):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return ProbeResult(probe, False, None)

    def receive() -> None:
        nonlocal received
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(TRANSFER_TIMEOUT)
                while chunk := conn.recv(1 << 16):
                    received += len(chunk)
        except OSError:
            pass

    with server, client:
        try:
            server.bind((probe.address, 0))
            server.listen(1)
            server.settimeout(TRANSFER_TIMEOUT)
            receiver = threading.Thread(target=receive, daemon=True)
            receiver.start()
            client.settimeout(TRANSFER_TIMEOUT)
            client.connect((probe.address, server.getsockname()[1]))
            client.sendall(bytes(TRANSFER_BYTES))
            client.shutdown(socket.SHUT_WR)
            receiver.join(TRANSFER_TIMEOUT + 1)
        except OSError:
            pass
    ok = received == TRANSFER_BYTES
    return ProbeResult(probe, ok, (time.monotonic() - started) * 1000 if ok else None)


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


def run(probe: Probe) -> ProbeResult:
    return transfer(probe) if probe.kind == TRANSFER else ping(probe)


def run_probes(probes: list[Probe]) -> list[ProbeResult]:
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(run, probes))


def table_rows(results: list[ProbeResult]) -> list[tuple[str, ...]]:
    rows = [("KIND", "FROM", "TO", "ADDRESS", "RESULT", "RTT")]
    for r in results:
        p = r.probe
        rows.append((p.kind, p.source, p.target, p.address,
                     "ok" if r.ok else "UNREACHABLE",
                     f"{r.rtt_ms:.3f} ms" if r.rtt_ms is not None else "-"))
    return rows
