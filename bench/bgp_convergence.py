"""BGP convergence in Calico mode: a new pod block -> its `proto bird` route in every node's
kernel, in a node-to-node mesh and in a cluster with two route reflectors; and, with
bfdEnabled, how long a node that vanishes keeps its routes on the others.

The bench adds an IP pool of its own (10.250.0.0/16, /26 blocks, no encapsulation) and
writes a block affine to a node straight into the datastore, as IPAM's claim does for a
node's first pod in a pool: that node's agent renders the block's blackhole into BIRD's
config, BIRD announces it, every other BIRD puts it in its kernel (the owner's blackhole is
BIRD's route too, and counts). Deleting the block withdraws it. Latency per node: from just
before the datastore write to the kernel's notification (RTM_NEWROUTE, then RTM_DELROUTE),
read by a netlink monitor in each node's namespace; p50/p99/max over all nodes of all
samples. With route reflectors the clients hear of a block through node1 or node2.

Failover: with bfdEnabled, the last node's port on the underlay bridge goes down, and the
time until every other node has deleted the route to its block is measured; the port comes
back and the sessions are waited for before the next round. BIRD's timers are read from a
live session and printed beside: without BFD, the hold time is how long a vanished node's
routes stay.

Targets (2 cores): p99 under 1 s for a new block in both clusters, and BFD failover under
1 s. Exit 0 when every target measured is met, 2 if not.

    .venv/bin/python bench/bgp_convergence.py [--nodes 10] [--samples 20] [--failovers 3]
                                              [--clusters mesh,rr,bfd] [--lab-prefix bgpc]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import ipaddress
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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
from gingham.calico.bird import RTPROT_BIRD
from gingham.calico.node_status import read_peers
from gingham.ipam.blocks import Block, block_key_part, blocks_prefix
from gingham.lab import control, procs
from gingham.lab.plan import UNDERLAY, LabPlan, netns_name
from gingham.lab.state import LabFiles
from kernelwatch import DEL, NEW, ROUTE, Change, Entry, KernelWatch

TARGET_S = 1.0
POOL = ipaddress.IPv4Network("10.250.0.0/16")
GINGHAM = Path(sys.executable).parent / "gingham"
SESSIONS_TIMEOUT = 120.0
SAMPLE_TIMEOUT = 20.0
BENCH_POOL = f"""apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: bgp-bench}}
spec: {{cidr: {POOL}, blockSize: 26, natOutgoing: false}}
"""
# The seeds' recipe, with two reflectors in one cluster ID.
REFLECTORS = """---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
""" + "".join(f"""---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node{k}
  labels: {{route-reflector: "true"}}
spec:
  bgp: {{ipv4Address: 192.168.50.{10 + k}/24, routeReflectorClusterID: 244.0.0.1}}
