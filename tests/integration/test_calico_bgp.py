"""Calico mode with BGP (issue 11): BIRD 2 on every node of a node-to-node
mesh, the blocks announced and learned into the kernel as `proto bird`, BIRD restarted by
the agent when it dies."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import waiting

N = ipaddress.IPv4Network


def eventually(check, timeout: float = 15.0, every: float = 0.2) -> bool:
    """BGP sessions come up in seconds: a longer wait than the other tests'."""
    return waiting.eventually(check, timeout, every)


def routes(lab, node: str) -> list[dict]:
    return json.loads(lab.run(node, "ip", "-j", "route", "show").stdout)


def own_block(lab, node: str) -> str:
    """The node's block, once its blackhole is in the node's kernel (BIRD's, or with VXLAN
    the agent's, each a moment after the first pod's ADD)."""
    found: list[str] = []
    assert eventually(lambda: found.extend(r["dst"] for r in routes(lab, node)
                                           if r.get("type") == "blackhole") or found)
    return found[0]


def bird_pid(lab, node: str) -> int | None:
    """The PID of what listens on TCP 179 in the node (BIRD), None while nothing does."""
    out = lab.run(node, "ss", "-ltnpH", "sport", "= :179").stdout
    return int(out.split("pid=")[1].split(",")[0]) if "pid=" in out else None


@pytest.fixture(scope="module")
def mesh(make_module_lab):
    lab = make_module_lab(3, via_cli=True, cli_args=("--mode", "calico"))  # BGP: the default
    ips = {n: lab.add_pod(n, f"default/p-{n}").ip for n in ("node1", "node2", "node3")}
    return lab, ips


def cut_off(lab, node: str) -> None:
    """The node falls off the network: its port on the underlay bridge goes down."""
    port = next(line.split("@")[0] for line in lab.run(
        "underlay", "ip", "-br", "link").stdout.splitlines() if line.startswith(f"{node}@"))
    lab.run("underlay", "ip", "link", "set", port, "down")


def learned(lab, node: str) -> dict[str, str]:
    return {r["dst"]: r.get("gateway", r.get("type")) for r in routes(lab, node)
            if r.get("protocol") == "bird"}


def test_blocks_are_learned_by_bgp_in_the_seeds_shape(mesh, cli):
    lab, ips = mesh
    assert eventually(lambda: all(len(learned(lab, n)) == 3 for n in ips))  # every node
    got = learned(lab, "node1")
    assert sorted(got.values()) == ["192.168.50.12", "192.168.50.13", "blackhole"]
    assert not [r for r in routes(lab, "node1") if r.get("protocol") == "80"]
    for source in ips:
        for target, ip in ips.items():
            assert source == target or lab.pings(f"default/p-{source}", ip), (source, target)
    assert lab.run("node1", "ss", "-ltnH", "sport", "= :179").stdout.strip()
    assert json.loads(cli("lab", "status", "--name", lab.name, "--json").stdout)["bgp"] is True
    assert cli("lab", "check", "--name", lab.name).returncode == 0


def test_bird_that_dies_is_started_again_and_routes_stay(mesh):
    lab, ips = mesh
    before = bird_pid(lab, "node2")
    os.kill(before, signal.SIGKILL)
    # persist: node2's kernel keeps what BIRD had programmed meanwhile
    assert learned(lab, "node2")
    assert eventually(lambda: bird_pid(lab, "node2") not in (None, before))
    assert eventually(lambda: len(learned(lab, "node1")) == 3 and len(learned(lab, "node2")) == 3)
    assert lab.pings("default/p-node1", ips["node2"])


