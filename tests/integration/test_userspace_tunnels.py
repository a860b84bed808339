"""udp and (this kernel having no ipip module) userspace ipip: the agent carries pod packets
through a TUN device, across a router, as real UDP/8285 or IP-protocol-4 packets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gingham.lab import procs

EXAMPLE = Path(__file__).parents[2] / "examples" / "two-subnets.yaml"
# pinned to node1 -> node3: stragglers of earlier transfers between other nodes don't count
WIRE = {"udp": ("flannel0", 1472, ["udp", "port", "8285", "and", "src", "192.168.50.11"]),
        "ipip": ("flannel.ipip", 1480, ["ip", "proto", "4", "and", "src", "192.168.50.11"])}


@pytest.fixture(scope="module", params=["udp", "ipip"])
def tunnel_lab(request, make_module_lab):
    lab = make_module_lab(topology=EXAMPLE, backend=request.param)
    for node in ("node1", "node2", "node3"):
        lab.add_pod(node, f"default/{node}")
    return request.param, lab


def test_every_pair_passes_across_the_router(tunnel_lab, cli):
    _, lab = tunnel_lab
    result = cli("lab", "check", "--name", lab.name, "--json")
    assert result.returncode == 0, [r for r in json.loads(result.stdout)["results"]
                                    if not r["ok"]]


def test_routes_go_into_the_tun_device_and_mtu_leaves_room(tunnel_lab):
    backend, lab = tunnel_lab
    device, mtu, _ = WIRE[backend]
    routes = json.loads(lab.run("node1", "ip", "-j", "route", "show", "proto", "71").stdout)
    assert {r["dst"]: r["dev"] for r in routes} == {"10.244.2.0/24": device,
                                                    "10.244.3.0/24": device}
    link = json.loads(lab.run("node1", "ip", "-j", "-d", "link", "show", device).stdout)[0]
    assert link["linkinfo"]["info_kind"] == "tun" and link["mtu"] == mtu
    env = (lab.files.node_dir("node1") / "run" / "subnet.env").read_text()
    assert f"FLANNEL_MTU={mtu}" in env


def test_packets_on_the_wire_are_the_real_thing(tunnel_lab):
    backend, lab = tunnel_lab
    pod3 = lab.files.load().pods["default/node3"].ip

    def ping() -> None:
        assert lab.pings("default/node1", pod3)

    out = lab.capture_one("right", WIRE[backend][2], ping)
    assert "192.168.50.11" in out and "192.168.60.13" in out
    if backend == "ipip":
        assert "proto IPIP (4)" in out and f"> {pod3}: ICMP echo request" in out


def test_a_stopped_agent_leaves_no_tun_device(tunnel_lab):
    backend, lab = tunnel_lab
    device = WIRE[backend][0]
    record = lab.files.load()
    pid = record.supervisors["node2"]
    procs.stop_pids([pid])
    deadline = time.monotonic() + 3  # the kernel unregisters it just after the fd closes
    while lab.run("node2", "ip", "link", "show", device, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"{device} outlived its agent"
        time.sleep(0.05)
    from gingham.lab import cluster

    with lab.files.locked():
        record = lab.files.load()
        record.supervisors["node2"] = cluster.start_agent(lab.files, record, lab.plan.node("node2"))
        lab.files.save(record)
    cluster.wait_for_agent(lab.files, "node2", record.supervisors["node2"])
    deadline = time.monotonic() + 5
    while not lab.pings("default/node1", lab.files.load().pods["default/node2"].ip):
        assert time.monotonic() < deadline, "the restarted agent's tunnel never carried"
