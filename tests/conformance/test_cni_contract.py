"""The CNI contract of `gingham` and `gingham-ipam`, checked against the kernel.

Every test execs the installed plugin executables as a runtime does (CNI_* environment,
config on stdin, run in the node's namespace), then looks at what really exists: links,
addresses and routes in the namespaces, reservation files in the agent's state dir, and
packets between namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gingham.cni.install import SYSTEM_PYTHON, plugin_interpreter
from gingham.dataplane.podlink import host_veth_name
from gingham.lab import cluster, procs
from gingham.lab.runtime import Attachment, CniRuntime, PluginFailed
from gingham.lab.state import PodRecord

if TYPE_CHECKING:  # the fixtures' types; a conftest is not importable at run time
    from tests.conformance.conftest import Node, PluginCaller, PluginReply

VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
PLUGINS = ("gingham", "gingham-ipam")
DNS = {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"],
       "options": ["ndots:5"]}


def new_cid() -> str:
    return secrets.token_hex(16)


def assert_error(reply: PluginReply, code: int) -> dict:
    """The reply is a spec error object with `code`, on stdout, with a non-zero exit."""
    assert reply.returncode != 0, f"expected error {code}, got success: {reply.stdout}"
    error = reply.json
    assert isinstance(error, dict), f"no error object on stdout: {reply.stdout!r}"
    assert {"cniVersion", "code", "msg", "details"} <= error.keys(), error
    assert isinstance(error["msg"], str) and error["msg"], error
    assert error["code"] == code, error
    return error


def assert_ok(reply: PluginReply) -> dict | None:
    assert reply.returncode == 0, f"rc={reply.returncode} {reply.stdout} {reply.stderr}"
    return reply.json


def ip_json(ns: str, *argv: str) -> list[dict]:
    """`ip -j ARGV` inside a namespace given by name or /run/netns path."""
    out = subprocess.run(["ip", "-n", Path(ns).name, "-j", *argv], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    return json.loads(out) if out.strip() else []


def pod_links(netns: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_json(netns, "link", "show")}


def assert_nothing_left(node: Node, cid: str, netns: str | None = None) -> None:
    """No host veth, no owner mark, no reservation of the attachment; no eth0 in the pod."""
    links = node.links()
    assert host_veth_name(cid, "eth0") not in links
    assert not [n for n, link in links.items() if cid in link.get("ifalias", "")]
    assert cid not in node.reservations().values()
    if netns is not None and os.path.exists(netns):
        assert "eth0" not in pod_links(netns)


def one_address_ipam(node: Node, host: int = 250) -> dict:
    """An IPAM config whose range is a single address, so reuse is observable."""
    address = str(node.subnet.network_address + host)
    return {"type": "gingham-ipam", "ranges": [[{"subnet": str(node.subnet),
                                                 "rangeStart": address, "rangeEnd": address}]]}


def add(plugins: PluginCaller, node: Node, netns: str, cid: str | None = None,
        **conf) -> tuple[str, dict]:
    cid = cid or new_cid()
    result = assert_ok(plugins.call("gingham", "ADD", node.conf(**conf), container_id=cid,
                                    netns=netns))
    assert result is not None
    return cid, result


# -- VERSION ------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
def test_version(shared_plugins: PluginCaller, plugin: str) -> None:
    answer = assert_ok(shared_plugins.call(plugin, "VERSION", {"cniVersion": "1.0.0"}))
    assert answer["cniVersion"] == "1.1.0"
    assert set(VERSIONS) <= set(answer["supportedVersions"])


# -- error objects ------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One malformed call: a change to the config and environment of a valid ADD."""

    code: int
    conf: Callable[[dict], dict | bytes] = lambda conf: conf
    command: str | None = "ADD"
    env: dict = field(default_factory=dict)  # CNI_* overrides; None drops the variable
    plugins: tuple[str, ...] = PLUGINS


def _with(**changes) -> Callable[[dict], dict]:
    return lambda conf: {**conf, **changes}


def _without(key: str) -> Callable[[dict], dict]:
    return lambda conf: {k: v for k, v in conf.items() if k != key}


def _ipam(**changes) -> Callable[[dict], dict]:
    return lambda conf: {**conf, "ipam": {**conf["ipam"], **changes}}


