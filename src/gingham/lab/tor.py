"""A lab router as a top-of-rack BGP speaker: FRR's zebra and bgpd in the router's
namespace (Debian's frr, run as its `frr` user from a directory of the lab's), peering
eBGP with the Calico nodes it is given (all by default), so it learns the pod blocks and
forwards pod traffic between segments without a tunnel. The nodes peer back through a
node-specific BGPPeer each (control.write_network_config)."""

from __future__ import annotations

import shutil
import subprocess

from gingham.lab import procs
from gingham.lab.plan import LabPlan, netns_name
from gingham.lab.state import LabFiles
from gingham.lab.topology import RouterPlan

FRR = "/usr/lib/frr"
NODE_ASN = 64512  # the cluster's default AS number (BGPConfiguration default)


def render_frr_config(plan: LabPlan, router: RouterPlan) -> str:
    peers = [n for n in plan.nodes if not router.bgp_peers or n.name in router.bgp_peers]
    lines = ["frr defaults traditional", f"hostname {router.name}", "log stdout",
             f"router bgp {router.bgp_asn}",
             f" bgp router-id {router.ports[0][1].ip}",
             " no bgp ebgp-requires-policy",  # FRR 8 accepts no eBGP route without one
             *(f" neighbor {n.address.ip} remote-as {NODE_ASN}" for n in peers)]
    return "\n".join(lines) + "\n"


def peers_of(plan: LabPlan, node: str) -> list[tuple[str, int]]:
    """(router address on the node's segment, router AS) of every ToR the node peers."""
    me = plan.node(node)
    return [(str(router.on(me.segment).ip), router.bgp_asn) for router in plan.routers
            if router.bgp_asn is not None and router.on(me.segment) is not None
            and (not router.bgp_peers or node in router.bgp_peers)]


def start(plan: LabPlan, router: RouterPlan, files: LabFiles) -> None:
    if not shutil.which(f"{FRR}/bgpd"):
        raise RuntimeError("router bgp needs FRR (Debian package frr)")
    home = files.dir / "frr" / router.name
    home.mkdir(parents=True, exist_ok=True)
    (home / "frr.conf").write_text(render_frr_config(plan, router))
    shutil.chown(home, "frr", "frr")
    shutil.chown(home / "frr.conf", "frr", "frr")
    ns = netns_name(plan.name, router.name)
    for daemon in ("zebra", "bgpd"):
        # -d: they daemonize in the router's namespace; `lab down` stops them with it.
        procs.run_in(ns, [f"{FRR}/{daemon}", "-d", "-f", str(home / "frr.conf"),
                          "-i", str(home / f"{daemon}.pid"), "-z", str(home / "zserv.api"),
                          "--vty_socket", str(home)],
                     check=True, capture_output=True, timeout=30)


def show(files: LabFiles, router: str, command: str) -> str:
    """What the router's FRR says to a vtysh command (e.g. `show bgp summary`)."""
    return subprocess.run(["vtysh", "--vty_socket", str(files.dir / "frr" / router), "-c",
                           command], capture_output=True, text=True, timeout=30).stdout
