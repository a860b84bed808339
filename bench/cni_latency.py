"""CNI ADD/DEL latency: Gingham's plugin against the reference Go `bridge` + `host-local`
(Flannel mode), or the routed `ptp` + `host-local` (--mode calico).

One lab node, one run. Each plugin is exec'd as a runtime execs it: CNI_* in the environment,
the network config on stdin, the process in the node's network namespace. Pod namespaces are
made before the clock starts; only the plugin exec (spawn to exit) is timed. Gingham and the
reference alternate pod by pod, and which one goes first alternates too, so background load
on the box falls on both alike.

    .venv/bin/python bench/cni_latency.py [--pods 100] [--mode flannel|calico]

Exits 0 when Gingham's median ADD and median DEL are each at most TARGET_RATIO times the
reference's, 2 when either is not, 1 when the run itself failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import BenchError, bench_lab, sigterm_as_interrupt
from gingham.agent.config import CONFLIST_NAME
from gingham.dataplane import netns
from gingham.lab import cluster, procs
from gingham.lab.plan import LabPlan, netns_name, pod_netns_name
from gingham.lab.state import LabFiles

REFERENCE_DIR = Path("/usr/lib/cni")
NODE = "node1"
IFNAME = "eth0"
WARMUP = 3  # per plugin, untimed: the first ADD of the reference creates its bridge
# The agent's node subnet is a /24; doing pods in batches keeps any --pods within it.
BATCH = 200
REF_BRIDGE = "cni1"
REF_SUBNET = "10.99.0.0/16"
TARGET_RATIO = {"ADD": 0.9, "DEL": 0.9}  # issue 9: median gingham/reference, each at most
MISSED = 2


@dataclass
class Plugin:
    label: str
    binary: Path
    config: bytes
    cni_path: str
    samples: dict[str, list[float]] = field(default_factory=lambda: {"ADD": [], "DEL": []})


def gingham_plugin(files: LabFiles) -> Plugin:
    conflist = json.loads((files.conf_dir(NODE) / CONFLIST_NAME).read_text())
    main = next(p for p in conflist["plugins"] if p["type"] == "gingham")
    config = {"cniVersion": "1.0.0", "name": conflist["name"], **main}  # the node's own
    return Plugin("gingham", files.bin_dir / "gingham", json.dumps(config).encode(),
                  f"{files.bin_dir}:{REFERENCE_DIR}")


def host_local(files: LabFiles) -> dict:
    """host-local keeps its state inside the lab's directory, which `down` removes."""
    return {"type": "host-local", "ranges": [[{"subnet": REF_SUBNET}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(files.dir / "bench-host-local")}


def reference_plugin(files: LabFiles, mode: str) -> Plugin:
    if mode == "calico":  # a routed veth per pod, no bridge: what Calico's CNI plugin makes
        config = {"cniVersion": "1.0.0", "name": "benchref", "type": "ptp", "ipMasq": False,
                  "mtu": 1500, "ipam": host_local(files)}
        return Plugin("reference", REFERENCE_DIR / "ptp", json.dumps(config).encode(),
                      str(REFERENCE_DIR))
    # The same shape of pod as Gingham's: gateway on the bridge, default route, hairpin.
    # host-local keeps its state inside the lab's directory, which `down` removes.
    config = {
        "cniVersion": "1.0.0",
        "name": "benchref",
        "type": "bridge",
        "bridge": REF_BRIDGE,
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "mtu": 1500,
        "ipam": host_local(files),
    }
    return Plugin("reference", REFERENCE_DIR / "bridge", json.dumps(config).encode(),
                  str(REFERENCE_DIR))


def exec_plugin(plugin: Plugin, command: str, container_id: str, pod_ns: str) -> float:
    """Run one plugin call in this thread's namespace (the node's); seconds it took."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": procs.netns_path(pod_ns),
        "CNI_IFNAME": IFNAME,
        # as kubelet passes them (Calico mode names the host end after them)
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod_ns}",
        "CNI_PATH": plugin.cni_path,
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    start = time.perf_counter()
    proc = subprocess.Popen([str(plugin.binary)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.communicate(plugin.config, timeout=60)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{plugin.label} {command} in {pod_ns} failed "
                         f"(exit {proc.returncode}): {(out or err).decode(errors='replace')}")
    return elapsed


def make_netns(names: list[str]) -> None:
    # One `ip` process for all of them: `-batch` keeps set-up out of the run time budget.
    script = "".join(f"netns add {n}\n" for n in names)
    proc = subprocess.run(["ip", "-batch", "-"], input=script, text=True, capture_output=True)
    if proc.returncode != 0:
        raise BenchError(f"could not create pod namespaces: {proc.stderr.strip()}")


def delete_netns(names: list[str]) -> None:
    script = "".join(f"netns del {n}\n" for n in names)
    subprocess.run(["ip", "-force", "-batch", "-"], input=script, text=True,
                   capture_output=True)


def run_batch(lab: str, plugins: list[Plugin], first: int, count: int, timed: bool) -> None:
    pods = {p.label: [pod_netns_name(lab, "bench", f"{p.label[0]}{first + i}")
                      for i in range(count)] for p in plugins}
    make_netns([ns for names in pods.values() for ns in names])
    try:
        ids = [secrets.token_hex(32) for _ in range(count)]
        # The node's namespace, entered once: every plugin process is born in it.
        with netns.entered(procs.netns_path(netns_name(lab, NODE))):
            for command in ("ADD", "DEL"):
                for i in range(count):
                    order = plugins if (first + i) % 2 == 0 else plugins[::-1]
                    for plugin in order:
                        took = exec_plugin(plugin, command, ids[i], pods[plugin.label][i])
                        if timed:
                            plugin.samples[command].append(took)
    finally:
        delete_netns([ns for names in pods.values() for ns in names])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def report(plugins: list[Plugin], pods: int, seconds: float) -> bool:
    """Print the table, the ratios against their targets; True if every target is met."""
    print(f"\nCNI latency, {pods} pods per plugin, one lab node ({seconds:.1f}s total)")
    print(f"{'plugin':<10} {'op':<4} {'min':>8} {'median':>8} {'p95':>8}   (ms)")
    for plugin in plugins:
        for command in ("ADD", "DEL"):
            ms = [s * 1000 for s in plugin.samples[command]]
            print(f"{plugin.label:<10} {command:<4} {min(ms):8.2f} {statistics.median(ms):8.2f} "
                  f"{percentile(ms, 95):8.2f}")
    ours, ref = plugins
    met = True
    for command in ("ADD", "DEL"):
        ratio = statistics.median(ours.samples[command]) / statistics.median(ref.samples[command])
        target = TARGET_RATIO[command]
        verdict = "met" if ratio <= target else "MISSED"
        met = met and ratio <= target
        print(f"median {command} ratio gingham/reference: {ratio:.2f} (target <= {target:.2f}: "
              f"{verdict})")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100, help="pods per plugin (default 100)")
    parser.add_argument("--lab", default="bench" + secrets.token_hex(2),
                        help="lab name (default: bench + 4 random hex digits)")
    parser.add_argument("--mode", choices=("flannel", "calico"), default="flannel",
                        help="the cluster mode, and so the reference: bridge or ptp")
    args = parser.parse_args()
    if args.pods < 1:
        parser.error("--pods must be at least 1")
    if os.geteuid() != 0:
        parser.error("needs root: it builds network namespaces")
    for binary in ("ptp" if args.mode == "calico" else "bridge", "host-local"):
        if not (REFERENCE_DIR / binary).exists():
            parser.error(f"reference plugin {REFERENCE_DIR / binary} is missing "
                         "(apt-get install containernetworking-plugins)")
    sigterm_as_interrupt()
    started = time.monotonic()
    print(f"lab {args.lab}: starting", file=sys.stderr)
    try:
        plan = dataclasses.replace(LabPlan.single_segment(args.lab, 1), mode=args.mode)
        with bench_lab(plan) as (files, _):
            plugins = [gingham_plugin(files), reference_plugin(files, args.mode)]
            run_batch(args.lab, plugins, 0, WARMUP, timed=False)
            done = 0
            while done < args.pods:
                count = min(BATCH, args.pods - done)
                run_batch(args.lab, plugins, WARMUP + done, count, timed=True)
                done += count
        return 0 if report(plugins, args.pods, time.monotonic() - started) else MISSED
    except (BenchError, cluster.LabError) as err:
        print(f"bench failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