def test_node_status_reads_like_calicoctl(mesh, cli):
    lab, _ = mesh
    assert eventually(lambda: cli("--lab", lab.name, "node", "status", "--node", "node1")
                      .stdout.count("Established") == 2)
    text = cli("--lab", lab.name, "node", "status", "--node", "node1").stdout
    assert text.startswith("Calico process is running.\n\nIPv4 BGP status\n+")
    assert "| PEER ADDRESS |" in text.replace("  PEER ADDRESS ", " PEER ADDRESS ")
    assert "| 192.168.50.12 | node-to-node mesh | up    |" in text
    assert text.endswith("IPv6 BGP status\nNo IPv6 peers found.\n")
    shown = json.loads(cli("--lab", lab.name, "node", "status", "--node", "node3",
                           "-o", "json").stdout)
    assert [p["peerAddress"] for p in shown["ipv4Peers"]] == ["192.168.50.11",
                                                              "192.168.50.12"]


RR = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false, asNumber: 64512}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node1
  labels: {route-reflector: "true"}
spec:
  bgp: {ipv4Address: 192.168.50.11/24, routeReflectorClusterID: 244.0.0.1}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec: {nodeSelector: all(), peerSelector: "route-reflector == 'true'"}
"""


def test_route_reflectors_as_the_seeds_set_them_up(make_lab, cli, tmp_path):
    lab = make_lab(3, via_cli=True, cli_args=("--mode", "calico", "--bgp", "on"))
    ips = {n: lab.add_pod(n, f"default/p-{n}").ip for n in ("node1", "node2", "node3")}
    (tmp_path / "rr.yaml").write_text(RR)
    assert cli("--lab", lab.name, "apply", "-f", str(tmp_path / "rr.yaml")).stdout.strip() \
        == "Successfully applied 3 resource(s)"
    status = lambda n: cli("--lab", lab.name, "node", "status", "--node", n).stdout  # noqa: E731
    # the clients peer only with the reflector; it reflects their blocks to each other
    assert eventually(lambda: status("node2").count("node specific") == 1
                      and status("node1").count("Established") == 2)
    assert "192.168.50.11 | node specific" in status("node3")
    assert eventually(lambda: learned(lab, "node2").get(
        own_block(lab, "node3"))
        == "192.168.50.13")  # node3's block, next hop node3 itself, learned through node1
    assert lab.pings("default/p-node2", ips["node3"])
    assert cli("lab", "check", "--name", lab.name).returncode == 0
    (tmp_path / "off.yaml").write_text("apiVersion: projectcalico.org/v3\n"
                                       "kind: BGPConfiguration\nmetadata: {name: default}\n"
                                       "spec: {nodeToNodeMeshEnabled: false}\n")
    cli("--lab", lab.name, "apply", "-f", str(tmp_path / "off.yaml"))
    cli("--lab", lab.name, "delete", "bgppeer", "peer-with-route-reflectors")
    assert eventually(lambda: "No IPv4 peers found." in status("node2"))


def test_restarting_the_agent_or_bird_withdraws_no_route_and_drops_no_packet(make_lab):
    from gingham.lab import cluster

    lab = make_lab(2, via_cli=True, cli_args=("--mode", "calico", "--bgp", "on"))
    a = lab.add_pod("node1", "default/a").ip
    lab.add_pod("node2", "default/b")
    assert eventually(lambda: len(learned(lab, "node2")) == 2)
    block = next(d for d, via in learned(lab, "node2").items() if via == "192.168.50.11")
    pinger = lab.popen("default/b", "ping", "-n", "-i", "0.02", "-W", "1", a,
                       stdout=subprocess.PIPE, text=True)
    gaps = []
    try:
        time.sleep(1)
        before = bird_pid(lab, "node1")
        cluster.restart_agent(lab.files, "node1")  # the agent goes and comes back
        for _ in range(40):
            gaps += [] if block in learned(lab, "node2") else ["agent restart"]
            time.sleep(0.05)
        assert bird_pid(lab, "node1") == before  # taken over, not restarted
        os.kill(before, signal.SIGKILL)  # BIRD itself dies: started again, peers wait
        for _ in range(80):
            gaps += [] if block in learned(lab, "node2") else ["bird restart"]
            time.sleep(0.05)
        assert eventually(lambda: bird_pid(lab, "node1") not in (None, before))
        time.sleep(1)
    finally:
        pinger.send_signal(signal.SIGINT)
        out = pinger.communicate(timeout=10)[0]
    assert gaps == []
    sent, received = (int(x.split()[0]) for x in out.split("\n---")[1].splitlines()[1]
                      .split(", ")[:2])
    assert sent > 200 and received == sent, out.splitlines()[-2:]


def test_bgp_turned_off_leaves_nothing_of_bird(tmp_path):
    """What an agent without --bgp does first on a node where BIRD ran: it stops that BIRD
    and takes the routes BIRD left in the kernel (persist) out; others' routes stay."""
    import secrets

    from gingham.calico.bird import retire
    from gingham.dataplane import netns

    ns = f"tbo{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    bird = None
    try:
        ip = ["ip", "-n", ns]
        subprocess.run([*ip, "link", "set", "lo", "up"], check=True)
        subprocess.run([*ip, "route", "add", "blackhole", "10.244.0.0/26", "proto", "bird"],
                       check=True)
        subprocess.run([*ip, "route", "add", "blackhole", "10.9.0.0/24", "proto", "static"],
                       check=True)
        (tmp_path / "bird.conf").write_text("router id 192.0.2.1;\nprotocol device {}\n")
        bird = subprocess.Popen(["ip", "netns", "exec", ns, "bird", "-f", "-c",
                                 str(tmp_path / "bird.conf"), "-s", str(tmp_path / "bird.ctl"),
                                 "-P", str(tmp_path / "bird.pid")])
        assert eventually(lambda: (tmp_path / "bird.pid").exists())
        with netns.entered(f"/run/netns/{ns}"):
            retire(tmp_path)
        assert bird.wait(10) is not None
        left = subprocess.run([*ip, "route", "show"], capture_output=True, text=True).stdout
        assert "10.244.0.0/26" not in left and "blackhole 10.9.0.0/24 proto static" in left
    finally:
        if bird is not None and bird.poll() is None:
            bird.kill()
            bird.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_with_bfd_a_vanished_node_is_withdrawn_within_a_second(make_lab, cli, tmp_path):
    lab = make_lab(3, via_cli=True, cli_args=("--mode", "calico", "--bgp", "on"))
    for n in ("node1", "node2", "node3"):
        lab.add_pod(n, f"default/p-{n}")
    (tmp_path / "bfd.yaml").write_text("apiVersion: projectcalico.org/v3\n"
                                       "kind: BGPConfiguration\nmetadata: {name: default}\n"
                                       "spec: {bfdEnabled: true}\n")
    assert cli("--lab", lab.name, "apply", "-f", str(tmp_path / "bfd.yaml")).returncode == 0
    control = lab.files.node_dir("node1") / "run" / "bird.ctl"
    sessions = lambda: subprocess.run(["birdc", "-s", str(control), "show", "bfd", "sessions"],  # noqa: E731
                                      capture_output=True, text=True).stdout
    assert eventually(lambda: sessions().count(" Up ") == 2)
    assert eventually(lambda: "192.168.50.13" in learned(lab, "node1").values())
    started = time.monotonic()
    cut_off(lab, "node3")
    assert eventually(lambda: "192.168.50.13" not in learned(lab, "node1").values(), 5, 0.02)
    took = time.monotonic() - started
    print(f"\nBFD: node3's block withdrawn from node1 after {took:.2f} s")
    assert took < 1.0


