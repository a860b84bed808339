"""Building and tearing down a lab, and adding and removing its pods."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from gingham.agent.config import CONFLIST_NAME
from gingham.agent.status import read_status
from gingham.cni.install import install_plugins
from gingham.lab import control, procs, tor, underlay
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
from gingham.lab.topology import RouterPlan, SegmentPlan
from gingham.store.contract import StoreError
from gingham.workloads.records import NamedPort, Pod
from gingham.workloads.store import WorkloadStore

log = logging.getLogger("gingham.lab.cluster")
REFERENCE_PLUGINS = Path("/usr/lib/cni")
AGENT_READY_TIMEOUT = 20.0
DECLARE_TIMEOUT = 2.0  # s: a pod's declaration waits no longer for the datastore
UNDO_PATIENCE = 30.0  # s: a failed ADD's DEL is retried this long while the node's agent is away
TRY_AGAIN_LATER = 11  # the CNI error code of a plugin whose agent does not answer
# Agents started together share the CPUs, so `up` waits longer the more it starts: on 2
# cores 100 agents served after ~70 s and had seen each other ~20 s later.
START_SECONDS_PER_AGENT = 1.0
MESH_SECONDS_PER_NODE = 0.5


class LabError(RuntimeError):
    pass


class LabExists(LabError):
    pass


# -- the plan, as recorded ------------------------------------------------------------


def plan_of(record: LabRecord) -> LabPlan:
    p = record.plan

    def host(h: dict) -> HostPlan:
        return HostPlan(h["name"], ipaddress.IPv4Interface(h["address"]), h["segment"])

    return LabPlan(
        name=p["name"],
        pod_cidr=ipaddress.IPv4Network(p["pod_cidr"]),
        underlay=ipaddress.IPv4Network(p["underlay"]),
        nodes=tuple(NodePlan(n["name"], ipaddress.IPv4Interface(n["address"]), n["segment"],
                             ipaddress.IPv4Network(n["pod_subnet"])) for n in p["nodes"]),
        external=host(p["external"]),
        control=host(p["control"]),
        datastore=p["datastore"],
        backend=p["backend"],
        backend_options=p["backend_options"],
        ip_masq=p.get("ip_masq", True),  # labs recorded before the option masqueraded
        segments=tuple(SegmentPlan(s["name"], ipaddress.IPv4Network(s["cidr"]))
                       for s in p["segments"]),
        routers=tuple(RouterPlan(r["name"], tuple((seg, ipaddress.IPv4Interface(addr))
                                                  for seg, addr in r["ports"]),
                                 r.get("bgp_asn"), tuple(r.get("bgp_peers", ())))
                      for r in p["routers"]),
        mode=p.get("mode", "flannel"),  # labs recorded before modes were Flannel's
        encap=p.get("encap", "none"),
        cross_subnet=p.get("cross_subnet", False),
        bgp=p.get("bgp", False),
        log_denied=p.get("log_denied", False),
    )


def _plan_json(plan: LabPlan) -> dict:
    return json.loads(json.dumps(asdict(plan), default=str))


# -- up -------------------------------------------------------------------------------


def agent_argv(files: LabFiles, record: LabRecord, node: NodePlan) -> list[str]:
    node_dir = files.node_dir(node.name)
    return [
        sys.executable, "-m", "gingham.cli.main", "agent",
        "--node-name", node.name,
        "--mode", record.plan.get("mode", "flannel"),
        *(["--bgp"] if record.plan.get("bgp") else []),
        *(["--log-denied"] if record.plan.get("log_denied") else []),
        *control.agent_store_args(record),
        "--prefer-subnet", str(node.pod_subnet),
        "--ip-masq" if record.plan.get("ip_masq", True) else "--no-ip-masq",
        "--iface", "eth0",
        "--socket", str(files.agent_socket(node.name)),
        "--state-dir", str(node_dir / "state"),
        "--run-dir", str(node_dir / "run"),
        "--cni-conf-dir", str(files.conf_dir(node.name)),
    ]


def start_agent(files: LabFiles, record: LabRecord, node: NodePlan,
                argv: list[str] | None = None) -> int:
    """Start the node's agent (`argv`, default agent_argv) under a supervisor, which restarts
    it whenever it exits; returns the supervisor's PID, which the caller records."""
    files.node_dir(node.name).mkdir(parents=True, exist_ok=True)
    files.agent_socket(node.name).unlink(missing_ok=True)
    state = files.supervisor_state(node.name)
    state.unlink(missing_ok=True)
    with open(files.agent_log(node.name), "ab") as logfile:
        proc = procs.popen_in(netns_name(record.name, node.name),
                              [sys.executable, "-m", "gingham.lab.supervisor", str(state), "--",
                               *(argv or agent_argv(files, record, node))],
                              stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                              start_new_session=True)
    return proc.pid


