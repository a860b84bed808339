"""Building and tearing down a lab, and adding and removing its pods."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from gingham.agent.config import CONFLIST_NAME
from gingham.cni.install import install_plugins
from gingham.dataplane import netns
from gingham.dataplane.bridge import link_index
from gingham.lab import procs
from gingham.lab.plan import (
    HostPlan,
    LabPlan,
    NodePlan,
    PlanError,
    netns_name,
    parse_pod_ref,
    pod_netns_name,
)
from gingham.lab.runtime import Attachment, CniRuntime, PluginFailed
from gingham.lab.state import LabFiles, LabRecord, PodRecord

UNDERLAY = "underlay"
UNDERLAY_BRIDGE = "br0"
REFERENCE_PLUGINS = Path("/usr/lib/cni")
AGENT_READY_TIMEOUT = 20.0


class LabError(RuntimeError):
    pass


# -- the plan, as recorded ------------------------------------------------------------


def plan_of(record: LabRecord) -> LabPlan:
    p = record.plan
    return LabPlan(
        name=p["name"],
        pod_cidr=ipaddress.IPv4Network(p["pod_cidr"]),
        underlay=ipaddress.IPv4Network(p["underlay"]),
        nodes=tuple(NodePlan(n["name"], ipaddress.IPv4Interface(n["address"]),
                             ipaddress.IPv4Network(n["pod_subnet"])) for n in p["nodes"]),
        external=HostPlan(p["external"]["name"],
                          ipaddress.IPv4Interface(p["external"]["address"])),
    )


def _plan_json(plan: LabPlan) -> dict:
    return json.loads(json.dumps(asdict(plan), default=str))


# -- up -------------------------------------------------------------------------------


def _add_netns(name: str) -> None:
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"could not create namespace {name}: {proc.stderr.strip()}")


def _wire_host(lab: str, host: HostPlan, gateway: ipaddress.IPv4Address | None) -> None:
    """Plug a host into the underlay: `eth0` in the host, a port named after it on br0."""
    host_ns = procs.netns_path(netns_name(lab, host.name))
    host_fd = netns.open_netns(host_ns)
    try:
        with netns.iproute(procs.netns_path(netns_name(lab, UNDERLAY))) as ul:
            ul.link("add", ifname=host.name[:15], kind="veth", state="up",
                    master=link_index(ul, UNDERLAY_BRIDGE),
                    peer={"ifname": "eth0", "net_ns_fd": host_fd})
    finally:
        os.close(host_fd)
    with netns.iproute(host_ns) as ipr:
        eth0 = link_index(ipr, "eth0")
        ipr.addr("add", index=eth0, address=str(host.address.ip),
                 prefixlen=host.address.network.prefixlen)
        ipr.link("set", index=eth0, state="up")
        ipr.link("set", index=link_index(ipr, "lo"), state="up")
        if gateway is not None:
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway))


def _build_underlay(lab: str) -> None:
    with netns.iproute(procs.netns_path(netns_name(lab, UNDERLAY))) as ul:
        ul.link("add", ifname=UNDERLAY_BRIDGE, kind="bridge", state="up")
        ul.link("set", index=link_index(ul, "lo"), state="up")


def agent_argv(files: LabFiles, plan: LabPlan, node: NodePlan) -> list[str]:
    node_dir = files.node_dir(node.name)
    return [
        sys.executable, "-m", "gingham.cli.main", "agent",
        "--node-name", node.name,
        "--subnet", str(node.pod_subnet),
        "--cluster-cidr", str(plan.pod_cidr),
        "--iface", "eth0",
        "--socket", str(files.agent_socket(node.name)),
        "--state-dir", str(node_dir / "state"),
        "--run-dir", str(node_dir / "run"),
        "--cni-conf-dir", str(files.conf_dir(node.name)),
    ]


def start_agent(files: LabFiles, plan: LabPlan, node: NodePlan) -> int:
    files.node_dir(node.name).mkdir(parents=True, exist_ok=True)
    files.agent_socket(node.name).unlink(missing_ok=True)
    with open(files.agent_log(node.name), "ab") as logfile:
        proc = procs.popen_in(netns_name(plan.name, node.name), agent_argv(files, plan, node),
                              stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                              start_new_session=True)
    return proc.pid


def wait_for_agent(files: LabFiles, node: str, pid: int,
                   timeout: float = AGENT_READY_TIMEOUT) -> None:
    path = str(files.agent_socket(node))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.is_alive(pid):
            raise LabError(f"agent of {node} exited during start; its log says:\n"
                           + _tail(files.agent_log(node)))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(path)
            return
        except OSError:
            time.sleep(0.05)
    raise LabError(f"agent of {node} not ready after {timeout:.0f}s; log:\n"
                   + _tail(files.agent_log(node)))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def up(plan: LabPlan, files: LabFiles | None = None) -> LabRecord:
    files = files or LabFiles(plan.name)
    if files.exists() or procs.list_netns(f"{plan.name}-"):
        raise LabError(f"lab {plan.name!r} already exists; run `gingham lab down --name "
                       f"{plan.name}` first")
    record = LabRecord(name=plan.name, plan=_plan_json(plan))
    files.save(record)  # first, so `down` can undo a half-built lab
    for host in (UNDERLAY, plan.external.name, *(n.name for n in plan.nodes)):
        _add_netns(netns_name(plan.name, host))
    _build_underlay(plan.name)
    _wire_host(plan.name, plan.external, None)
    for node in plan.nodes:
        _wire_host(plan.name, node, plan.external.address.ip)
    install_plugins(files.bin_dir)
    for node in plan.nodes:
        record.agents[node.name] = start_agent(files, plan, node)
        files.save(record)
    for node in plan.nodes:
        wait_for_agent(files, node.name, record.agents[node.name])
    return record


# -- down -----------------------------------------------------------------------------


def down(lab: str, files: LabFiles | None = None) -> list[str]:
    """Remove every process, namespace and file of the lab; fine to run on any state."""
    files = files or LabFiles(lab)
    namespaces = procs.list_netns(f"{lab}-")
    pids: set[int] = set()
    if files.exists():
        try:
            record = files.load()
            pids |= {pid for pid in record.agents.values() if _is_our_agent(pid)}
        except (ValueError, KeyError):
            pass  # a corrupt record: the namespaces still say what is ours
    for ns in namespaces:
        pids |= set(procs.pids_in_netns(ns))
    pids.discard(os.getpid())
    procs.stop_pids(sorted(pids))
    # Pods first: their veth peers live in the nodes.
    for ns in sorted(namespaces, key=lambda n: "-pod-" not in n):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    left = procs.list_netns(f"{lab}-")
    if left:
        raise LabError(f"could not delete namespaces: {', '.join(left)}")
    if files.dir.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(files.dir)], check=True)
    return namespaces


def _is_our_agent(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return b"gingham.cli.main" in cmdline and b"agent" in cmdline


# -- pods -----------------------------------------------------------------------------


def runtime_for(files: LabFiles, lab: str, node: str) -> CniRuntime:
    try:
        conflist = json.loads((files.conf_dir(node) / CONFLIST_NAME).read_text())
    except FileNotFoundError:
        raise LabError(f"node {node} has no CNI config yet (is its agent running?)") from None
    return CniRuntime(procs.netns_path(netns_name(lab, node)), conflist,
                      [files.bin_dir, REFERENCE_PLUGINS], files.cache_dir(node))


def _attachment(pod: PodRecord, capabilities: dict | None = None) -> Attachment:
    return Attachment(
        container_id=pod.container_id,
        netns=procs.netns_path(pod.netns),
        ifname=pod.ifname,
        args={"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": pod.namespace,
              "K8S_POD_NAME": pod.name, "K8S_POD_INFRA_CONTAINER_ID": pod.container_id},
        capabilities=capabilities or {},
    )


def add_pod(lab: str, node: str, ref: str, labels: dict[str, str] | None = None,
            capabilities: dict | None = None, files: LabFiles | None = None) -> PodRecord:
    files = files or LabFiles(lab)
    namespace, name = parse_pod_ref(ref)
    with files.locked():
        record = files.load()
        plan_of(record).node(node)
        if ref in record.pods:
            raise LabError(f"pod {ref} already exists on {record.pods[ref].node}")
        pod = PodRecord(namespace, name, node, pod_netns_name(lab, namespace, name),
                        secrets.token_hex(32), "eth0", "", dict(labels or {}))
        record.pods[ref] = pod  # recorded before it exists, so `down` finds a half-made pod
        files.save(record)
    _add_netns(pod.netns)
    runtime = runtime_for(files, lab, node)
    att = _attachment(pod, capabilities)
    try:
        result = runtime.add(att)
    except PluginFailed:
        _forget_pod(files, runtime, pod, att)
        raise
    pod.ip = next(str(ipaddress.IPv4Interface(ip["address"]).ip) for ip in result["ips"])
    with files.locked():
        record = files.load()
        record.pods[ref] = pod
        files.save(record)
    return pod


def _forget_pod(files: LabFiles, runtime: CniRuntime, pod: PodRecord, att: Attachment) -> None:
    try:
        runtime.delete(att)
    finally:
        subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True)
        with files.locked():
            record = files.load()
            record.pods.pop(pod.ref, None)
            files.save(record)


def delete_pod(lab: str, ref: str, files: LabFiles | None = None) -> PodRecord:
    files = files or LabFiles(lab)
    parse_pod_ref(ref)
    record = files.load()
    pod = record.pods.get(ref)
    if pod is None:
        raise LabError(f"lab {lab} has no pod {ref}")
    _forget_pod(files, runtime_for(files, lab, pod.node), pod, _attachment(pod))
    return pod


def target_netns(lab: str, target: str, files: LabFiles | None = None) -> str:
    """The namespace of a node name, `external`, or NAMESPACE/POD."""
    files = files or LabFiles(lab)
    record = files.load()
    if "/" in target:
        pod = record.pods.get(target)
        if pod is None:
            raise LabError(f"lab {lab} has no pod {target}")
        return pod.netns
    plan = plan_of(record)
    if target != plan.external.name and target != UNDERLAY:
        try:
            plan.node(target)
        except PlanError as err:
            raise LabError(str(err)) from None
    return netns_name(lab, target)