BAD_CALLS = {
    # 6: not decodable. Each still names the lab's agentSocket: the shim finds it by a raw
    # search and only the agent parses JSON.
    "not-json": Bad(6, lambda conf: json.dumps(conf).encode()[:-3]),
    "json-array": Bad(6, lambda conf: json.dumps([conf]).encode()),
    "not-utf8": Bad(6, lambda conf: json.dumps(conf).encode()[:-1] + b', "x": "\xff\xfe"}'),
    # 4: environment
    "no-command": Bad(4, command=None),
    "unknown-command": Bad(4, command="BOGUS"),
    "add-no-containerid": Bad(4, env={"CNI_CONTAINERID": None}),
    "add-no-netns": Bad(4, env={"CNI_NETNS": None}),
    "add-no-ifname": Bad(4, env={"CNI_IFNAME": None}),
    "add-no-path": Bad(4, env={"CNI_PATH": None}),
    "add-ifname-slash": Bad(4, env={"CNI_IFNAME": "et/h0"}),
    "add-ifname-too-long": Bad(4, env={"CNI_IFNAME": "x" * 16}),
    "add-ifname-dotdot": Bad(4, env={"CNI_IFNAME": ".."}),
    "add-ifname-whitespace": Bad(4, env={"CNI_IFNAME": "eth\r0"}),
    "add-containerid-path": Bad(4, env={"CNI_CONTAINERID": "../../etc"}),
    "add-containerid-newline": Bad(4, env={"CNI_CONTAINERID": "c1\n"}),
    "del-no-containerid": Bad(4, command="DEL", env={"CNI_CONTAINERID": None}),
    "del-no-ifname": Bad(4, command="DEL", env={"CNI_IFNAME": None}),
    "check-no-netns": Bad(4, command="CHECK", env={"CNI_NETNS": None}),
    # 7: invalid config
    "no-name": Bad(7, _without("name")),
    "name-not-string": Bad(7, _with(name=42)),
    "name-with-space": Bad(7, _with(name="pod net")),
    "name-with-newline": Bad(7, _with(name="net\n")),
    "no-cniversion": Bad(7, _without("cniVersion")),
    "mtu-too-small": Bad(7, _with(mtu=100), plugins=("gingham",)),
    "mtu-string": Bad(7, _with(mtu="1500"), plugins=("gingham",)),
    "bridge-too-long": Bad(7, _with(bridge="b" * 16), plugins=("gingham",)),
    "hairpin-string": Bad(7, _with(hairpinMode="yes"), plugins=("gingham",)),
    "dns-not-object": Bad(7, _with(dns=["10.96.0.10"])),
    "ipam-not-object": Bad(7, _with(ipam="gingham-ipam")),
    "ipam-missing": Bad(7, _without("ipam"), plugins=("gingham-ipam",)),
    "ipam-bad-subnet": Bad(7, _ipam(subnet="10.99.0.0/33")),
    "ipam-subnet-too-small": Bad(7, _ipam(subnet="10.99.0.0/31")),
    "ipam-range-outside": Bad(7, _ipam(ranges=[[{"subnet": "10.99.0.0/24",
                                                 "rangeStart": "10.98.0.5"}]])),
    "ipam-two-range-sets": Bad(7, _ipam(ranges=[[{"subnet": "10.99.0.0/24"}],
                                                [{"subnet": "10.98.0.0/24"}]])),
    "ipam-route-bad": Bad(7, _ipam(routes=[{"dst": "nowhere"}])),
    "prevresult-not-object": Bad(7, _with(prevResult=[])),
    "prevresult-bad-ip": Bad(7, _with(prevResult={"ips": [{"address": "10.0.0.300/24"}]})),
    "gc-attachments-not-list": Bad(7, _with(**{"cni.dev/valid-attachments": {}}),
                                   command="GC"),
    "gc-attachment-no-ifname": Bad(
        7, _with(**{"cni.dev/valid-attachments": [{"containerID": "x"}]}), command="GC"),
    "gc-no-attachments": Bad(7, command="GC"),
    # 1: versions
    "version-0.3.1": Bad(1, _with(cniVersion="0.3.1")),
    "version-0.2.0": Bad(1, _with(cniVersion="0.2.0")),
    "version-9.9.9": Bad(1, _with(cniVersion="9.9.9")),
    "status-needs-1.1": Bad(1, _with(cniVersion="1.0.0"), command="STATUS"),
    "gc-needs-1.1": Bad(1, _with(cniVersion="0.4.0", **{"cni.dev/valid-attachments": []}),
                        command="GC"),
}


@pytest.mark.parametrize(
    ("plugin", "case"),
    [pytest.param(p, name, id=f"{p}-{name}") for name, bad in BAD_CALLS.items()
     for p in bad.plugins],
)
def test_error_object(shared_plugins: PluginCaller, shared_node: Node, pod_netns, plugin: str,
                      case: str) -> None:
    bad = BAD_CALLS[case]
    cid = new_cid()
    reply = call_bad(shared_plugins, plugin, bad, shared_node.conf(), cid, pod_netns())
    assert_error(reply, bad.code)
    assert_nothing_left(shared_node, cid)


def call_bad(plugins: PluginCaller, plugin: str, bad: Bad, conf: dict, cid: str,
             netns: str) -> PluginReply:
    """Exec `plugin` as for a valid ADD of `cid` into `netns`, with `bad`'s changes."""
    env = {"CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0", **bad.env}
    return plugins.call(
        plugin, bad.command, bad.conf(conf),
        container_id=env.pop("CNI_CONTAINERID"), netns=env.pop("CNI_NETNS"),
        ifname=env.pop("CNI_IFNAME"),
        extra_env={k: v for k, v in env.items() if v is not None},
        drop_env=tuple(k for k, v in env.items() if v is None),
    )


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize(("command", "code"),
                         [("ADD", 11), ("DEL", 11), ("CHECK", 11), ("GC", 11), ("STATUS", 50)])
