"""Which routes a Calico-mode node wants from the datastore alone (no BGP), as felix
programs them for VXLAN mode:

- every block of another node, by the block's pool and where that node is:
  - no encapsulation (or CrossSubnet, same subnet): `<block> via <node IP>` on the uplink;
  - VXLAN (Always, or CrossSubnet across subnets): `<block> via <node's tunnel address>
    dev vxlan.calico onlink`, with the neighbour entry (tunnel address -> its VTEP MAC) and
    the FDB entry (VTEP MAC -> node IP) the kernel needs to send it;
  - IPIP (Always, or CrossSubnet across subnets): `<block> via <node IP> dev <IPIP device>
    onlink`, the kernel's tunl0 or the userspace path's device (calico/tunnels.py);
- every block of this node: `blackhole <block>`, so an address of it no pod holds is
  dropped here instead of following the default route;
- every address borrowed from a block of another node: the same, as a /32 to its holder
  (more specific than the block's route; the holder itself has the pod's own /32).

A node across a router without encapsulation is reported, not routed: that takes BGP.
With BGP, BIRD routes every pool but VXLAN ones, as calico-node's BIRD does (felix keeps
the VXLAN routes): the plan then holds only the VXLAN pools' routes, and the userspace
IPIP device's steering (where tunl0 reads the route's gateway, the userspace path needs
to be told each block's node).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from gingham.dataplane.routes import RouteIntent
from gingham.dataplane.uplink import Uplink
from gingham.dataplane.vxlan import FdbIntent, NeighIntent
from gingham.ipam.block_ipam import Pool
from gingham.ipam.blocks import Block
from gingham.subnet.lease import NodeInfo

VXLAN_DEVICE = "vxlan.calico"
VXLAN_VNI = 4096
VXLAN_PORT = 4789


@dataclass
class RoutePlan:
    routes: set[RouteIntent] = field(default_factory=set)
    neighbours: set[NeighIntent] = field(default_factory=set)
    fdb: set[FdbIntent] = field(default_factory=set)
    ipip_peers: dict[ipaddress.IPv4Network, ipaddress.IPv4Address] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def encapsulates(pool: Pool, same_subnet: bool) -> bool:
    modes = (pool.spec["ipipMode"], pool.spec["vxlanMode"])
    return "Always" in modes or ("CrossSubnet" in modes and not same_subnet)


def wants(pools: list[Pool], mode: str) -> bool:
    """Whether an enabled pool uses `mode` (vxlanMode, ipipMode) anywhere."""
    return any(p.spec[mode] != "Never" and not p.spec["disabled"] for p in pools)


def routed_by_bird(pool: Pool) -> bool:
    """With BGP on, whether BIRD puts this pool's routes in the kernel."""
    return pool.spec["vxlanMode"] == "Never"


def plan_routes(me: str, blocks: Mapping[ipaddress.IPv4Network, Block],
                nodes: Mapping[str, NodeInfo], pools: list[Pool], uplink: Uplink,
                vtep: int | None = None, ipip: int | None = None,
                bgp: bool = False) -> RoutePlan:
    """`vtep`, `ipip`: the indexes of this node's vxlan.calico and IPIP device, when it
    has them. `bgp`: BIRD routes the pools it can (`routed_by_bird`), this node's
    blackholes for them included."""
    plan = RoutePlan()

    def via(name: str, dst: ipaddress.IPv4Network, pool: Pool) -> None:
        node = nodes.get(name)
        if node is None:
            if not (bgp and routed_by_bird(pool)):
                plan.problems.append(f"{dst}: node {name} has no node record; not routed")
            return
        same_subnet = node.public_ip in uplink.address.network
        bird = bgp and routed_by_bird(pool)
        if not encapsulates(pool, same_subnet):
            if bird:
                return
            if same_subnet:
                plan.routes.add(RouteIntent(dst, node.public_ip, uplink.index))
            else:
                plan.problems.append(
                    f"{dst}: node {name} ({node.public_ip}) is not on this node's subnet "
                    f"{uplink.address.network} and pool {pool.name} does not encapsulate "
                    "(needs BGP, or vxlanMode/ipipMode CrossSubnet)")
        elif pool.spec["ipipMode"] != "Never":
            plan.ipip_peers[dst] = node.public_ip
            if ipip is None:
                plan.problems.append(f"{dst}: no IPIP device for node {name} yet")
            elif not bird:
                plan.routes.add(RouteIntent(dst, node.public_ip, ipip, onlink=True))
        elif vtep is None or not node.vxlan_address:
            plan.problems.append(f"{dst}: no VXLAN tunnel to node {name} yet")
        else:
            tunnel = ipaddress.IPv4Address(node.vxlan_address)
            plan.routes.add(RouteIntent(dst, tunnel, vtep, onlink=True))
            plan.neighbours.add(NeighIntent(tunnel, node.vxlan_mac))
            plan.fdb.add(FdbIntent(node.vxlan_mac, node.public_ip))

    for cidr, block in blocks.items():
        pool = next((p for p in pools if cidr.subnet_of(p.cidr)), None)
        if pool is None:
            continue  # a block outside every pool (`ipam check` says so)
        owner = block.node
        if owner == me:
            if not (bgp and routed_by_bird(pool)):
                plan.routes.add(RouteIntent(cidr, None, 0, blackhole=True))
        elif owner is not None:
            via(owner, cidr, pool)
        for address, attrs in block.holders():
            holder = attrs.get("node")
            if holder and holder != owner and holder != me:
                via(holder, ipaddress.IPv4Network(f"{address}/32"), pool)
    return plan
