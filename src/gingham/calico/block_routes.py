"""The manager of a Calico-mode node's routes from the datastore (calico/route_plan.py):
blocks, node records and pools in; routes of protocol 80, and with a VXLAN pool the
`vxlan.calico` device with its neighbour and FDB entries, out. Every change re-plans from
what it holds and the apply sets the difference against the kernel; Flannel's routes (71),
the pods' own /32 routes and anyone else's are never touched.

With a VXLAN pool the node takes a tunnel address from its own block (IPAM handle
`vxlan-tunnel-addr-<node>`, as calico-node does) and publishes it with its VTEP MAC in its
node record; when no pool wants VXLAN any more, the device, the address and the record's
entry go."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping

from gingham.agent.status import StatusFile
from gingham.calico.kinds import BLOCKS, NODES, POOLS
from gingham.calico.route_plan import (
    VXLAN_DEVICE,
    VXLAN_PORT,
    VXLAN_VNI,
    RoutePlan,
    plan_routes,
    wants_vxlan,
)
from gingham.dataplane import netns, rtmsg
from gingham.dataplane.bridge import link_index
from gingham.dataplane.routes import CALICO_PROTO, apply_routes
from gingham.dataplane.uplink import Uplink
from gingham.dataplane.vxlan import VtepSpec, apply_fdb, apply_neighbours, ensure_vtep, stable_mac
from gingham.ipam.block_ipam import BlockIpam, Pool
from gingham.ipam.blocks import Block
from gingham.subnet.lease import NodeInfo
from gingham.subnet.registry import SubnetRegistry
from gingham.sync.kinds import Undecodable
from gingham.sync.whole import WholePictureManager

log = logging.getLogger("gingham.calico.routes")
VXLAN_OVERHEAD = 50


class BlockRoutes(WholePictureManager):
    name = "block-routes"
    kinds = (BLOCKS, NODES, POOLS)

    def __init__(self, node: str, uplink: Uplink, status: StatusFile, ipam: BlockIpam,
                 labels: Callable[[], Mapping[str, str]]) -> None:
        super().__init__()
        self.node = node
        self.uplink = uplink
        self.status = status
        self.ipam = ipam
        self.registry = SubnetRegistry(ipam.store, ipam.prefix)
        self.labels = labels
        self._applied: tuple[RoutePlan, int | None] | None = None
        self._vtep: int | None = None
        self._vtep_wanted: bool | None = None
        self._blocked: list[ipaddress.IPv4Network] = []
        self._resync = True

    def resync(self) -> None:
        super().resync()
        self._resync = True

    @property
    def tunnel_handle(self) -> str:
        return f"vxlan-tunnel-addr-{self.node}"

    def apply_whole(self) -> list[str]:
        problems = [f"{key}: {obj.why}" for kind in self.kinds
                    for key, obj in self.objects[kind].items() if isinstance(obj, Undecodable)]
        blocks = {b.cidr: b for b in self.of(BLOCKS, Block)}
        nodes = {n.name: n for n in self.of(NODES, NodeInfo)}
        pools = sorted(self.of(POOLS, Pool), key=lambda p: p.name)
        # The device is looked at only when what it should be changed, or at a resync: a
        # pod's ADD changes a block, and must not cost a netlink handle and a link dump.
        want = wants_vxlan(pools)
        if want != self._vtep_wanted or self._resync:
            self._vtep = self._tunnel(blocks, nodes.get(self.node)) if want \
                else self._no_tunnel(blocks, nodes.get(self.node))
            self._vtep_wanted = want
        elif want:
            self._publish(blocks, nodes.get(self.node))
        vtep = self._vtep
        plan = plan_routes(self.node, blocks, nodes, pools, self.uplink, vtep)
        # A pod added to a block changes the block, seldom the plan: the kernel is read
        # back only when the plan changed, and on the loop's periodic resync.
        if (plan, vtep) != self._applied or self._resync:
            with rtmsg.rtnl() as rtnl:
                diff = apply_routes(rtnl, plan.routes, CALICO_PROTO)
                if vtep is not None:
                    apply_neighbours(rtnl, vtep, plan.neighbours)
                    apply_fdb(rtnl, vtep, plan.fdb)
            self._blocked = diff.blocked
            self._applied, self._resync = (plan, vtep), False
        problems += plan.problems
        problems += [f"{dst}: a route of another owner holds it; not replaced"
                     for dst in self._blocked]
        self.status.update(routes=len(plan.routes) - len(self._blocked),
                           peers=len(set(nodes) - {self.node}),
                           subnet=", ".join(str(c) for c, b in sorted(blocks.items())
                                            if b.node == self.node) or "-")
        return problems

    def _held_tunnel(self, blocks: Mapping[ipaddress.IPv4Network, Block]
                     ) -> ipaddress.IPv4Address | None:
        return next((address for block in blocks.values()
                     for address, attrs in block.holders()
                     if attrs.get("handle") == self.tunnel_handle), None)

    def _tunnel(self, blocks: Mapping[ipaddress.IPv4Network, Block],
                me: NodeInfo | None) -> int:
        """vxlan.calico as it should be, its address taken and published; its index."""
        address = self._tunnel_address(blocks)
        spec = VtepSpec(VXLAN_DEVICE, VXLAN_VNI, VXLAN_PORT, self.uplink.address.ip,
                        self.uplink.index, self.vtep_mac, self.uplink.mtu - VXLAN_OVERHEAD,
                        address)
        with netns.iproute() as ipr:
            index = ensure_vtep(ipr, spec)
        self._publish(blocks, me)
        return index

    @property
    def vtep_mac(self) -> str:
        return stable_mac(f"calico-vxlan/{self.node}")

    def _tunnel_address(self, blocks: Mapping[ipaddress.IPv4Network, Block]
                        ) -> ipaddress.IPv4Address:
        return self._held_tunnel(blocks) or self.ipam.assign(self.node, self.labels(), {
            "handle": self.tunnel_handle, "namespace": "", "pod": "", "node": self.node}
        ).address

    def _publish(self, blocks: Mapping[ipaddress.IPv4Network, Block],
                 me: NodeInfo | None) -> None:
        """The node record names this node's tunnel endpoint (again, if something removed
        it, e.g. a restarted agent's first node record)."""
        address = str(self._tunnel_address(blocks))
        if me is None or (me.vxlan_address, me.vxlan_mac) != (address, self.vtep_mac):
            self.registry.publish_vxlan(self.node, address, self.vtep_mac)
            log.info("VXLAN tunnel endpoint %s (%s) on %s", address, self.vtep_mac,
                     VXLAN_DEVICE)

    def _no_tunnel(self, blocks: Mapping[ipaddress.IPv4Network, Block],
                   me: NodeInfo | None) -> None:
        """No pool wants VXLAN: nothing of it stays (device, address, published entry)."""
        with netns.iproute() as ipr:
            index = link_index(ipr, VXLAN_DEVICE)
            if index is not None:
                ipr.link("del", index=index)
                log.info("no pool uses VXLAN: removed %s", VXLAN_DEVICE)
        if self._held_tunnel(blocks) is not None:
            self.ipam.release(self.tunnel_handle)
        if me is not None and me.vxlan_address:
            self.registry.publish_vxlan(self.node, "", "")