""" for k in (1, 2)) + """---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec: {nodeSelector: all(), peerSelector: "route-reflector == 'true'"}
"""
BFD = """---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {bfdEnabled: true}
"""
CLUSTERS = {"mesh": "", "rr": REFLECTORS, "bfd": BFD}


@dataclass
class Result:
    cluster: str
    nodes: int
    build_s: float = 0.0
    sessions_s: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"add": [], "del": []})
    missing: dict[str, int] = field(default_factory=lambda: {"add": 0, "del": 0})
    failovers: list[float] = field(default_factory=list)  # s, the slowest node per round
    failover_missing: int = 0
    timers: str = ""


def apply(lab: str, text: str) -> None:
    proc = subprocess.run([str(GINGHAM), "--lab", lab, "apply", "-f", "-"], input=text,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise BenchError(f"gingham apply failed: {proc.stderr.strip()}")


def control_socket(files: LabFiles, node: str) -> Path:
    return files.node_dir(node) / "run" / "bird.ctl"


def wait_for_sessions(files: LabFiles, expected: dict[str, int]) -> None:
    """Until each node has its expected number of established BGP sessions."""
    deadline = time.monotonic() + SESSIONS_TIMEOUT
    pending = dict(expected)
    while pending:
        for node, count in list(pending.items()):
            rows = read_peers(control_socket(files, node)) or []
            if sum(r.info.startswith("Established") for r in rows) >= count:
                del pending[node]
        if time.monotonic() > deadline:
            raise BenchError(f"BGP sessions not all up after {SESSIONS_TIMEOUT:.0f}s on "
                             f"{', '.join(sorted(pending))}")
        time.sleep(0.3)


def bird_timers(files: LabFiles, node: str) -> str:
    """The hold and keepalive times of one established session, as BIRD shows them."""
    for row in read_peers(control_socket(files, node)) or []:
        if not row.info.startswith("Established"):
            continue
        name = ("Mesh_" if row.peer_type == "node-to-node mesh" else "Node_") + \
            row.peer_address.replace(".", "_")
        shown = subprocess.run(["birdc", "-s", str(control_socket(files, node)), "show",
                                "protocols", "all", name], capture_output=True, text=True,
                               timeout=10).stdout
        hold = re.search(r"Hold timer:\s+\S+/(\d+)", shown)
        keepalive = re.search(r"Keepalive timer:\s+\S+/(\d+)", shown)
        if hold and keepalive:
            return f"hold {hold.group(1)} s, keepalive {keepalive.group(1)} s"
    return "not read"


class Blocks:
    """Bench blocks written to and deleted from the datastore, each timed to the kernels."""

    def __init__(self, store, prefix: str, monitor: KernelWatch, result: Result) -> None:
        self.store, self.prefix, self.monitor, self.result = store, prefix, monitor, result
        self.cidrs = POOL.subnets(new_prefix=26)

    def timed(self, op: str, cidr: ipaddress.IPv4Network, change, record: bool,
              label: str) -> dict[str, float]:
        expected = Change(op, Entry(ROUTE, str(cidr)))
        self.monitor.expect([expected])
        t0 = time.monotonic()
        change()
        seen = self.monitor.wait([expected], SAMPLE_TIMEOUT)[expected]
        if record:
            self.result.latencies[label] += [t - t0 for t in seen.values()]
            self.result.missing[label] += len(self.monitor.labels) - len(seen)
        return seen

    def add(self, node: str, record: bool) -> tuple[ipaddress.IPv4Network, str]:
        cidr = next(self.cidrs)
        key = blocks_prefix(self.prefix) + block_key_part(cidr)

        def write() -> None:
            if not self.store.compare_and_swap(key, Block.empty(cidr, node).encode(), 0):
                raise BenchError(f"block {cidr} exists already")

        self.timed(NEW, cidr, write, record, "add")
        return cidr, key

    def delete(self, cidr: ipaddress.IPv4Network, key: str, record: bool) -> None:
        kv = self.store.get(key)
        assert kv is not None
        self.timed(DEL, cidr, lambda: self.store.compare_and_delete(key, kv.mod_revision),
                   record, "del")


def sample_blocks(blocks: Blocks, nodes: list[str], samples: int, settle: float) -> None:
    for i in range(samples + 1):  # the first round untimed: first-use work in the agents
        node = nodes[i % len(nodes)]
        cidr, key = blocks.add(node, record=i > 0)
        time.sleep(settle)
        blocks.delete(cidr, key, record=i > 0)
        time.sleep(settle)


def underlay_port(lab: str, node: str) -> str:
    out = procs.run_in(netns_name(lab, UNDERLAY), ["ip", "-br", "link"], capture_output=True,
                       text=True, check=True).stdout
    return next(line.split("@")[0] for line in out.splitlines()
                if line.startswith(f"{node}@"))


def failover(files: LabFiles, lab: str, nodes: list[str], monitor: KernelWatch,
             store, prefix: str, result: Result, rounds: int, expected: dict[str, int]) -> None:
    """The last node vanishes from the underlay; the others' routes to its block go."""
    victim = nodes[-1]
    port = underlay_port(lab, victim)
    cidr = ipaddress.IPv4Network("10.250.255.0/26")
    key = blocks_prefix(prefix) + block_key_part(cidr)
    gone = Change(DEL, Entry(ROUTE, str(cidr)))
    back = Change(NEW, Entry(ROUTE, str(cidr)))
    monitor.expect([back])
    store.compare_and_swap(key, Block.empty(cidr, victim).encode(), 0)
    monitor.wait([back], SAMPLE_TIMEOUT)  # every other node routes it
    for _ in range(rounds):
        wait_for_sessions(files, expected)
        monitor.expect([gone])
        t0 = time.monotonic()
        procs.run_in(netns_name(lab, UNDERLAY), ["ip", "link", "set", port, "down"], check=True)
        seen = monitor.wait([gone], SAMPLE_TIMEOUT)[gone]
        result.failover_missing += len(monitor.labels) - len(seen)
        if seen:
            result.failovers.append(max(seen.values()) - t0)
        monitor.expect([back])
        procs.run_in(netns_name(lab, UNDERLAY), ["ip", "link", "set", port, "up"], check=True)
        monitor.wait([back], SESSIONS_TIMEOUT)


