"""NetworkPolicy at scale: a 5-node lab with 500 pods and 200 policies. How long from a
policy's write to its enforcement on every node that has a pod it selects (p50, p99), how big
the ruleset gets, and what the policies cost a packet: pod-to-pod throughput (iperf3) and the
new-connection rate with 200 policies against none, in the same run.

Pods: pod j runs on node j%5+1, in namespace ns(j//5)%5, labelled app=a(j//25)%10 and
role=client or server; each (namespace, app) has two pods on every node. Policy i lives in
ns(i%5), selects app=a(i%10) and lets role=client in on TCP 5201 (iperf3) and 80+i; every
other one also isolates egress, allowing its own namespace. The measured pair (ns0, app=a0,
node1 -> node2) is selected by 4 policies on each side, so its packets walk their chains.

Enforcement: each policy is written straight into the datastore as `gingham apply` does,
and the nftables notifications of every node (NETLINK_NETFILTER, read in its namespace) are
timestamped until each node has made the policy's chain.

No policy and 200 policies alternate, twice (the policies deleted in between), and
throughput and connection rate are the best of the runs in each state (a run another
process slowed down says nothing about the path). Targets (2 cores): p99 under 500 ms; throughput
with 200 policies at least 0.95x of none; connection rate at least 0.9x. Exit 0 when met,
2 if not.

    .venv/bin/python bench/policy_scale.py [--pods 500] [--policies 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from agentstat import agent_pids, cpu_seconds
from benchkit import BenchError, add_lab_prefix, bench_lab, lab_name, log, percentile, ready_to_run
from gingham.dataplane import netns
from gingham.lab import cluster, control, procs
from gingham.lab.plan import LabPlan, netns_name
from gingham.policy.compile import policy_chain_name
from gingham.policy.spec import INGRESS
from gingham.resources.document import split_documents
from gingham.resources.kinds import parse_resource
from gingham.resources.store import APPLY, ResourceStore
from kernelwatch import CHAIN, NEW, Change, Entry, KernelWatch

NODES = 5
IPERF_PORT = 5201
RATE_PORT = 80
TARGET_P99_MS, TARGET_THROUGHPUT, TARGET_RATE = 500.0, 0.95, 0.9
ENFORCE_TIMEOUT = 20.0
ROUNDS = 2  # no policy, then 200, twice


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # s, per policy and node
    missing: int = 0
    rules: int = 0
    set_elements: int = 0
    throughput: dict[str, list[float]] = field(default_factory=lambda: {"none": [], "200": []})
    rate: dict[str, list[float]] = field(default_factory=lambda: {"none": [], "200": []})
    # all agents' CPU while each was measured, cores
    agents_cpu: dict[str, float] = field(default_factory=dict)


def pod_ref(j: int) -> tuple[str, str, dict[str, str]]:
    labels = {"app": f"a{(j // 25) % 10}", "role": "client" if j % 2 else "server"}
    return f"node{j % NODES + 1}", f"ns{(j // 5) % 5}/p{j}", labels


def policy_document(i: int) -> dict:
    spec: dict = {"podSelector": {"matchLabels": {"app": f"a{i % 10}"}},
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                               "ports": [{"protocol": "TCP", "port": IPERF_PORT},
                                         {"protocol": "TCP", "port": RATE_PORT + i}]}]}
    if i % 2:
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["egress"] = [{"to": [{"podSelector": {}}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol{i}", "namespace": f"ns{i % 5}"}, "spec": spec}


def iperf(client_ns: str, server_ns: str, address: str, seconds: int) -> float:
    server = procs.popen_in(server_ns, ["iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        time.sleep(0.3)
        out = procs.run_in(client_ns, ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t",
                                       str(seconds), "-J"], capture_output=True, text=True,
                           timeout=seconds + 20)
        data = json.loads(out.stdout)
        return data["end"]["sum_received"]["bits_per_second"] / 1e9
    except (KeyError, ValueError, subprocess.TimeoutExpired) as err:
        raise BenchError(f"iperf3 {client_ns} -> {address} failed: {err}") from None
    finally:
        server.kill()
        server.wait()


def connection_rate(client_ns: str, server_ns: str, address: str, seconds: float) -> float:
    """New TCP connections a second, each opened, answered and closed, one at a time."""
    with netns.entered(procs.netns_path(server_ns)):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue  # a closed socket would not wake a blocked accept: look again
            except OSError:
                return
            conn.close()

    with server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", RATE_PORT))
        server.listen(512)
        server.settimeout(0.2)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        count, deadline = 0, time.monotonic() + seconds
        started = time.monotonic()
        with netns.entered(procs.netns_path(client_ns)):  # every client socket made there
            while time.monotonic() < deadline:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
                    client.settimeout(2)
                    # closed with a reset: no TIME_WAIT piles up in the client pod
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      b"\1\0\0\0\0\0\0\0")
                    client.connect((address, RATE_PORT))
                    client.recv(1)  # the server's close
                count += 1
        elapsed = time.monotonic() - started
        stop.set()
        thread.join()
    return count / elapsed


def measure_path(result: Result, label: str, pair: tuple[str, str, str], repeats: int,
                 seconds: int, agents: list[int]) -> None:
    cpu0, started = cpu_seconds(agents), time.monotonic()
    for _ in range(repeats):
        result.throughput[label].append(iperf(*pair, seconds))
        result.rate[label].append(connection_rate(*pair, seconds))
    result.agents_cpu[label] = (cpu_seconds(agents) - cpu0) / (time.monotonic() - started)


def ruleset_size(ns: str) -> tuple[int, int]:
    out = procs.run_in(ns, ["nft", "-j", "list", "table", "inet", "gingham_policy"],
                       capture_output=True, text=True).stdout
    objects = json.loads(out)["nftables"] if out.strip() else []
    rules = sum(1 for o in objects if "rule" in o)
    elements = sum(len(o.get(k, {}).get("elem", [])) for o in objects for k in ("set", "map"))
    return rules, elements


def run(pods: int, policies: int, repeats: int, seconds: int, prefix: str) -> Result:
    result = Result()
    name = lab_name(prefix)
    plan = LabPlan.single_segment(name, NODES, backend="host-gw")
    log(f"building lab {name}: {NODES} nodes")
    with bench_lab(plan) as (files, _):
        started = time.monotonic()
        records = {}
        for j in range(pods):
            node, ref, labels = pod_ref(j)
            records[j] = cluster.add_pod(name, node, ref, labels=labels, files=files)
        log(f"{pods} pods in {time.monotonic() - started:.0f}s")
        # ns0/app=a0: p1 (client, node2) is j=1; the server on node3 is j=2... pick by node
        client = next(j for j in range(pods) if pod_ref(j)[1].startswith("ns0/")
                      and pod_ref(j)[2] == {"app": "a0", "role": "client"})
        server = next(j for j in range(pods) if pod_ref(j)[1].startswith("ns0/")
                      and pod_ref(j)[2] == {"app": "a0", "role": "server"}
                      and pod_ref(j)[0] != pod_ref(client)[0])
        pair = (records[client].netns, records[server].netns, records[server].ip)
        agents = agent_pids(files)
        node_ns = {f"node{k}": netns_name(name, f"node{k}") for k in range(1, NODES + 1)}
        watch = KernelWatch(node_ns, kinds=(CHAIN,))
        try:
            with control.lab_registry(files.load()) as registry:
                resources = ResourceStore(registry.store, registry.prefix)
                # The states alternate, so a slow spell of the machine hits both alike.
                for round_ in range(1, ROUNDS + 1):
                    log(f"round {round_}: {pod_ref(client)[1]} -> {pod_ref(server)[1]}, "
                        "no policy")
                    measure_path(result, "none", pair, repeats, seconds, agents)
                    written = apply_policies(resources, watch, policies, result)
                    result.rules, result.set_elements = ruleset_size(node_ns["node1"])
                    log(f"round {round_}: {policies} policies in force")
                    measure_path(result, "200", pair, repeats, seconds, agents)
                    resources.delete(written)
                    wait_no_table(node_ns.values())
        finally:
            watch.close()
    return result


def apply_policies(resources: ResourceStore, watch: KernelWatch, policies: int,
                   result: Result) -> list:
    """Each policy written as `gingham apply` writes it, timed to its chain on every node."""
    written = []
    for i in range(policies):
        doc = policy_document(i)
        [raw] = split_documents([doc], "bench")
        ref = f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"
        expected = Change(NEW, Entry(CHAIN, policy_chain_name(ref, INGRESS)))
        watch.expect([expected])
        t0 = time.monotonic()
        resource = parse_resource(raw)
        resources.write(APPLY, [resource])
        written.append(resource)
        seen = watch.wait([expected], ENFORCE_TIMEOUT)[expected]
        result.latencies += [t - t0 for t in seen.values()]
        result.missing += NODES - len(seen)
    return written


def wait_no_table(namespaces, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(procs.run_in(ns, ["nft", "list", "table", "inet", "gingham_policy"],
                           capture_output=True).returncode == 0 for ns in namespaces):
        if time.monotonic() > deadline:
            raise BenchError("the policy tables outlived their policies")
        time.sleep(0.2)


def best(values: list[float]) -> float:
    """The best of the runs: another process taking the CPUs only ever slows a run down."""
    return max(values)


def report(r: Result, pods: int, policies: int) -> bool:
    ms = [s * 1000 for s in r.latencies]
    print(f"\nNetworkPolicy at scale: {NODES} nodes, {pods} pods, {policies} policies")
    p99 = percentile(ms, 99) if ms else float("inf")
    if ms:
        print(f"apply -> enforced on every node: n={len(ms)} p50 {percentile(ms, 50):.1f} ms "
              f"p99 {p99:.1f} ms max {max(ms):.1f} ms, missing {r.missing}")
    print(f"ruleset on node1: {r.rules} rules, {r.set_elements} set and map elements")
    through = best(r.throughput["200"]) / best(r.throughput["none"])
    rate = best(r.rate["200"]) / best(r.rate["none"])

    def runs(values: list[float], spec: str) -> str:
        return ", ".join(format(v, spec) for v in values)

    print(f"throughput Gbit/s, best of runs: none {best(r.throughput['none']):.2f}, "
          f"{policies} policies {best(r.throughput['200']):.2f} ({through:.3f}x; runs "
          f"{runs(r.throughput['none'], '.2f')} / {runs(r.throughput['200'], '.2f')})")
    print(f"new connections/s, best of runs: none {best(r.rate['none']):.0f}, {policies} "
          f"policies {best(r.rate['200']):.0f} ({rate:.3f}x; runs "
          f"{runs(r.rate['none'], '.0f')} / {runs(r.rate['200'], '.0f')})")
    print(f"agents' CPU while measuring: none {r.agents_cpu.get('none', 0):.2f} cores, "
          f"{policies} policies {r.agents_cpu.get('200', 0):.2f} cores")
    verdicts = [(f"p99 < {TARGET_P99_MS:.0f} ms", p99 < TARGET_P99_MS and not r.missing),
                (f"throughput >= {TARGET_THROUGHPUT}x", through >= TARGET_THROUGHPUT),
                (f"connection rate >= {TARGET_RATE}x", rate >= TARGET_RATE)]
    for what, met in verdicts:
        print(f"target {what}: {'met' if met else 'MISSED'}")
    return all(met for _, met in verdicts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=500, help="(default 500)")
    parser.add_argument("--policies", type=int, default=200, help="(default 200)")
    parser.add_argument("--repeats", type=int, default=3,
                        help=f"runs per figure and round, {ROUNDS} rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=3, help="per run (default 3)")
    add_lab_prefix(parser, "pol")
    args = parser.parse_args()
    if args.pods < 50 or args.policies < 1 or args.repeats < 1:
        parser.error("--pods at least 50, --policies and --repeats at least 1")
    ready_to_run(parser, args)
    try:
        result = run(args.pods, args.policies, args.repeats, args.seconds, args.lab_prefix)
    except KeyboardInterrupt:
        return 130
    except BenchError as err:
        log(f"failed: {err}")
        return 1
    return 0 if report(result, args.pods, args.policies) else 2


if __name__ == "__main__":
    sys.exit(main())