def supervisor_state(files: LabFiles, node: str) -> dict:
    """What the node's supervisor says: agentPid, restarts, exits, lastExit ({} if none)."""
    try:
        return json.loads(files.supervisor_state(node).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def wait_for_agent(files: LabFiles, node: str, supervisor: int, exits: int = 0,
                   timeout: float = AGENT_READY_TIMEOUT) -> int:
    """Until the agent started after `exits` exits serves CNI calls; returns its PID. An
    agent that exits meanwhile fails the wait with its last log line (the supervisor would
    only start it again)."""
    path = str(files.agent_socket(node))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = supervisor_state(files, node)
        if state.get("exits", 0) > exits:
            raise LabError(f"agent of {node} exited during start: "
                           f"{_last_line(files.agent_log(node))}")
        if not procs.is_alive(supervisor):
            raise LabError(f"the supervisor of {node}'s agent exited: "
                           f"{_last_line(files.agent_log(node))}")
        pid = state.get("agentPid")
        if pid is not None and state.get("exits", 0) == exits:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(path)
                return pid
            except OSError:
                pass
        time.sleep(0.05)
    raise LabError(f"agent of {node} not ready after {timeout:.0f}s: "
                   f"{_last_line(files.agent_log(node))}")


def _last_line(path: Path) -> str:
    """The log's last line: errors are one line, and a traceback ends with its exception.
    (The log itself goes with the half-built lab, so the line is all that is left.)"""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"


def up(plan: LabPlan, files: LabFiles | None = None) -> LabRecord:
    """Build the lab; on any failure remove what was built and raise LabError. An existing lab
    of that name is LabExists and is left alone."""
    files = files or LabFiles(plan.name)
    exists = LabExists(f"lab {plan.name!r} already exists; run `gingham lab down --name "
                       f"{plan.name}` first")
    if files.exists() or procs.list_netns(f"{plan.name}-"):
        raise exists
    record = LabRecord(name=plan.name, plan=_plan_json(plan))
    try:
        files.create(record)  # first, so `down` can undo a half-built lab
    except FileExistsError:
        raise exists from None
    try:
        _build(plan, files, record)
    except BaseException as err:
        # A half-built lab would block the next `up` of this name; Ctrl-C included.
        try:
            down(plan.name, files)
        except Exception as cleanup:
            raise LabError(f"lab up failed ({err}), and so did removing the half-built lab: "
                           f"{cleanup}") from err
        if isinstance(err, (ValueError, LookupError, RuntimeError, OSError)):
            raise LabError(f"lab up failed, half-built lab {plan.name} removed: {err}") from err
        raise
    return record


def _build(plan: LabPlan, files: LabFiles, record: LabRecord) -> None:
    hosts = [plan.external, *([plan.control] if plan.datastore == "etcd" else []),
             *plan.nodes]
    for name in (*(s.name for s in plan.segments), *(r.name for r in plan.routers),
                 *(h.name for h in hosts)):
        procs.add_netns(netns_name(plan.name, name))
    for segment in plan.segments:
        underlay.build_segment(plan.name, segment)
    for router in plan.routers:
        underlay.wire_router(plan, router)
    for host in hosts:
        underlay.wire_host(plan, host)
    control.start_datastore(plan, files, record)
    control.write_network_config(plan, record)
    for router in plan.routers:
        if router.bgp_asn is not None:
            tor.start(plan, router, files)
    install_plugins(files.bin_dir)
    for node in plan.nodes:
        record.supervisors[node.name] = start_agent(files, record, node)
        files.save(record)
    herd = len(plan.nodes)
    for node in plan.nodes:
        wait_for_agent(files, node.name, record.supervisors[node.name],
                       timeout=AGENT_READY_TIMEOUT + START_SECONDS_PER_AGENT * herd)
    wait_for_mesh(files, [n.name for n in plan.nodes],
                  timeout=AGENT_READY_TIMEOUT + MESH_SECONDS_PER_NODE * herd)


def wait_for_mesh(files: LabFiles, nodes: list[str], timeout: float = AGENT_READY_TIMEOUT,
                  restarted: tuple[str, float] | None = None) -> None:
    """Until every agent has applied a picture with every other node in it, so a lab is
    returned with its dataplane programmed, not merely with agents that serve.
    `restarted` (node, time): that node's status written before then is its previous
    agent's, and does not count."""
    deadline = time.monotonic() + timeout

    def synced(node: str) -> bool:
        status = node_status(files, node) or {}
        fresh = restarted is None or node != restarted[0] or \
            status.get("updated", 0) >= restarted[1]
        return status.get("peers", -1) >= len(nodes) - 1 and fresh

    while True:
        behind = [n for n in nodes if not synced(n)]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise LabError(f"agents of {', '.join(behind)} have not seen every node after "
                           f"{timeout:.0f}s")
        time.sleep(0.02)


def node_status(files: LabFiles, node: str) -> dict | None:
    """The node agent's own status.json (lease, datastore state, problems)."""
    return read_status(files.node_dir(node) / "run" / "status.json")


# -- nodes joining and leaving a running lab ------------------------------------------


def add_node(lab: str, files: LabFiles | None = None, segment: str | None = None) -> NodePlan:
    """A new node on `segment` (default: the first), running an agent that joins. If it
    fails, whatever it added (namespace, agent, lease, files) is removed, as by `node del`."""
    files = files or LabFiles(lab)
    with files.locked():
        record = files.load()
        plan = plan_of(record)
        plan = plan.with_node(plan.next_node_index(), segment)
        node = plan.nodes[-1]
        record.plan = _plan_json(plan)  # recorded first: `down` finds a half-added node
        files.save(record)
    try:
        procs.add_netns(netns_name(lab, node.name))
        underlay.wire_host(plan, node)
        with files.locked():
            record = files.load()
            record.supervisors[node.name] = start_agent(files, record, node)
            files.save(record)
        wait_for_agent(files, node.name, record.supervisors[node.name])
        wait_for_mesh(files, [n.name for n in plan.nodes])
    except BaseException as err:
        try:
            delete_node(lab, node.name, files)
        except Exception as cleanup:
            raise LabError(f"lab node add failed ({err}), and so did removing {node.name}: "
                           f"{cleanup}") from err
        if isinstance(err, Exception):
            raise LabError(f"lab node add failed, {node.name} removed: {err}") from err
        raise
    return node


def delete_node(lab: str, name: str, files: LabFiles | None = None) -> None:
    """Stop the node's agent, remove it, its pods and its lease: as a node leaving for good
    (an operator deleting it), so the other nodes drop their routes to it at once. Safe on
    a half-added node."""
    files = files or LabFiles(lab)
    with files.locked():
        record = files.load()
        plan = plan_of(record).without_node(name)
        supervisor = record.supervisors.pop(name, None)
        pods = [p for p in record.pods.values() if p.node == name]
        for pod in pods:
            record.pods.pop(pod.ref)
        record.plan = _plan_json(plan)
        files.save(record)
    if supervisor is not None and _is_our_supervisor(files, name, supervisor):
        procs.stop_pids([supervisor])
    for ns in [p.netns for p in pods] + [netns_name(lab, name)]:
        procs.stop_pids(procs.pids_in_netns(ns))
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    with control.lab_registry(record) as registry:
        for lease in registry.leases().leases:
            if lease.attrs.node_name == name:
                registry.delete_lease(lease)
        registry.delete_node(name)
    subprocess.run(["rm", "-rf", "--one-file-system", str(files.node_dir(name))], check=True)


# -- a node's agent, under its supervisor ----------------------------------------------


def _supervisor(files: LabFiles, node: str) -> int:
    pid = files.load().supervisors.get(node)
    if pid is None or not _is_our_supervisor(files, node, pid):
        raise LabError(f"the agent of {node} is not supervised (stopped?); "
                       f"`gingham lab node start {node}` starts it")
    return pid


def restart_agent(files: LabFiles, node: str) -> int:
    """Stop the node's agent and start it again now; returns the new agent's PID once it
    serves and has applied every node's lease."""
    plan_of(files.load()).node(node)
    supervisor = _supervisor(files, node)
    before = supervisor_state(files, node)
    since = time.time()
    os.kill(supervisor, signal.SIGHUP)
    pid = wait_for_agent(files, node, supervisor, before.get("exits", 0) + 1)
    wait_for_mesh(files, [n.name for n in plan_of(files.load()).nodes],
                  restarted=(node, since))
    return pid


def kill_agent(files: LabFiles, node: str, sig: int = signal.SIGKILL) -> int:
    """Signal the agent itself (a crash, which its supervisor answers); returns its PID."""
    _supervisor(files, node)
    pid = supervisor_state(files, node).get("agentPid")
    if pid is None:
        raise LabError(f"the agent of {node} is not running now")
    os.kill(pid, sig)
    return pid


def stop_agent(files: LabFiles, node: str) -> None:
    """Stop the node's agent and its supervisor: nothing restarts it until start_agent.
    Routes and pods stay, as for any agent stop."""
    with files.locked():
        record = files.load()
        supervisor = record.supervisors.pop(node, None)
        files.save(record)
    if supervisor is not None and _is_our_supervisor(files, node, supervisor):
        procs.stop_pids([supervisor], grace=10.0)


def resume_agent(files: LabFiles, node: str) -> int:
    """Start a stopped node's agent under a new supervisor; returns its PID once it serves."""
    with files.locked():
        record = files.load()
        plan_node = plan_of(record).node(node)
        running = record.supervisors.get(node)
        if running is not None and _is_our_supervisor(files, node, running):
            raise LabError(f"the agent of {node} is running already "
                           f"(`gingham lab node restart {node}` restarts it)")
        record.supervisors[node] = supervisor = start_agent(files, record, plan_node)
        files.save(record)
    return wait_for_agent(files, node, supervisor)


def set_log_denied(files: LabFiles, on: bool) -> list[str]:
    """Turn the agents' logging of denied packets on or off in a running lab: the lab's
    record says it from now on, and each running agent is started again with it, one after
    the other (an agent restart leaves routes, pods and the policy table in place); the
    nodes restarted."""
    with files.locked():
        record = files.load()
        record.plan["log_denied"] = on
        files.save(record)
        running = [n.name for n in plan_of(record).nodes if record.supervisors.get(n.name)]
    for node in running:
        stop_agent(files, node)
        resume_agent(files, node)
    return running


def agent_state(files: LabFiles, node: str, supervisor: int | None) -> dict:
    """For `lab status`: agent (running, restarting or down), its live PID, restarts."""
    state = supervisor_state(files, node)
    pid = state.get("agentPid")
    if supervisor is None or not _is_our_supervisor(files, node, supervisor):
        agent, pid = "down", None
    elif pid is not None and procs.is_alive(pid):
        agent = "running"
    else:
        agent, pid = "restarting", None
    return {"agent": agent, "agentPid": pid, "restarts": state.get("restarts", 0),
            "lastExit": state.get("lastExit")}


def node_reports(files: LabFiles, record: LabRecord) -> list[dict]:
    """Each node as its agent and its supervisor report it, for `lab status` and `check`.
    A down agent's status.json is its last word, so its datastore state and problems are
    not shown as current."""
    nodes = []
    for n in plan_of(record).nodes:
        agent = node_status(files, n.name) or {}
        supervised = agent_state(files, n.name, record.supervisors.get(n.name))
        running = supervised["agent"] == "running"
        nodes.append({
            "name": n.name, "address": str(n.address.ip),
            "podSubnet": agent.get("subnet") or "-",
            "datastore": agent.get("datastore", "-") if running else "-",
            **supervised,
            "supervisorPid": record.supervisors.get(n.name),
            "pods": sum(1 for p in record.pods.values() if p.node == n.name),
            "problems": agent.get("problems", []) if running else [],
        })
    return nodes


# -- down -----------------------------------------------------------------------------


def down(lab: str, files: LabFiles | None = None) -> list[str]:
    """Remove every process, namespace and file of the lab; fine to run on any state."""
    files = files or LabFiles(lab)
    namespaces = procs.list_netns(f"{lab}-")
    if files.exists():
        try:
            record = files.load()
            # Supervisors first, or they would restart the agents stopped below.
            procs.stop_pids(sorted(pid for node, pid in record.supervisors.items()
                                   if _is_our_supervisor(files, node, pid)))
        except (ValueError, KeyError, TypeError):
            pass  # a corrupt record: the namespaces still say what is ours
    pids: set[int] = set()
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


def _is_our_supervisor(files: LabFiles, node: str, pid: int) -> bool:
    """Whether `pid` is still the supervisor this lab started for `node`. After a crash the
    PID may be reused, possibly by another lab's supervisor, so its state path must be this
    node's."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return (b"gingham.lab.supervisor" in cmdline and procs.is_alive(pid)
            and str(files.supervisor_state(node)).encode() in cmdline)


# -- pods -----------------------------------------------------------------------------


def runtime_for(files: LabFiles, lab: str, node: str) -> CniRuntime:
    node_ns = netns_name(lab, node)
    if node_ns not in procs.list_netns(node_ns):
        raise LabError(f"namespace {node_ns} does not exist (`gingham lab down --name {lab}` "
                       "cleans up a broken lab)")
    try:
        conflist = json.loads((files.conf_dir(node) / CONFLIST_NAME).read_text())
    except FileNotFoundError:
        raise LabError(f"node {node} has no CNI config yet (is its agent running?)") from None
    return CniRuntime(procs.netns_path(node_ns), conflist,
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
            capabilities: dict | None = None, files: LabFiles | None = None,
            ports: list[NamedPort] | None = None) -> PodRecord:
    """Make the pod's namespace and ADD it through the node's chain, then declare its object
    (labels, named ports, node) in the datastore, the API server's part; the CNI service
    adds its IP. A datastore that does not answer does not stop the pod (Flannel mode
    serves pods meanwhile): it is said, and the pod is recorded without its labels."""
    files = files or LabFiles(lab)
    namespace, name = parse_pod_ref(ref)
    with files.locked():
        record = files.load()
        plan_of(record).node(node)
        if ref in record.pods:
            raise LabError(f"pod {ref} already exists on {record.pods[ref].node}")
        pod_ns = pod_netns_name(lab, namespace, name)
        # `a-b/c` and `a/b-c` map to the same namespace name; the second must not take over
        # (or, failing, delete) the first one's namespace.
        clash = next((p for p in record.pods.values() if p.netns == pod_ns), None)
        if clash is not None:
            raise LabError(f"pod {ref} would use namespace {pod_ns}, which belongs to pod "
                           f"{clash.ref}; choose another name")
        runtime = runtime_for(files, lab, node)  # fails before anything is made
        pod = PodRecord(namespace, name, node, pod_ns, secrets.token_hex(32), "eth0", "",
                        dict(labels or {}))
        record.pods[ref] = pod  # recorded before it exists, so `down` finds a half-made pod
        files.save(record)
    att = _attachment(pod, capabilities)
    made_netns = False
    try:
        procs.add_netns(pod.netns)
        made_netns = True
        pod.ip = _pod_ip(runtime.add(att))
    except BaseException as err:
        # As libcni after a failed ADD: DEL the whole chain, then forget the pod, so a
        # failed `pod add` leaves nothing behind and the name can be used again.
        undo_error = _undo_add(files, runtime, pod, att, made_netns)
        if undo_error is not None and isinstance(err, Exception):
            raise LabError(f"{err} (and undoing it failed: {undo_error})") from err
        raise
    with files.locked():
        record = files.load()
        record.pods[ref] = pod
        files.save(record)
    try:
        with control.lab_registry(record, timeout=DECLARE_TIMEOUT) as registry:
            WorkloadStore(registry.store, registry.prefix).declare_pod(Pod(
                namespace, name, dict(labels or {}), node, ports=list(ports or [])))
    except (StoreError, RuntimeError) as err:
        log.warning("pod %s is not declared in the datastore (%s): recorded without its "
                    "labels and ports", ref, err)
    return pod


def _pod_ip(result: dict) -> str:
    for ip in result.get("ips") or []:
        address = ipaddress.ip_interface(ip["address"])
        if address.version == 4:
            return str(address.ip)
    raise LabError(f"the chain's result has no IPv4 address: {json.dumps(result)}")


def _undo_add(files: LabFiles, runtime: CniRuntime, pod: PodRecord, att: Attachment,
              made_netns: bool) -> Exception | None:
    error: Exception | None = None
    if made_netns:  # else no plugin ran, and the namespace of that name is not ours to touch
        # As kubelet tears a failed sandbox down: DEL again while the node says "try again
        # later" (its agent restarting), or what the ADD took (an address) would leak.
        deadline = time.monotonic() + UNDO_PATIENCE
        while True:
            try:
                runtime.delete(att)
                break
            except PluginFailed as err:
                if err.code != TRY_AGAIN_LATER or time.monotonic() > deadline:
                    error = err
                    break
                time.sleep(0.2)
            except Exception as err:
                error = err
                break
        subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True)
    _unrecord(files, pod)
    return error


def _unrecord(files: LabFiles, pod: PodRecord) -> None:
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
    # If DEL fails the pod stays recorded and its namespace stays, as a runtime keeps a
    # sandbox whose teardown failed: `pod del` can be retried, and `lab down` still removes it.
    runtime_for(files, lab, pod.node).delete(_attachment(pod))
    subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True)
    _unrecord(files, pod)
    return pod


def target_netns(lab: str, target: str, files: LabFiles | None = None) -> str:
    """The namespace of NAMESPACE/POD, a node, a router, a segment, `external` or
    `control`."""
    files = files or LabFiles(lab)
    record = files.load()
    if "/" in target:
        pod = record.pods.get(target)
        if pod is None:
            raise LabError(f"lab {lab} has no pod {target}")
        return pod.netns
    plan = plan_of(record)
    hosts = {plan.external.name, *(s.name for s in plan.segments),
             *(r.name for r in plan.routers)}
    if plan.datastore == "etcd":
        hosts.add(plan.control.name)
    if target not in hosts:
        try:
            plan.node(target)
        except PlanError as err:
            raise LabError(str(err)) from None
    return netns_name(lab, target)