def test_agent_unreachable(shared_plugins: PluginCaller, shared_node: Node, pod_netns,
                           tmp_path: Path, plugin: str, command: str, code: int) -> None:
    conf = shared_node.conf(agentSocket=str(tmp_path / "no-agent.sock"),
                            **{"cni.dev/valid-attachments": []})
    reply = shared_plugins.call(plugin, command, conf, netns=pod_netns())
    error = assert_error(reply, code)
    assert error["cniVersion"] == "1.1.0"
    assert "no-agent.sock" in error["details"]


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("stdin", [b'{"agentSocket": "/nonexistent/agent.sock", ', b"[1, 2]"])
def test_bad_json_is_6_even_with_no_agent(shared_plugins: PluginCaller, pod_netns, plugin: str,
                                          stdin: bytes) -> None:
    reply = shared_plugins.call(plugin, "ADD", stdin, netns=pod_netns())
    assert assert_error(reply, 6)["msg"] == "network config is not a JSON object"


@pytest.mark.parametrize(("plugin", "case"), [
    pytest.param(p, name, id=f"{p}-{name}") for name, bad in BAD_CALLS.items() if bad.code == 4
    for p in bad.plugins])
def test_environment_errors_are_4_even_with_no_agent(shared_plugins: PluginCaller,
                                                     shared_node: Node, pod_netns,
                                                     tmp_path: Path, plugin: str,
                                                     case: str) -> None:
    """The shim checks CNI_* itself, by the agent's rules: "try again later" would have the
    runtime retry a call that can never work."""
    conf = shared_node.conf(agentSocket=str(tmp_path / "no-agent.sock"))
    reply = call_bad(shared_plugins, plugin, BAD_CALLS[case], conf, new_cid(), pod_netns())
    assert_error(reply, 4)


def test_error_object_speaks_the_config_version(shared_plugins: PluginCaller,
                                                shared_node: Node) -> None:
    conf = shared_node.conf(cniVersion="0.4.0", name="")
    assert assert_error(shared_plugins.call("gingham", "DEL", conf), 7)["cniVersion"] == "0.4.0"


# -- ADD ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_add_result_matches_the_dataplane(plugins: PluginCaller, node: Node, pod_netns,
                                          version: str) -> None:
    netns = pod_netns()
    cid, result = add(plugins, node, netns, cniVersion=version, dns=DNS)

    assert result["cniVersion"] == version
    host, pod = result["interfaces"]
    assert host["name"] == host_veth_name(cid, "eth0") and "sandbox" not in host
    assert pod["name"] == "eth0" and pod["sandbox"] == netns
    (ip,) = result["ips"]
    assert result["interfaces"][ip["interface"]] == pod
    address = ipaddress.IPv4Interface(ip["address"])
    assert address.network == node.subnet and address.ip != node.gateway
    assert ip["gateway"] == str(node.gateway)
    assert ip.get("version") == ("4" if version == "0.4.0" else None)
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": str(node.gateway)}]
    assert result["dns"] == DNS

    # The pod end: named, addressed and routed as the result says.
    (eth0,) = ip_json(netns, "addr", "show", "dev", "eth0")
    assert eth0["address"] == pod["mac"] and "UP" in eth0["flags"]
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] \
        == [(str(address.ip), address.network.prefixlen)]
    default = [(r.get("gateway"), r["dev"]) for r in ip_json(netns, "route", "show")
               if r["dst"] == "default"]
    assert default == [(str(node.gateway), "eth0")]
    # The host end: on the bridge, marked as ours.
    link = node.links()[host["name"]]
    assert link["address"] == host["mac"] and link["master"] == "cni0"
    assert link["ifalias"] == f"gingham gingham {cid} eth0"
    assert node.reservations()[str(address.ip)] == cid
    assert node.pings(netns, node.gateway)


def test_two_pods_get_distinct_addresses_and_reach_each_other(plugins: PluginCaller,
                                                              node: Node, pod_netns) -> None:
    a, b = pod_netns(), pod_netns()
    ip_a = ipaddress.IPv4Interface(add(plugins, node, a)[1]["ips"][0]["address"]).ip
    ip_b = ipaddress.IPv4Interface(add(plugins, node, b)[1]["ips"][0]["address"]).ip
    assert ip_a != ip_b
    assert node.pings(a, ip_b) and node.pings(b, ip_a)


def test_second_interface_on_another_network(plugins: PluginCaller, node: Node,
                                             pod_netns) -> None:
    """One pod, two attachments (eth0 on the node network, net1 on its own bridge, subnet
    and MTU): each gets its own veth and address, and DEL of one leaves the other."""
    netns = pod_netns()
    cid, first = add(plugins, node, netns)
    side = node.conf(name="side", bridge="cni7", mtu=1400,
                     ipam={"type": "gingham-ipam", "subnet": "10.97.0.0/24",
                           "routes": [{"dst": "10.96.0.0/12"}]})
    second = assert_ok(plugins.call("gingham", "ADD", side, container_id=cid, netns=netns,
                                    ifname="net1"))
    assert [i["name"] for i in second["interfaces"]] == [host_veth_name(cid, "net1"), "net1"]
    assert second["routes"] == [{"dst": "10.96.0.0/12", "gw": "10.97.0.1"}]
    (net1,) = ip_json(netns, "addr", "show", "dev", "net1")
    assert net1["mtu"] == 1400
    assert [a["local"] for a in net1["addr_info"] if a["family"] == "inet"] \
        == [second["ips"][0]["address"].split("/")[0]]
    assert node.links()[host_veth_name(cid, "net1")]["master"] == "cni7"
    assert node.pings(netns, "10.97.0.1") and node.pings(netns, node.gateway)

    assert_ok(plugins.call("gingham", "DEL", side, container_id=cid, netns=netns,
                           ifname="net1"))
    assert set(pod_links(netns)) == {"lo", "eth0"}
    assert node.reservations() == {first["ips"][0]["address"].split("/")[0]: cid}
    assert node.pings(netns, node.gateway)


