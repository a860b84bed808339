"""The change path ends where the full path would: a random history of 600 lease changes
is applied change by change (per-lease deltas, no kernel dump) to a real kernel, in a
namespace of the test's own, and what the kernel holds (Gingham's routes, the VTEP's
neighbours and FDB entries, the masquerade node set) is then compared with what a full
resync leaves, and with what a fresh agent's first full apply makes of the same store."""

from __future__ import annotations

import ipaddress
import secrets
import subprocess

import pytest

from gingham.agent.config import AgentConfig
from gingham.agent.lease_picture import LeasePicture
from gingham.agent.lease_routes import LeaseRoutes
from gingham.agent.node import MasqueradeNodes
from gingham.agent.status import AgentStatus, StatusFile
from gingham.backends.hostgw import HostGwBackend
from gingham.backends.vxlan import VxlanBackend, VxlanOptions
from gingham.dataplane import masquerade, netns
from gingham.dataplane.uplink import find_uplink
from gingham.dataplane.vxlan import NUD_PERMANENT
from gingham.lab import procs
from gingham.model.network import BackendConfig
from gingham.subnet.lease import Lease, LeaseAttrs
from gingham.sync.loop import ReconcileLoop
from lease_events import OWN_IP, ROOT, LeaseHistory

STEPS = 600
CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")


@pytest.fixture
def node_netns():
    name = f"gh-rc-{secrets.token_hex(3)}"
    procs.add_netns(name)
    try:
        for argv in (["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
                     ["ip", "addr", "add", f"{OWN_IP}/24", "dev", "eth0"],
                     ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "peer0", "up"]):
            procs.run_in(name, argv, check=True)
        yield procs.netns_path(name)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def kernel_state(vtep: int | None) -> dict:
    """Read with pyroute2, not with the raw dumps the code under test uses."""
    with netns.iproute() as ipr:
        routes = {(r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY"),
                   r.get_attr("RTA_OIF"), r["flags"])
                  for r in ipr.get_routes(family=2, table=254) if r["proto"] == 71}
        state = {"routes": routes, "nodes": masquerade.programmed_nodes()}
        if vtep is not None:
            state["neigh"] = {(n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"))
                              for n in ipr.get_neighbours(ifindex=vtep, family=2)
                              if n["state"] & NUD_PERMANENT}
            state["fdb"] = {(f.get_attr("NDA_LLADDR"), f.get_attr("NDA_DST"))
                            for f in ipr.fdb("dump", ifindex=vtep)
                            if f.get_attr("NDA_DST")}
    return state


class Node:
    """The lease managers of one agent, over a backend set up in the current namespace."""

    def __init__(self, tmp_path, backend_type: str, options: dict) -> None:
        with netns.iproute() as ipr:
            uplink = find_uplink(ipr, "eth0")
        own = Lease(ipaddress.IPv4Network("10.244.1.0/24"),
                    LeaseAttrs(ipaddress.IPv4Address(OWN_IP), backend_type, "n11"))
        if backend_type == "vxlan":
            config = BackendConfig("vxlan", options)
            self.backend = VxlanBackend(VxlanOptions.parse(config), uplink, "n11")
        else:
            self.backend = HostGwBackend(uplink)
        self.backend.setup(own)
        self.vtep = getattr(self.backend, "index", None)
        status = StatusFile(tmp_path / f"status-{secrets.token_hex(2)}.json",
                            AgentStatus(node="n11"))
        self.picture = LeasePicture(ROOT)
        self.routes = LeaseRoutes(self.backend, lambda: own, status, self.picture)
        config = AgentConfig(node_name="n11", cluster_cidr=CLUSTER,
                             pod_subnet=own.subnet, ip_masq=True)
        self.masq = MasqueradeNodes(config, own.attrs.public_ip, self.picture,
                                    self.routes.node_gateways, set())
        self.loop = ReconcileLoop([self.masq, self.routes])

    def resync(self) -> None:
        for manager in self.loop.managers:
            manager.resync()
        self.loop.handle([])


@pytest.mark.parametrize("backend_type,options,seed", [
    ("host-gw", {}, 1), ("vxlan", {}, 2), ("vxlan", {"DirectRouting": True}, 3)])
def test_incremental_path_ends_as_a_full_resync(tmp_path, node_netns, backend_type, options,
                                                seed):
    with netns.entered(node_netns):
        history = LeaseHistory(seed, backend_type)
        node = Node(tmp_path, backend_type, options)
        node.loop.handle([history.snapshot()])
        full_applies, batch = 0, []
        for step in range(STEPS):
            batch.append(history.step())
            if step % 7 != 6:  # mostly one change per apply, sometimes a batch
                before = node.routes.full
                node.loop.handle(batch)
                batch = []
                full_applies += before or bool(node.routes.kernel_problems)
            if step % 100 == 99:
                incremental = kernel_state(node.vtep)
                node.resync()
                assert kernel_state(node.vtep) == incremental, f"after {step + 1} changes"
        node.loop.handle(batch + history.cleanup())
        incremental = kernel_state(node.vtep)
        assert len(incremental["routes"]) > 5, "the history should leave routes to compare"
        assert full_applies < STEPS / 10, "the change path should carry most changes"
        node.resync()
        assert kernel_state(node.vtep) == incremental
        fresh = Node(tmp_path, backend_type, options)  # a restarted agent's first apply
        fresh.loop.handle([history.snapshot()])
        assert kernel_state(node.vtep) == incremental
