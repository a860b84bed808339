"""The node's conflist chains gingham -> portmap -> bandwidth (Debian's reference plugins), as
Flannel's does: a host port on the node reaches the pod from outside, iperf3 through the
bandwidth plugin's limits measures the configured rate, and DEL removes both again."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from gingham.dataplane import netns

NODE1 = "192.168.50.11"
EXTERNAL = "192.168.50.254"
RATE = 100_000_000
TOLERANCE = 0.10
IPERF_SECONDS = "4"
IPERF_PORT = 5201


@pytest.fixture(scope="module")
def chained(make_module_lab):
    """A one-node lab and pod default/web added through the CLI with a host port and both
    bandwidth limits. Yields (lab, web's IP)."""
    lab = make_module_lab(1)
    add = lab.gingham("pod", "add", "node1", "default/web", "--port", "8080:80",
                      "--ingress-rate", "100M", "--egress-rate", "100M")
    assert add.returncode == 0, add.stderr
    return lab, add.stdout.strip()


def test_conflist_chains_gingham_portmap_bandwidth(chained):
    lab, _ = chained
    plugins = lab.conflist()["plugins"]
    assert [p["type"] for p in plugins] == ["gingham", "portmap", "bandwidth"]
    assert plugins[1]["capabilities"] == {"portMappings": True}
    assert plugins[2]["capabilities"] == {"bandwidth": True}


@pytest.fixture
def web_server(chained, tmp_path):
    """`python3 -m http.server 80` in the pod, serving one file; yields its Popen."""
    lab, _ = chained
    (tmp_path / "hello.txt").write_text("hello from default/web\n")
    server = lab.popen("default/web", sys.executable, "-m", "http.server", "80",
                       "--bind", "0.0.0.0", "--directory", str(tmp_path),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lab.wait_listening("default/web", 80)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=10)


def _http_get(lab, source: str, url: str) -> str:
    # The socket is made while this thread is in the source namespace; no proxies from the
    # environment (they would not exist in there).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with netns.entered(lab.netns_path(source)), opener.open(url, timeout=5) as reply:
        return reply.read().decode()


def test_host_port_reaches_the_pod_from_external(chained, web_server):
    lab, _ = chained
    assert _http_get(lab, "external", f"http://{NODE1}:8080/hello.txt") \
        == "hello from default/web\n"
    web_server.terminate()
    log = web_server.communicate(timeout=10)[1]
    # DNAT only: the pod sees the external client's own address.
    assert f'{EXTERNAL} - - ' in log and '"GET /hello.txt HTTP/1.1" 200' in log, log


def test_host_port_reaches_the_pod_from_its_node(chained, web_server):
    lab, _ = chained
    assert _http_get(lab, "node1", f"http://{NODE1}:8080/hello.txt") \
        == "hello from default/web\n"


def _qdiscs(lab) -> list[dict]:
    return json.loads(lab.run("node1", "tc", "-j", "qdisc", "show").stdout)


def _links(lab, *kind: str) -> list[dict]:
    return json.loads(lab.run("node1", "ip", "-j", "-d", "link", "show", *kind).stdout)


def _host_veth(lab, pod: str) -> str:
    container_id = lab.files.load().pods[pod].container_id
    return next(link["ifname"] for link in _links(lab)
                if container_id in link.get("ifalias", ""))


def test_bandwidth_limits_are_tbf_both_ways(chained):
    lab, _ = chained
    veth = _host_veth(lab, "default/web")
    tbf = {q["dev"]: q["options"] for q in _qdiscs(lab) if q["kind"] == "tbf"}
    # Into the pod: tbf on the host veth. Out of it: the veth's ingress redirected to an ifb
    # device that has its own tbf.
    ifbs = [link["ifname"] for link in _links(lab, "type", "ifb")]
    assert len(ifbs) == 1
    assert tbf[veth]["rate"] == tbf[ifbs[0]]["rate"] == RATE // 8
    # The burst the CLI asks for: 1/80 s of traffic, in bytes here.
    assert tbf[veth]["burst"] == pytest.approx(RATE / 80 / 8, rel=0.01)


@pytest.fixture
def iperf_server(chained):
    lab, _ = chained
    server = lab.popen("default/web", "iperf3", "-s", "-p", str(IPERF_PORT),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lab.wait_listening("default/web", IPERF_PORT)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_iperf3_through_the_limit_measures_the_rate(chained, iperf_server, direction,
                                                    record_property):
    lab, ip = chained
    # The client runs in the node; -R makes the pod the sender (its egress limit).
    reverse = ["-R"] if direction == "egress" else []
    proc = lab.run("node1", "iperf3", "-c", ip, "-p", str(IPERF_PORT), "-t", IPERF_SECONDS,
                   "-J", *reverse, timeout=60)
    end = json.loads(proc.stdout)["end"]
    received = end["sum_received"]["bits_per_second"]
    sent = end["sum_sent"]["bits_per_second"]
    record_property(f"{direction}_received_mbps", round(received / 1e6, 2))
    record_property(f"{direction}_sent_mbps", round(sent / 1e6, 2))
    print(f"\niperf3 {direction} through 100M: received {received / 1e6:.2f} Mbit/s, "
          f"sent {sent / 1e6:.2f} Mbit/s")
    assert received == pytest.approx(RATE, rel=TOLERANCE)


def _portmap_rules(lab) -> str:
    # Debian's portmap runs the `iptables` on PATH, which is iptables-nft; the legacy tables
    # must stay empty anyway.
    return (lab.run("node1", "iptables-nft-save", "-t", "nat").stdout
            + lab.run("node1", "iptables-legacy-save", "-t", "nat", check=False).stdout)


def _dnat_chains(rules: str) -> set[str]:
    return {line[1:].split()[0] for line in rules.splitlines() if line.startswith(":CNI-DN-")}


def test_pod_del_removes_port_mapping_rules_and_ifb(chained):
    lab, web_ip = chained
    chains_before = _dnat_chains(_portmap_rules(lab))
    ifbs_before = {link["ifname"] for link in _links(lab, "type", "ifb")}
    add = lab.gingham("pod", "add", "node1", "default/gone", "--port", "9090:90/udp",
                      "--port", "9091:91", "--egress-rate", "10M", "--ingress-rate", "10M")
    assert add.returncode == 0, add.stderr
    ip = add.stdout.strip()
    cache = next((lab.files.cache_dir("node1") / "results").glob(
        f"*-{lab.files.load().pods['default/gone'].container_id}-eth0"))
    veth = _host_veth(lab, "default/gone")
    rules = _portmap_rules(lab)
    new_chains = _dnat_chains(rules) - chains_before
    new_ifbs = {link["ifname"] for link in _links(lab, "type", "ifb")} - ifbs_before
    assert len(new_chains) == 1 and len(new_ifbs) == 1
    assert f"--to-destination {ip}:90" in rules and f"--to-destination {ip}:91" in rules

    deleted = lab.gingham("pod", "del", "default/gone")
    assert deleted.returncode == 0, deleted.stderr

    rules = _portmap_rules(lab)
    assert not new_chains & _dnat_chains(rules)
    assert ip not in rules and "9090" not in rules and "9091" not in rules
    links = {link["ifname"] for link in _links(lab)}
    assert not new_ifbs & links and veth not in links
    assert {q["dev"] for q in _qdiscs(lab)} <= links
    assert not cache.exists()
    # The other pod's mapping and limits are untouched.
    assert f"--to-destination {web_ip}:80" in rules
    assert _dnat_chains(rules) == chains_before
    assert {link["ifname"] for link in _links(lab, "type", "ifb")} == ifbs_before