TWO_RRS = """
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false, bfdEnabled: true}
---
apiVersion: projectcalico.org/v3
kind: NodeList
items:
- apiVersion: projectcalico.org/v3
  kind: Node
  metadata: {name: node1, labels: {route-reflector: "true"}}
  spec: {bgp: {ipv4Address: 192.168.50.11/24, routeReflectorClusterID: 244.0.0.1}}
- apiVersion: projectcalico.org/v3
  kind: Node
  metadata: {name: node2, labels: {route-reflector: "true"}}
  spec: {bgp: {ipv4Address: 192.168.50.12/24, routeReflectorClusterID: 244.0.0.1}}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec: {nodeSelector: all(), peerSelector: "route-reflector == 'true'"}
"""


def test_two_route_reflectors_and_losing_one_keeps_every_route(make_lab, cli, tmp_path):
    lab = make_lab(4, via_cli=True, cli_args=("--mode", "calico", "--bgp", "on"))
    ips = {n: lab.add_pod(n, f"default/p-{n}").ip for n in ("node1", "node2", "node3", "node4")}
    (tmp_path / "rr.yaml").write_text(TWO_RRS)
    assert cli("--lab", lab.name, "apply", "-f", str(tmp_path / "rr.yaml")).returncode == 0
    status = lambda n: cli("--lab", lab.name, "node", "status", "--node", n).stdout  # noqa: E731
    # each client peers with both reflectors, each reflector with the other and the clients
    assert eventually(lambda: status("node3").count("Established") == 2
                      and status("node1").count("Established") == 3)
    node4_block = own_block(lab, "node4")
    assert eventually(lambda: learned(lab, "node3").get(node4_block) == "192.168.50.14")
    assert eventually(lambda: all(len(learned(lab, n)) == 4 for n in ips))  # every block
    cut_off(lab, "node1")  # reflector node1 is lost
    assert eventually(lambda: status("node3").count("Established") == 1)
    time.sleep(1)
    assert learned(lab, "node3").get(node4_block) == "192.168.50.14"  # through node2
    assert lab.pings("default/p-node3", ips["node4"])
    assert lab.pings("default/p-node4", ips["node2"])


