"""Which routes a Calico-mode node wants from the datastore alone (no BGP), as felix
programs them for VXLAN mode:

- every block of another node: `<block> via <node IP>` on the uplink when the node shares
  this node's subnet and the block's pool does not encapsulate there;
- every block of this node: `blackhole <block>`, so an address of it no pod holds is
  dropped here instead of following the default route;
- every address borrowed from a block of another node: `<ip>/32 via <holder's IP>`, more
  specific than the block's route (the holder itself has the pod's own /32).

An encapsulated pool (vxlanMode/ipipMode Always, or CrossSubnet across subnets) and a
node across a router without encapsulation are reported, not programmed, in this part.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from gingham.dataplane.routes import RouteIntent
from gingham.dataplane.uplink import Uplink
from gingham.ipam.block_ipam import Pool
from gingham.ipam.blocks import Block


@dataclass
class RoutePlan:
    routes: set[RouteIntent]
    problems: list[str]


def encapsulates(pool: Pool, same_subnet: bool) -> bool:
    modes = (pool.spec["ipipMode"], pool.spec["vxlanMode"])
    return "Always" in modes or ("CrossSubnet" in modes and not same_subnet)


def plan_routes(me: str, blocks: Mapping[ipaddress.IPv4Network, Block],
                nodes: Mapping[str, ipaddress.IPv4Address], pools: list[Pool],
                uplink: Uplink) -> RoutePlan:
    routes: set[RouteIntent] = set()
    problems: list[str] = []

    def via(node: str, dst: ipaddress.IPv4Network, pool: Pool) -> None:
        address = nodes.get(node)
        if address is None:
            problems.append(f"{dst}: node {node} has no node record; not routed")
            return
        same_subnet = address in uplink.address.network
        if encapsulates(pool, same_subnet):
            problems.append(f"{dst}: pool {pool.name} encapsulates to node {node} "
                            f"({address}); not programmed yet")
        elif not same_subnet:
            problems.append(f"{dst}: node {node} ({address}) is not on this node's subnet "
                            f"{uplink.address.network} and pool {pool.name} does not encapsulate "
                            "(needs BGP, or vxlanMode/ipipMode CrossSubnet)")
        else:
            routes.add(RouteIntent(dst, address, uplink.index))

    for cidr, block in blocks.items():
        pool = next((p for p in pools if cidr.subnet_of(p.cidr)), None)
        if pool is None:
            continue  # a block outside every pool (`ipam check` says so)
        owner = block.node
        if owner == me:
            routes.add(RouteIntent(cidr, None, 0, blackhole=True))
        elif owner is not None:
            via(owner, cidr, pool)
        for address, attrs in block.holders():
            holder = attrs.get("node")
            if holder and holder != owner and holder != me:
                via(holder, ipaddress.IPv4Network(f"{address}/32"), pool)
    return RoutePlan(routes, problems)