def test_add_fails_when_ifname_exists(plugins: PluginCaller, node: Node, pod_netns) -> None:
    netns = pod_netns()
    # No dummy module on every kernel: a veth pair inside the pod stands in.
    subprocess.run(["ip", "-n", Path(netns).name, "link", "add", "eth0", "type", "veth", "peer",
                    "name", "eth0peer"], check=True)
    cid = new_cid()
    assert_error(plugins.call("gingham", "ADD", node.conf(), container_id=cid, netns=netns),
                 102)
    assert_nothing_left(node, cid)
    # A runtime cleans up a failed ADD with DEL; neither may touch an interface not ours.
    assert_ok(plugins.call("gingham", "DEL", node.conf(), container_id=cid, netns=netns))
    assert set(pod_links(netns)) == {"lo", "eth0", "eth0peer"}


def test_failed_add_keeps_the_attachment_already_there(plugins: PluginCaller, node: Node,
                                                       pod_netns) -> None:
    """A second ADD into a pod with eth0 fails, and must not undo the first attachment."""
    netns = pod_netns()
    first, result = add(plugins, node, netns)
    second = new_cid()
    assert_error(plugins.call("gingham", "ADD", node.conf(), container_id=second, netns=netns),
                 102)
    assert_nothing_left(node, second)
    # The runtime's clean-up DEL of the failed attachment must not take eth0 with it.
    assert_ok(plugins.call("gingham", "DEL", node.conf(), container_id=second, netns=netns))
    address = ipaddress.IPv4Interface(result["ips"][0]["address"]).ip
    assert node.reservations()[str(address)] == first
    assert host_veth_name(first, "eth0") in node.links()
    assert node.pings(netns, node.gateway)


def test_repeated_add_of_an_attachment_keeps_the_first(plugins: PluginCaller, node: Node,
                                                       pod_netns) -> None:
    """The same container/ifname ADDed into another netns (a runtime bug) fails without
    tearing down the live attachment that owns the host veth name and the address."""
    netns = pod_netns()
    cid, result = add(plugins, node, netns)
    other = pod_netns()
    assert_error(plugins.call("gingham", "ADD", node.conf(), container_id=cid, netns=other),
                 102)
    assert "eth0" not in pod_links(other)
    address = ipaddress.IPv4Interface(result["ips"][0]["address"]).ip
    assert node.reservations()[str(address)] == cid
    assert host_veth_name(cid, "eth0") in node.links()
    assert node.pings(netns, node.gateway)


FAILING_ADDS = {
    # Fails after the address is reserved and the veth made: the route's gateway is off-link.
    "route-unreachable": (100, lambda node: {"ipam": {"type": "gingham-ipam", "routes": [
        {"dst": "192.0.2.0/24", "gw": "198.51.100.1"}]}}),
    # Fails after the address is reserved: the "bridge" is the node's uplink veth.
    "bridge-not-a-bridge": (100, lambda node: {"bridge": "eth0"}),
    # Fails in IPAM: the one address of the range is another pod's.
    "addresses-exhausted": (101, lambda node: {"ipam": one_address_ipam(node)}),
}


@pytest.mark.parametrize("case", FAILING_ADDS)
def test_failed_add_leaves_nothing_behind(plugins: PluginCaller, node: Node, pod_netns,
                                          case: str) -> None:
    code, conf = FAILING_ADDS[case]
    occupant, _ = add(plugins, node, pod_netns(), ipam=one_address_ipam(node))
    before = node.reservations()
    netns, cid = pod_netns(), new_cid()
    assert_error(plugins.call("gingham", "ADD", node.conf(**conf(node)), container_id=cid,
                              netns=netns), code)
    assert_nothing_left(node, cid, netns)
    assert node.reservations() == before
    assert host_veth_name(occupant, "eth0") in node.links()


def test_add_into_missing_netns_fails(plugins: PluginCaller, node: Node) -> None:
    cid = new_cid()
    reply = plugins.call("gingham", "ADD", node.conf(), container_id=cid,
                         netns=f"/run/netns/tpodgone{secrets.token_hex(4)}")
    assert_error(reply, 3)
    assert_nothing_left(node, cid)


# -- DEL ----------------------------------------------------------------------------


def _del_twice(plugins: PluginCaller, node: Node, cid: str, netns: str,
               result: dict) -> None:
    for _ in range(2):
        assert assert_ok(plugins.call("gingham", "DEL", node.conf(), container_id=cid,
                                      netns=netns)) is None


def _del_after_netns_gone(plugins: PluginCaller, node: Node, cid: str, netns: str,
                          result: dict) -> None:
    subprocess.run(["ip", "netns", "del", Path(netns).name], check=True)
    assert_ok(plugins.call("gingham", "DEL", node.conf(), container_id=cid, netns=netns))


def _del_without_netns(plugins: PluginCaller, node: Node, cid: str, netns: str,
                       result: dict) -> None:
    assert_ok(plugins.call("gingham", "DEL", node.conf(), container_id=cid, netns=None))