TOR = Path(__file__).parents[2] / "examples" / "tor-bgp.yaml"


def test_a_top_of_rack_router_routes_pods_between_segments_without_a_tunnel(make_lab, cli):
    from gingham.lab import tor

    lab = make_lab(topology=TOR, mode="calico", bgp=True)
    ips = {n: lab.add_pod(n, f"default/p-{n}").ip for n in ("node1", "node2", "node3")}
    node3_block = N(own_block(lab, "node3"))
    # the seeds' picture: node1 sends node3's pods to its gateway router, no tunnel
    assert eventually(lambda: learned(lab, "node1").get(str(node3_block)) == "192.168.50.1")
    assert eventually(lambda: all(len(learned(lab, n)) == 3 for n in ips))  # every block
    assert not [r for r in routes(lab, "node1") if "calico" in r.get("dev", "")]
    tor_routes = json.loads(lab.run("tor1", "ip", "-j", "route", "show").stdout)
    assert {"dst": str(node3_block), "gateway": "192.168.60.13", "protocol": "bgp"} in [
        {k: r.get(k) for k in ("dst", "gateway", "protocol")} for r in tor_routes]
    summary = tor.show(lab.files, "tor1", "show bgp summary")
    assert summary.count("64512") >= 3  # an eBGP session with every node
    for source in ips:
        for target, ip in ips.items():
            assert source == target or lab.pings(f"default/p-{source}", ip), (source, target)
    status = cli("--lab", lab.name, "node", "status", "--node", "node3").stdout
    assert "192.168.60.1  | node specific" in status
    assert cli("lab", "check", "--name", lab.name).returncode == 0


TWO_SUBNETS = Path(__file__).parents[2] / "examples" / "two-subnets.yaml"


def test_ipip_cross_subnet_routes_are_learned_by_bgp(make_lab):
    """Item 5: BIRD learns every block and puts the ones across the router through the
    IPIP device (here the userspace path's), the ones on the segment on the uplink."""
    lab = make_lab(topology=TWO_SUBNETS, mode="calico", encap="ipip", cross_subnet=True,
                   bgp=True)
    ips = {n: lab.add_pod(n, f"default/p-{n}").ip for n in ("node1", "node2", "node3")}
    assert eventually(lambda: all(len(learned(lab, n)) == 3 for n in ips))
    mine = {r["dst"]: r for r in routes(lab, "node1") if r.get("protocol") == "bird"}
    node2_block = next(d for d, r in mine.items() if r.get("gateway") == "192.168.50.12")
    node3_block = next(d for d, r in mine.items() if r.get("gateway") == "192.168.60.13")
    assert mine[node2_block]["dev"] == "eth0" and "onlink" not in mine[node2_block]["flags"]
    assert mine[node3_block]["dev"] == "calico.ipip" and "onlink" in mine[node3_block]["flags"]
    assert not [r for r in routes(lab, "node1") if r.get("protocol") == "80"]
    for source in ips:
        for target, ip in ips.items():
            assert source == target or lab.pings(f"default/p-{source}", ip), (source, target)


