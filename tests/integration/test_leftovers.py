"""A whole lab life through the CLI (up, pods with a host port and bandwidth limits, processes
in the pods, check, down) leaves nothing behind: no namespace, no process or thread in one of
its namespaces (nor a file descriptor or mount holding one alive), no device in the root
namespace, no agent, no file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from gingham.lab import procs
from gingham.lab.state import LabFiles

PROC = Path("/proc")
GINGHAM = Path(sys.executable).parent / "gingham"


def _inode(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:  # the task or process is gone
        return None


def _holders(inodes: set[int]) -> list[str]:
    """Every task in a netns of `inodes`, and every fd open on one."""
    found = []
    for pid in (p for p in os.listdir(PROC) if p.isdigit()):
        try:
            tids = os.listdir(PROC / pid / "task")
        except OSError:
            continue
        # Threads too: a thread that stepped into a namespace and never came back keeps it.
        found += [f"task {pid}/{tid}" for tid in tids
                  if _inode(PROC / pid / "task" / tid / "ns" / "net") in inodes]
        try:
            fds = os.listdir(PROC / pid / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(PROC / pid / "fd" / fd)
            except OSError:
                continue
            if target.startswith("net:[") and int(target[5:-1]) in inodes:
                found.append(f"fd {pid}/{fd}")
    return found


def _root_links() -> set[str]:
    # Read-only: the names of the root namespace's devices.
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def test_full_run_leaves_nothing_behind(cli, lab_name):
    root_links_before = _root_links()
    files = LabFiles(lab_name)
    assert cli("lab", "up", "--name", lab_name).returncode == 0
    for pod, extra in (("web", ["--port", "8080:80", "--ingress-rate", "50M",
                                "--egress-rate", "50M"]),
                       ("db", ["--port", "5432:5432/udp", "--egress-rate", "20M"]),
                       ("plain", [])):
        add = cli("lab", "pod", "add", "--name", lab_name, "node1", f"default/{pod}", *extra)
        assert add.returncode == 0, add.stderr
    # Long-lived processes in two pods and the node, started the user's way (`lab exec`):
    # the lab's record does not know them, `down` must find them by namespace.
    sleepers = [subprocess.Popen([str(GINGHAM), "lab", "exec", "--name", lab_name, target,
                                  "--", "sleep", "300"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for target in ("default/web", "default/db", "node1")]
    check = cli("lab", "check", "--name", lab_name)
    assert check.returncode == 0, check.stdout + check.stderr

    record = files.load()
    namespaces = procs.list_netns(f"{lab_name}-")
    assert len(namespaces) == 3 + 3
    inodes = {os.stat(procs.netns_path(ns)).st_ino for ns in namespaces}
    pids = set(record.supervisors.values()) | {s.pid for s in sleepers}
    deadline = time.monotonic() + 10
    while (not all(_inode(PROC / str(s.pid) / "ns" / "net") in inodes for s in sleepers)
           and time.monotonic() < deadline):
        time.sleep(0.05)  # until each `lab exec` has stepped in and become `sleep`
    assert all(procs.is_alive(pid) for pid in pids)
    assert {f"task {pid}/{pid}" for pid in pids} <= set(_holders(inodes))
    # Names this lab's devices have inside its namespaces (veths, ifbs, bridges, underlay
    # ports): none of them may show up in the root namespace, now or after `down`.
    lab_links = set()
    for ns in namespaces:
        out = procs.run_in(ns, ["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
        lab_links |= {line.split(": ")[1].split("@")[0] for line in out.splitlines()}
    lab_links -= {"lo", "eth0"}  # generic names the root namespace may have of its own
    assert {"cni0", "br0", "node1", "external"} <= lab_links
    assert sum(name.startswith("bwp") for name in lab_links) == 2  # the egress limits' ifbs

    down = cli("lab", "down", "--name", lab_name)
    assert down.returncode == 0, down.stderr
    for sleeper in sleepers:
        # The `lab exec` CLI became the sleep, so this is the sleeper's own exit status.
        assert sleeper.wait(timeout=10) < 0

    assert procs.list_netns(f"{lab_name}-") == []
    assert not files.dir.exists()
    assert not any(procs.is_alive(pid) for pid in pids)
    # Namespace teardown is asynchronous in the kernel, but nothing may still pin one.
    deadline = time.monotonic() + 5
    while (holders := _holders(inodes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holders == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f"/run/netns/{lab_name}-" not in mounts
    assert not lab_links & (_root_links() - root_links_before)
