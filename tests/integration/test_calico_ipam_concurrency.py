"""Block IPAM under fire: 200 pod ADDs at once over 4 Calico-mode nodes, one node's agent
killed with SIGKILL halfway and restarted by its supervisor. Every pod ends with an
address of its own, and `gingham ipam check` finds nothing left over."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gingham.lab import cluster

PODS = 200
NODES = 4


def test_concurrent_adds_with_an_agent_killed_never_share_an_address(make_lab, cli):
    lab = make_lab(NODES, via_cli=True, cli_args=("--mode", "calico", "--bgp", "off"))
    ips: dict[str, str] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def add(node: str, ref: str) -> None:
        for _ in range(120):  # as kubelet does: a sandbox whose ADD failed is tried again
            try:
                ip = lab.add_pod(node, ref).ip
            except Exception as err:
                with lock:
                    failures.append(f"{ref}: {err}")
                time.sleep(0.25)
                continue
            with lock:
                ips[ref] = ip
            return
        raise AssertionError(f"{ref} never got an address")

    refs = [(f"node{1 + i % NODES}", f"load/p{i}") for i in range(PODS)]
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(add, node, ref) for node, ref in refs]
        deadline = time.monotonic() + 60
        while len(ips) < PODS // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = cluster.kill_agent(lab.files, "node2", signal.SIGKILL)
        for future in futures:
            future.result()
    assert killed and len(ips) == PODS
    assert len(set(ips.values())) == PODS, "an address was handed out twice"
    assert any(ref.startswith("load/") for ref in failures), "the kill hit no ADD"
    check = cli("--lab", lab.name, "ipam", "check")
    assert check.stdout.strip().endswith("Found 0 problem(s)."), check.stdout
    assert check.returncode == 0
    recorded = {f"{p['namespace']}/{p['name']}": p["ip"]
                for p in json.loads(cli("--lab", lab.name, "get", "pods", "-o", "json").stdout)}
    assert recorded == ips
