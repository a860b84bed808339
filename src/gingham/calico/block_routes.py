"""The manager of a Calico-mode node's routes from the datastore (calico/route_plan.py):
blocks, node records and pools in, the routes of protocol 80 out. Every change re-plans
from what it holds (no I/O) and the apply sets the difference against the kernel's table;
Flannel's routes (71), the pods' own /32 routes and anyone else's are never touched."""

from __future__ import annotations

from gingham.agent.status import StatusFile
from gingham.calico.kinds import BLOCKS, NODES, POOLS
from gingham.calico.route_plan import plan_routes
from gingham.dataplane import rtmsg
from gingham.dataplane.routes import CALICO_PROTO, apply_routes
from gingham.dataplane.uplink import Uplink
from gingham.ipam.block_ipam import Pool
from gingham.ipam.blocks import Block
from gingham.subnet.lease import NodeInfo
from gingham.sync.kinds import Undecodable
from gingham.sync.whole import WholePictureManager


class BlockRoutes(WholePictureManager):
    name = "block-routes"
    kinds = (BLOCKS, NODES, POOLS)

    def __init__(self, node: str, uplink: Uplink, status: StatusFile) -> None:
        super().__init__()
        self.node = node
        self.uplink = uplink
        self.status = status

    def apply_whole(self) -> list[str]:
        problems = [f"{key}: {obj.why}" for kind in self.kinds
                    for key, obj in self.objects[kind].items() if isinstance(obj, Undecodable)]
        blocks = {b.cidr: b for b in self.of(BLOCKS, Block)}
        nodes = {n.name: n.public_ip for n in self.of(NODES, NodeInfo)}
        pools = sorted(self.of(POOLS, Pool), key=lambda p: p.name)
        plan = plan_routes(self.node, blocks, nodes, pools, self.uplink)
        with rtmsg.rtnl() as rtnl:
            diff = apply_routes(rtnl, plan.routes, CALICO_PROTO)
        problems += plan.problems
        problems += [f"{dst}: a route of another owner holds it; not replaced"
                     for dst in diff.blocked]
        self.status.update(routes=len(plan.routes) - len(diff.blocked),
                           peers=len(set(nodes) - {self.node}),
                           subnet=", ".join(str(c) for c, b in sorted(blocks.items())
                                            if b.node == self.node) or "-")
        return problems