def test_vxlan_routes_stay_the_agents_and_its_blocks_are_announced(make_lab):
    """As with calico-node: BIRD announces a VXLAN pool's blocks but leaves its routes to
    the agent (felix's job), so they go through vxlan.calico, never through BIRD."""
    lab = make_lab(topology=TWO_SUBNETS, mode="calico", encap="vxlan", bgp=True)
    ips = {n: lab.add_pod(n, f"default/p-{n}").ip for n in ("node1", "node2", "node3")}
    node3_block = own_block(lab, "node3")

    def announced() -> bool:
        control = lab.files.node_dir("node1") / "run" / "bird.ctl"
        shown = lab.run("node1", "birdc", "-s", str(control), "show", "route",
                        node3_block).stdout
        return "Mesh_192_168_60_13" in shown

    assert eventually(announced)
    assert eventually(lambda: any(r["dst"] == node3_block and r.get("dev") == "vxlan.calico"
                                  and r.get("protocol") == "80" for r in routes(lab, "node1")))
    assert not learned(lab, "node1")  # no VXLAN route, no blackhole of BIRD's
    for source in ips:
        for target, ip in ips.items():
            assert source == target or lab.pings(f"default/p-{source}", ip), (source, target)


def node_problems(cli, lab, node: str) -> list[str]:
    status = json.loads(cli("lab", "status", "--name", lab.name, "--json").stdout)
    return next(n["problems"] for n in status["nodes"] if n["name"] == node)


def test_bad_bgp_input_is_reported_and_withdraws_nothing(make_lab, cli, tmp_path):
    """A peer that never answers, and a peer address given two AS numbers: each a problem
    in `lab status`, BIRD's config in force stays, no route is withdrawn."""
    lab = make_lab(2, via_cli=True, cli_args=("--mode", "calico"))
    ips = {n: lab.add_pod(n, f"default/p-{n}").ip for n in ("node1", "node2")}
    assert eventually(lambda: len(learned(lab, "node1")) == 2)
    silent = tmp_path / "silent.yaml"  # an address of the lab's segment nobody holds
    silent.write_text("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: "
                      "{name: silent}\nspec: {peerIP: 192.168.50.99, asNumber: 65099}\n")
    assert cli("--lab", lab.name, "apply", "-f", str(silent)).returncode == 0
    assert eventually(lambda: "BGP peer 192.168.50.99 has not been established for 10 s; "
                      "BIRD keeps trying (`node status` shows its state)"
                      in node_problems(cli, lab, "node1"), timeout=30)
    conf = lab.files.node_dir("node1") / "run" / "bird.conf"
    before = conf.read_text()
    clash = tmp_path / "clash.yaml"  # node2 is AS 64512 in the mesh
    clash.write_text("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: "
                     "{name: clash}\nspec: {peerIP: 192.168.50.12, asNumber: 65009}\n")
    assert cli("--lab", lab.name, "apply", "-f", str(clash)).returncode == 0
    assert eventually(lambda: "peer 192.168.50.12 is AS 64512 for one mesh node and AS 65009 "
                      "for a BGPPeer: BIRD's config is left as it was"
                      in node_problems(cli, lab, "node1"))
    assert conf.read_text() == before
    assert len(learned(lab, "node1")) == 2 and lab.pings("default/p-node1", ips["node2"])
    cli("--lab", lab.name, "delete", "bgppeer", "silent")
    cli("--lab", lab.name, "delete", "bgppeer", "clash")
    assert eventually(lambda: node_problems(cli, lab, "node1") == [])
