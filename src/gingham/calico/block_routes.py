"""The manager of a Calico-mode node's routes from the datastore (calico/route_plan.py):
blocks, node records and pools in; routes of protocol 80 out, and through the tunnel
devices the pools want (calico/tunnels.py) with their neighbour and FDB entries. Every
change re-plans from what it holds; the kernel is written only when the plan changed (a
pod's ADD changes its block, seldom the plan) and read back at each resync. Flannel's
routes (71), the pods' own /32 routes and anyone else's are never touched."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

from gingham.agent.status import StatusFile
from gingham.calico.kinds import BLOCKS, NODES, POOLS
from gingham.calico.route_plan import RoutePlan, plan_routes, wants
from gingham.calico.tunnels import IpipTunnel, VxlanTunnel
from gingham.dataplane import rtmsg
from gingham.dataplane.routes import CALICO_PROTO, apply_routes
from gingham.dataplane.uplink import Uplink
from gingham.dataplane.vxlan import apply_fdb, apply_neighbours
from gingham.ipam.block_ipam import BlockIpam, Pool
from gingham.ipam.blocks import Block
from gingham.subnet.lease import NodeInfo
from gingham.sync.whole import WholePictureManager


class BlockRoutes(WholePictureManager):
    name = "block-routes"
    kinds = (BLOCKS, NODES, POOLS)

    def __init__(self, node: str, uplink: Uplink, status: StatusFile, ipam: BlockIpam,
                 labels: Callable[[], Mapping[str, str]], bgp: bool = False) -> None:
        super().__init__()
        self.bgp = bgp  # BIRD carries every pool's routes but VXLAN ones (calico/bird.py)
        self.node = node
        self.uplink = uplink
        self.status = status
        self.vxlan = VxlanTunnel(node, uplink, ipam, labels)
        self.ipip = IpipTunnel(node, uplink, ipam, labels)
        self._devices: dict[str, int | None] = {}  # mode -> device index, as last made
        self._applied: tuple | None = None
        self._blocked: list[ipaddress.IPv4Network] = []

    def apply_whole(self) -> list[str]:
        problems = self.undecodable()
        blocks = {b.cidr: b for b in self.of(BLOCKS, Block)}
        nodes = {n.name: n for n in self.of(NODES, NodeInfo)}
        pools = sorted(self.of(POOLS, Pool), key=lambda p: p.name)
        vtep = self._device("vxlanMode", wants(pools, "vxlanMode"),
                            lambda: self.vxlan.up(blocks, nodes.get(self.node)),
                            lambda: self.vxlan.down(blocks, nodes.get(self.node)))
        if vtep is not None:
            self.vxlan.publish(blocks, nodes.get(self.node))
        ipip = self._device("ipipMode", wants(pools, "ipipMode"),
                            lambda: self.ipip.up(blocks), lambda: self.ipip.down(blocks))
        plan = plan_routes(self.node, blocks, nodes, pools, self.uplink, vtep, ipip, self.bgp)
        if (plan, vtep, ipip) != self._applied or self.resync_due:
            self._write(plan, vtep)
            self._applied, self.resync_due = (plan, vtep, ipip), False
        problems += plan.problems
        problems += [f"{dst}: a route of another owner holds it; not replaced"
                     for dst in self._blocked]
        self.status.update(routes=len(plan.routes) - len(self._blocked),
                           peers=len(set(nodes) - {self.node}),
                           subnet=", ".join(str(c) for c, b in sorted(blocks.items())
                                            if b.node == self.node) or "-")
        return problems

    def _device(self, mode: str, wanted: bool, up: Callable[[], int],
                down: Callable[[], None]) -> int | None:
        """The tunnel device of `mode` as the pools want it; looked at only when that
        changed, or at a resync."""
        if mode not in self._devices or (self._devices[mode] is not None) != wanted \
                or self.resync_due:
            self._devices[mode] = up() if wanted else None
            if not wanted:
                down()
        return self._devices[mode]

    def _write(self, plan: RoutePlan, vtep: int | None) -> None:
        self.ipip.steer(plan.ipip_peers)  # before the routes send packets its way
        with rtmsg.rtnl() as rtnl:
            self._blocked = apply_routes(rtnl, plan.routes, CALICO_PROTO).blocked
            if vtep is not None:
                apply_neighbours(rtnl, vtep, plan.neighbours)
                apply_fdb(rtnl, vtep, plan.fdb)