def _del_with_prev_result(plugins: PluginCaller, node: Node, cid: str, netns: str,
                          result: dict) -> None:
    assert_ok(plugins.call("gingham", "DEL", node.conf(prevResult=result), container_id=cid,
                           netns=netns))


def _del_at_0_4_0(plugins: PluginCaller, node: Node, cid: str, netns: str,
                  result: dict) -> None:
    assert_ok(plugins.call("gingham", "DEL", node.conf(cniVersion="0.4.0"), container_id=cid,
                           netns=netns))


DELS = {"twice": _del_twice, "after-netns-gone": _del_after_netns_gone,
        "without-netns": _del_without_netns, "with-prevresult": _del_with_prev_result,
        "version-0.4.0": _del_at_0_4_0}


@pytest.mark.parametrize("how", DELS)
def test_del_releases_everything(plugins: PluginCaller, node: Node, pod_netns,
                                 how: str) -> None:
    netns = pod_netns()
    ipam = one_address_ipam(node)
    cid, result = add(plugins, node, netns, ipam=ipam)
    address = ipaddress.IPv4Interface(result["ips"][0]["address"])
    # While held, the only address of the range is not handed out again.
    assert_error(plugins.call("gingham", "ADD", node.conf(ipam=ipam), container_id=new_cid(),
                              netns=pod_netns()), 101)

    DELS[how](plugins, node, cid, netns, result)

    assert_nothing_left(node, cid, netns)
    assert not (node.ipam_dir / f"{node.subnet.network_address}-{node.subnet.prefixlen}"
                / str(address.ip)).exists()
    _, again = add(plugins, node, pod_netns(), ipam=ipam)
    assert again["ips"][0]["address"] == str(address)


def test_add_right_after_del_of_the_same_attachment(plugins: PluginCaller, node: Node,
                                                    pod_netns) -> None:
    """DEL answers before the kernel has freed the veth pair (see dataplane/unlink): an ADD
    of the same container and interface right after, into the same namespace, must find
    both names free and get a working pod, every time."""
    netns = pod_netns()
    cid = new_cid()
    for _ in range(10):
        add(plugins, node, netns, cid)
        assert_ok(plugins.call("gingham", "DEL", node.conf(), container_id=cid, netns=netns))
        assert_nothing_left(node, cid, netns)
    _, result = add(plugins, node, netns, cid)
    assert node.pings(netns, node.gateway)
    assert host_veth_name(cid, "eth0") in node.links()
    assert result["interfaces"][0]["name"] == host_veth_name(cid, "eth0")


def test_del_of_unknown_attachment_succeeds(plugins: PluginCaller, node: Node,
                                            pod_netns) -> None:
    assert_ok(plugins.call("gingham", "DEL", node.conf(), container_id=new_cid(),
                           netns=pod_netns()))


# -- chaining and CHECK -------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_add_appends_to_prev_result(plugins: PluginCaller, node: Node, pod_netns,
                                    version: str) -> None:
    netns = pod_netns()
    prev_ip = {"address": "192.0.2.10/24", "interface": 0}
    if version == "0.4.0":
        prev_ip["version"] = "4"
    prev = {"cniVersion": version, "interfaces": [{"name": "net1", "sandbox": netns}],
            "ips": [prev_ip], "routes": [{"dst": "192.0.2.0/24"}],
            "dns": {"nameservers": ["192.0.2.53"]}}
    cid, result = add(plugins, node, netns, cniVersion=version, prevResult=prev)

    assert result["interfaces"][0] == prev["interfaces"][0]
    assert [i["name"] for i in result["interfaces"][1:]] == [host_veth_name(cid, "eth0"),
                                                             "eth0"]
    assert result["ips"][0] == prev_ip
    ours = result["ips"][1]
    assert result["interfaces"][ours["interface"]]["name"] == "eth0"
    assert result["routes"] == [{"dst": "192.0.2.0/24"},
                                {"dst": "0.0.0.0/0", "gw": str(node.gateway)}]
    assert result["dns"] == prev["dns"]  # the conf has none of its own to override it
    assert ipaddress.IPv4Interface(ours["address"]).network == node.subnet
    assert node.pings(netns, node.gateway)


PORT_MAPPING = {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}
BANDWIDTH = {"ingressRate": 100_000_000, "ingressBurst": 1_000_000}


@pytest.fixture
def chained_pod(lab) -> Callable[..., tuple[PodRecord, CniRuntime, Attachment]]:
    """Factory: a pod ADDed through the lab's conflist (gingham -> portmap -> bandwidth) with
    the given capabilities, and the runtime and attachment to CHECK or DEL it with."""

    def make(**capabilities) -> tuple[PodRecord, CniRuntime, Attachment]:
        pod = lab.add_pod("node1", f"default/p{secrets.token_hex(3)}",
                          capabilities=capabilities)
        att = Attachment(pod.container_id, procs.netns_path(pod.netns), pod.ifname,
                         capabilities=capabilities)
        return pod, cluster.runtime_for(lab.files, lab.name, "node1"), att

    return make