def run_cluster(cluster: str, nodes: int, samples: int, failovers: int, settle: float,
                lab_prefix: str) -> Result:
    result = Result(cluster, nodes)
    name = lab_name(lab_prefix)
    plan = dataclasses.replace(LabPlan.single_segment(name, nodes), mode="calico", bgp=True)
    node_names = [f"node{k}" for k in range(1, nodes + 1)]
    if cluster == "rr":
        expected = {n: (nodes - 1 if n in ("node1", "node2") else 2) for n in node_names}
    else:
        expected = {n: nodes - 1 for n in node_names}
    log(f"{cluster}/{nodes}: building lab {name}")
    with bench_lab(plan) as (files, build_s):
        result.build_s = build_s
        started = time.monotonic()
        apply(name, BENCH_POOL + CLUSTERS[cluster])
        wait_for_sessions(files, expected)
        result.sessions_s = time.monotonic() - started
        result.timers = bird_timers(files, "node3")
        log(f"{cluster}/{nodes}: up in {build_s:.1f}s, sessions {result.sessions_s:.1f}s later")
        # In failover the vanished node's own kernel is not watched: it keeps its blackhole.
        watched = node_names[:-1] if cluster == "bfd" else node_names
        monitor = KernelWatch({n: netns_name(name, n) for n in watched}, proto=RTPROT_BIRD)
        try:
            with control.lab_registry(files.load()) as registry:
                if cluster == "bfd":
                    failover(files, name, node_names, monitor, registry.store,
                             registry.prefix, result, failovers, expected)
                else:
                    sample_blocks(Blocks(registry.store, registry.prefix, monitor, result),
                                  node_names, samples, settle)
        finally:
            monitor.close()
        log(f"{cluster}/{nodes}: measured; tearing down")
    return result


def report(results: list[Result], seconds: float) -> bool:
    print(f"\nBGP convergence (Calico mode, BIRD 2), {seconds:.0f}s total")
    print(f"{'cluster':<8} {'nodes':>5} {'op':<4} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'missing':>7}")
    verdicts = []
    for r in results:
        for op in ("add", "del"):
            ms = [s * 1000 for s in r.latencies[op]]
            if not ms:
                continue
            print(f"{r.cluster:<8} {r.nodes:>5} {op:<4} {len(ms):>5} {percentile(ms, 50):8.1f} "
                  f"{percentile(ms, 99):8.1f} {max(ms):8.1f} {r.missing[op]:>7}")
    for r in results:
        if r.failovers:
            ms = [s * 1000 for s in r.failovers]
            print(f"BFD failover ({r.nodes} nodes): every other node without the vanished "
                  f"node's route after {', '.join(f'{m:.0f}' for m in ms)} ms "
                  f"(missing {r.failover_missing})")
    print(f"\n{'cluster':<8} {'up s':>6} {'sessions s':>10}  BIRD timers in force")
    for r in results:
        print(f"{r.cluster:<8} {r.build_s:6.1f} {r.sessions_s:10.1f}  {r.timers}")
    print("(BIRD's defaults for hold and keepalive, as calico-node's; connect delay 2 s, "
          "retry 5 s, error wait 5-30 s as confd's; BFD 100 ms x 3. Without BFD a vanished "
          "node's routes stay until the hold time runs out.)")
    for r in results:
        if r.cluster == "bfd":
            met = bool(r.failovers) and max(r.failovers) < TARGET_S and not r.failover_missing
            print(f"target BFD failover < {TARGET_S * 1000:.0f} ms: "
                  f"{'met' if met else 'MISSED'}")
        else:
            met = all(r.latencies[op] and percentile(r.latencies[op], 99) < TARGET_S
                      and not r.missing[op] for op in ("add", "del"))
            print(f"target p99 < {TARGET_S * 1000:.0f} ms for a new block ({r.cluster}, "
                  f"{r.nodes} nodes): {'met' if met else 'MISSED'}")
        verdicts.append(met)
    return all(verdicts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10, help="lab size (default 10)")
    parser.add_argument("--samples", type=int, default=20,
                        help="block add+delete rounds per cluster (default 20)")
    parser.add_argument("--failovers", type=int, default=3,
                        help="BFD failover rounds (default 3)")
    parser.add_argument("--clusters", default="mesh,rr,bfd",
                        help="which of mesh, rr, bfd (default all)")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between changes (default 0.3)")
    add_lab_prefix(parser, "bgpc")
    args = parser.parse_args()
    clusters = csv_list(args.clusters)
    if not clusters or set(clusters) - set(CLUSTERS):
        parser.error("--clusters takes mesh, rr and/or bfd")
    if args.nodes < 3 or args.nodes > 100 or args.samples < 1 or args.failovers < 1:
        parser.error("--nodes between 3 and 100, --samples and --failovers at least 1")
    ready_to_run(parser, args)
    started = time.monotonic()
    return run_all(
        (functools.partial(run_cluster, c, args.nodes, args.samples, args.failovers,
                           args.settle, args.lab_prefix) for c in clusters),
        lambda results: report(results, time.monotonic() - started))


if __name__ == "__main__":
    sys.exit(main())
