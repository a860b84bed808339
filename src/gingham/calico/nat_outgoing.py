"""natOutgoing per pool (a Calico-mode manager): traffic from a pool with natOutgoing to an
address outside every pool and every node is masqueraded; to another pool or a node it
keeps its source. The same nft table and reconciliation as Flannel's ip-masq
(dataplane/masquerade.py), with the natOutgoing pools as the sources."""

from __future__ import annotations

from gingham.calico.kinds import NODES, POOLS
from gingham.dataplane import masquerade
from gingham.ipam.block_ipam import Pool
from gingham.subnet.lease import NodeInfo
from gingham.sync.whole import WholePictureManager


class NatOutgoing(WholePictureManager):
    name = "nat-outgoing"
    kinds = (POOLS, NODES)

    def apply_whole(self) -> list[str]:
        pools = self.of(POOLS, Pool)
        nodes = [n.public_ip for n in self.of(NODES, NodeInfo)]
        sources = [p.cidr for p in pools if p.spec["natOutgoing"] and not p.spec["disabled"]]
        masquerade.apply([p.cidr for p in pools], nodes, enabled=bool(sources),
                         sources=sources)
        return []