def test_chain_passes_prev_result(lab, node: Node, plugins: PluginCaller, chained_pod) -> None:
    pod, runtime, att = chained_pod(portMappings=[PORT_MAPPING], bandwidth=BANDWIDTH)
    result = runtime.cached(att)
    host = host_veth_name(pod.container_id, "eth0")
    assert [i["name"] for i in result["interfaces"]] == [host, "eth0"]
    assert result["ips"][0]["address"] == f"{pod.ip}/{node.subnet.prefixlen}"
    # bandwidth found the host veth through prevResult: its ingress limit is on it.
    tc = subprocess.run(["tc", "-n", node.netns, "-j", "qdisc", "show", "dev", host],
                        capture_output=True, text=True, check=True).stdout
    assert any(q["kind"] == "tbf" for q in json.loads(tc)), tc
    # portmap read the pod address from prevResult: a connection to the node's host port
    # from the external host reaches the pod.
    server = lab.popen(pod.ref, sys.executable, "-c", SERVE_ONCE,
                       str(PORT_MAPPING["containerPort"]), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        reply = lab.run("external", sys.executable, "-c", CONNECT, str(node.address),
                        str(PORT_MAPPING["hostPort"]), timeout=15)
        assert reply.stdout.strip() == f"hello from {pod.ip}"
    finally:
        server.kill()
        server.wait()
    # The final result still checks out against gingham. (Not the whole chain: portmap
    # 1.1.1's CHECK wrongly demands IPv6 rules, containernetworking/plugins#819.)
    conf = {**lab.conflist()["plugins"][0], "cniVersion": "1.0.0", "name": "gingham",
            "prevResult": result}
    assert_ok(plugins.call("gingham", "CHECK", conf, container_id=pod.container_id,
                           netns=att.netns))
    runtime.delete(att)
    assert_nothing_left(node, pod.container_id, att.netns)


SERVE_ONCE = """
import socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
s.settimeout(15)
conn, _ = s.accept()
conn.sendall(b"hello from " + conn.getsockname()[0].encode())
conn.close()
"""
CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    print(c.recv(100).decode())
"""


def _remove_pod_address(node: Node, pod: PodRecord, netns: str) -> None:
    subprocess.run(["ip", "-n", Path(netns).name, "addr", "del",
                    f"{pod.ip}/{node.subnet.prefixlen}", "dev", "eth0"],
                   check=True)


def _remove_host_veth(node: Node, pod: PodRecord, netns: str) -> None:
    subprocess.run(["ip", "-n", node.netns, "link", "del", host_veth_name(pod.container_id,
                                                                            "eth0")],
                   check=True)


def _remove_default_route(node: Node, pod: PodRecord, netns: str) -> None:
    subprocess.run(["ip", "-n", Path(netns).name, "route", "del", "default"], check=True)


def _detach_host_veth(node: Node, pod: PodRecord, netns: str) -> None:
    subprocess.run(["ip", "-n", node.netns, "link", "set", host_veth_name(pod.container_id,
                                                                            "eth0"), "nomaster"],
                   check=True)


def _drop_reservation(node: Node, pod: PodRecord, netns: str) -> None:
    (node.ipam_dir / f"{node.subnet.network_address}-{node.subnet.prefixlen}" / pod.ip).unlink()


BREAKAGES = {"pod-address-removed": _remove_pod_address, "host-veth-removed": _remove_host_veth,
             "pod-route-removed": _remove_default_route, "host-veth-off-bridge": _detach_host_veth,
             "reservation-released": _drop_reservation}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_check_fails_when_the_attachment_is_broken(node: Node, chained_pod,
                                                   breakage: str) -> None:
    # bandwidth 1.1.1 panics on CHECK without a bandwidth config, so the pod gets one.
    pod, runtime, att = chained_pod(bandwidth=BANDWIDTH)
    runtime.check(att)
    BREAKAGES[breakage](node, pod, att.netns)
    with pytest.raises(PluginFailed) as failed:
        runtime.check(att)
    assert failed.value.plugin == "gingham" and failed.value.code, failed.value


@pytest.mark.parametrize("version", VERSIONS)
def test_check_with_prev_result(plugins: PluginCaller, node: Node, pod_netns,
                                version: str) -> None:
    netns = pod_netns()
    cid, result = add(plugins, node, netns, cniVersion=version)
    conf = node.conf(cniVersion=version, prevResult=result)
    assert assert_ok(plugins.call("gingham", "CHECK", conf, container_id=cid,
                                  netns=netns)) is None
    # Without prevResult there is nothing to check against.
    assert_error(plugins.call("gingham", "CHECK", node.conf(cniVersion=version),
                              container_id=cid, netns=netns), 7)
    # Another attachment's result does not match this pod.
    wrong = json.loads(json.dumps(result))
    wrong["ips"][0]["address"] = f"{node.subnet.network_address + 254}/{node.subnet.prefixlen}"
    assert_error(plugins.call("gingham", "CHECK", node.conf(cniVersion=version,
                                                            prevResult=wrong),
                              container_id=cid, netns=netns), 103)


# -- GC and STATUS ------------------------------------------------------------------


def test_gc_removes_only_invalid_attachments(plugins: PluginCaller, node: Node,
                                             pod_netns) -> None:
    network = f"gc{secrets.token_hex(3)}"
    pods = {name: pod_netns() for name in ("keep", "stale", "wrong-ifname", "other-net")}
    cids = {}
    for name, netns in pods.items():
        cids[name], _ = add(plugins, node, netns,
                            name="gingham" if name == "other-net" else network)
    valid = [{"containerID": cids["keep"], "ifname": "eth0"},
             {"containerID": cids["wrong-ifname"], "ifname": "eth1"}]
    assert_ok(plugins.call("gingham", "GC",
                           node.conf(name=network, **{"cni.dev/valid-attachments": valid}),
                           container_id=None, netns=None, ifname=None))

    links, owners = node.links(), set(node.reservations().values())
    for name in ("keep", "other-net"):
        assert host_veth_name(cids[name], "eth0") in links and cids[name] in owners, name
        assert node.pings(pods[name], node.gateway), name
    for name in ("stale", "wrong-ifname"):
        assert_nothing_left(node, cids[name], pods[name])


@pytest.mark.parametrize("version", VERSIONS)
def test_ipam_result(plugins: PluginCaller, node: Node, version: str) -> None:
    routes = [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.99.0.254"}]
    conf = {"cniVersion": version, "name": "ipamonly", "type": "bridge",
            "agentSocket": node.socket, "dns": DNS,
            "ipam": {"type": "gingham-ipam", "subnet": "10.99.0.0/24", "routes": routes}}
    cid = new_cid()
    result = assert_ok(plugins.call("gingham-ipam", "ADD", conf, container_id=cid,
                                    netns="/run/netns/unused"))
    assert result["cniVersion"] == version and result["interfaces"] == []
    (ip,) = result["ips"]
    assert ip["gateway"] == "10.99.0.1" and "interface" not in ip
    assert ip.get("version") == ("4" if version == "0.4.0" else None)
    address = ipaddress.IPv4Interface(ip["address"])
    assert address.network == ipaddress.IPv4Network("10.99.0.0/24")
    assert result["routes"] == routes and result["dns"] == DNS
    assert node.reservations() == {str(address.ip): cid}
    assert_ok(plugins.call("gingham-ipam", "CHECK", {**conf, "prevResult": result},
                           container_id=cid, netns="/run/netns/unused"))
    assert_ok(plugins.call("gingham-ipam", "DEL", conf, container_id=cid))
    assert node.reservations() == {}
    # Nothing held any more: CHECK says so.
    assert_error(plugins.call("gingham-ipam", "CHECK", {**conf, "prevResult": result},
                              container_id=cid, netns="/run/netns/unused"), 103)


def test_ipam_refuses_a_second_add_of_an_attachment(plugins: PluginCaller, node: Node) -> None:
    """Two sandboxes ADDed as one attachment must not share an address (host-local's rule)."""
    conf = {"cniVersion": "1.0.0", "name": "dup", "type": "bridge", "agentSocket": node.socket,
            "ipam": {"type": "gingham-ipam"}}
    cid = new_cid()
    first = assert_ok(plugins.call("gingham-ipam", "ADD", conf, container_id=cid, netns="/a"))
    address = ipaddress.IPv4Interface(first["ips"][0]["address"]).ip
    assert_error(plugins.call("gingham-ipam", "ADD", conf, container_id=cid, netns="/b"), 102)
    assert node.reservations() == {str(address): cid}
    assert_ok(plugins.call("gingham-ipam", "DEL", conf, container_id=cid))
    assert node.reservations() == {}
    assert_ok(plugins.call("gingham-ipam", "ADD", conf, container_id=cid, netns="/b"))


def test_ipam_gc_releases_invalid_reservations(plugins: PluginCaller, node: Node) -> None:
    conf = {"cniVersion": "1.1.0", "name": f"gc{secrets.token_hex(3)}", "type": "bridge",
            "agentSocket": node.socket, "ipam": {"type": "gingham-ipam"}}
    keep, stale = new_cid(), new_cid()
    for cid in (keep, stale):
        result = assert_ok(plugins.call("gingham-ipam", "ADD", conf, container_id=cid,
                                        netns="/nonexistent"))
        assert result["interfaces"] == [] and len(result["ips"]) == 1
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": keep, "ifname": "eth0"}]}
    assert_ok(plugins.call("gingham-ipam", "GC", gc, container_id=None, ifname=None))
    owners = set(node.reservations().values())
    assert keep in owners and stale not in owners


def test_status(plugins: PluginCaller, node: Node, pod_netns) -> None:
    conf = node.conf(ipam=one_address_ipam(node))
    for plugin in PLUGINS:
        assert assert_ok(plugins.call(plugin, "STATUS", conf)) is None
    cid, _ = add(plugins, node, pod_netns(), ipam=conf["ipam"])
    for plugin in PLUGINS:  # the range's one address is taken: no new pod could start
        assert_error(plugins.call(plugin, "STATUS", conf), 50)
    assert_ok(plugins.call("gingham", "DEL", conf, container_id=cid))
    assert assert_ok(plugins.call("gingham", "STATUS", conf)) is None


# -- gingham-ipam under the reference bridge plugin ---------------------------------


@pytest.mark.parametrize("subnet", ["10.99.0.0/24", None], ids=["own-subnet", "node-subnet"])
def test_ipam_under_reference_bridge(plugins: PluginCaller, node: Node, pod_netns,
                                     subnet: str | None) -> None:
    ipam = {"type": "gingham-ipam", **({"subnet": subnet} if subnet else {})}
    # With the node subnet, cni0 already holds its gateway: cni1 stays a plain switch.
    conf = {"cniVersion": "1.0.0", "name": f"br{secrets.token_hex(3)}", "type": "bridge",
            "bridge": "cni1", "isGateway": subnet is not None, "agentSocket": node.socket,
            "ipam": ipam}
    network = ipaddress.IPv4Network(subnet) if subnet else node.subnet
    pods = {}
    for _ in range(2):
        netns, cid = pod_netns(), new_cid()
        result = assert_ok(plugins.call("bridge", "ADD", conf, container_id=cid, netns=netns))
        (ip,) = result["ips"]
        assert result["interfaces"][ip["interface"]]["sandbox"] == netns
        address = ipaddress.IPv4Interface(ip["address"])
        assert address.network == network
        assert node.reservations()[str(address.ip)] == cid
        (eth0,) = ip_json(netns, "addr", "show", "dev", "eth0")
        assert str(address.ip) in [a["local"] for a in eth0["addr_info"]]
        assert_ok(plugins.call("bridge", "CHECK", {**conf, "prevResult": result},
                               container_id=cid, netns=netns))
        pods[cid] = (netns, address.ip)
    (a_ns, a_ip), (b_ns, b_ip) = pods.values()
    assert a_ip != b_ip
    assert node.pings(a_ns, b_ip) and node.pings(b_ns, a_ip)
    if subnet:
        assert node.pings(a_ns, network.network_address + 1)
    for cid, (netns, address) in pods.items():
        assert_ok(plugins.call("bridge", "DEL", conf, container_id=cid, netns=netns))
        assert str(address) not in node.reservations()
        assert "eth0" not in pod_links(netns)


# -- a reference IPAM under the main plugin --------------------------------------------


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_main_plugin_delegates_to_reference_ipam(plugins: PluginCaller, node: Node, pod_netns,
                                                 tmp_path: Path, version: str) -> None:
    data_dir = tmp_path / "host-local"
    conf = node.conf(cniVersion=version, name="deleg", bridge="cni9",
                     ipam={"type": "host-local", "subnet": "10.98.0.0/24",
                           "dataDir": str(data_dir)})
    netns = pod_netns()
    cid, result = add(plugins, node, netns, **conf)
    address = ipaddress.IPv4Interface(result["ips"][0]["address"])
    assert address.network == ipaddress.IPv4Network("10.98.0.0/24")
    assert result["ips"][0]["gateway"] == "10.98.0.1" and result["ips"][0]["interface"] == 1
    assert (data_dir / "deleg" / str(address.ip)).read_text().startswith(cid)
    assert node.links()[host_veth_name(cid, "eth0")]["master"] == "cni9"
    assert node.pings(netns, "10.98.0.1")
    assert_ok(plugins.call("gingham", "CHECK", {**conf, "prevResult": result},
                           container_id=cid, netns=netns))
    assert_ok(plugins.call("gingham", "DEL", conf, container_id=cid, netns=netns))
    assert not (data_dir / "deleg" / str(address.ip)).exists()
    assert_nothing_left(node, cid, netns)


def test_reference_ipam_error_passes_through(plugins: PluginCaller, node: Node, pod_netns,
                                             tmp_path: Path) -> None:
    """host-local 1.1.1 speaks at most 1.0.0: its error 1 reaches the runtime unchanged."""
    conf = node.conf(bridge="cni9", ipam={"type": "host-local", "subnet": "10.98.0.0/24",
                                          "dataDir": str(tmp_path)})
    netns, cid = pod_netns(), new_cid()
    error = assert_error(plugins.call("gingham", "ADD", conf, container_id=cid, netns=netns), 1)
    assert "1.1.0" in error["msg"] + error["details"]
    assert_nothing_left(node, cid, netns)


# -- install-cni --------------------------------------------------------------------


def test_install_cni(tmp_path: Path) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    sock = tmp_path / "agent.sock"
    argv = [sys.executable, "-m", "gingham.cli.main", "install-cni", "--bin-dir", str(bin_dir),
            "--conf-dir", str(conf_dir), "--socket", str(sock)]
    for _ in range(2):  # a re-install replaces the files in place
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    assert sorted(p.name for p in bin_dir.iterdir()) == ["gingham", "gingham-ipam"]
    # The venv's interpreter or the system's, whichever starts faster (see install.py).
    candidates = {sys.executable, SYSTEM_PYTHON}
    for plugin in PLUGINS:
        path = bin_dir / plugin
        assert path.stat().st_mode & stat.S_IXUSR
        interpreter, *flags = path.read_text().splitlines()[0].removeprefix("#!").split()
        assert interpreter in candidates and flags == ["-IS"]
        assert interpreter == plugin_interpreter().path
        # Executed with an empty environment, as a runtime may.
        proc = subprocess.run([str(path)], env={"CNI_COMMAND": "VERSION"}, input=b"{}",
                              capture_output=True, timeout=30, check=True)
        assert set(VERSIONS) <= set(json.loads(proc.stdout)["supportedVersions"])
    conflist = json.loads((conf_dir / "10-gingham.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["gingham", "portmap", "bandwidth"]
    main = conflist["plugins"][0]
    assert main["agentSocket"] == str(sock) and main["ipam"] == {"type": "gingham-ipam"}
    assert conflist["cniVersion"] == "1.0.0"
    assert not [p for p in conf_dir.iterdir() if p.name != "10-gingham.conflist"]
