"""Calico's default IP pool, as calico-node makes it when a cluster starts without one
(from CALICO_IPV4POOL_CIDR; here the lab's --pod-cidr or the agent's --cluster-cidr)."""

from __future__ import annotations

import ipaddress

from gingham.resources.document import Resource, split_documents
from gingham.resources.kinds import CALICO_API, parse_resource

DEFAULT_POOL = "default-ipv4-ippool"


def default_pool(cidr: ipaddress.IPv4Network, encap: str = "none", cross_subnet: bool = False,
                 nat_outgoing: bool = True) -> Resource:
    """`encap`: none, vxlan or ipip; `cross_subnet`: only between subnets."""
    mode = "CrossSubnet" if cross_subnet else "Always"
    spec = {"cidr": str(cidr), "natOutgoing": nat_outgoing,
            "ipipMode": mode if encap == "ipip" else "Never",
            "vxlanMode": mode if encap == "vxlan" else "Never"}
    doc = {"apiVersion": CALICO_API, "kind": "IPPool", "metadata": {"name": DEFAULT_POOL},
           "spec": spec}
    (raw,) = split_documents([doc], "the default pool")
    return parse_resource(raw)
