"""Source NAT for pod traffic leaving the cluster, in the one nft table Gingham owns.

Pod to pod and pod to node traffic is returned before the masquerade rule, so the receiver
always sees the sender's own address (the Kubernetes network model).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gingham.dataplane import nft

FAMILY = "ip"
TABLE = "gingham"
CHAIN = "postrouting"


def _prefix(net: ipaddress.IPv4Network) -> dict | str:
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _set(name: str, members: Iterable[ipaddress.IPv4Network]) -> list[dict]:
    elems = [_prefix(n) for n in sorted(set(members))]
    spec = {"family": FAMILY, "table": TABLE, "name": name, "type": "ipv4_addr",
            "flags": ["interval"], "comment": "managed by gingham"}
    cmds: list[dict] = [{"add": {"set": spec}}]
    if elems:
        cmds.append({"add": {"element": {"family": FAMILY, "table": TABLE, "name": name,
                                         "elem": elems}}})
    return cmds


def _match(field: str, set_name: str, op: str = "==") -> dict:
    return {"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": field}},
                      "right": f"@{set_name}"}}


def render_masquerade_table(
    cluster_cidrs: Iterable[ipaddress.IPv4Network],
    node_addresses: Iterable[ipaddress.IPv4Address],
    enabled: bool = True,
) -> list[dict]:
    """The whole table as one transaction that replaces any earlier version atomically.
    Disabled, there is no table at all: a nat chain, even one that only returns, makes
    conntrack track every packet the node forwards."""
    table = {"family": FAMILY, "name": TABLE}
    if not enabled:
        return [{"add": {"table": table}}, {"delete": {"table": table}}]
    chain = {"family": FAMILY, "table": TABLE, "name": CHAIN, "type": "nat",
             "hook": "postrouting", "prio": 100, "policy": "accept"}

    def rule(*expr: dict) -> dict:
        return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": CHAIN,
                                 "expr": list(expr)}}}

    multicast = {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": _prefix(ipaddress.IPv4Network("224.0.0.0/4"))}}
    return [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        *_set("cluster", cluster_cidrs),
        *_set("nodes", (ipaddress.IPv4Network(a) for a in node_addresses)),
        {"add": {"chain": chain}},
        rule(_match("saddr", "cluster"), _match("daddr", "cluster"), {"return": None}),
        rule(_match("saddr", "cluster"), _match("daddr", "nodes"), {"return": None}),
        rule(_match("saddr", "cluster"), multicast, {"masquerade": None}),
    ]


def apply(cluster_cidrs, node_addresses, enabled: bool = True) -> None:
    nft.run(render_masquerade_table(cluster_cidrs, node_addresses, enabled))

