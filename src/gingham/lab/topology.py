"""Lab topologies as pure data: L2 segments, routers joining them, and who sits where.

A topology file (YAML) names segments with their CIDRs, routers with the segments they join,
nodes with their segment, and the external host's segment:

    segments:
      - {name: left,  cidr: 192.168.50.0/24}
      - {name: right, cidr: 192.168.60.0/24}
    routers:
      - {name: router1, segments: [left, right]}
    nodes:
      - {name: node1, segment: left}
      - {name: node3, segment: right}
    external: {segment: left}

Addresses follow the single-segment lab: routers .1 on each of their segments, nodeK
.(10+K), external .254, the control plane .2 of the first segment. Every host gets a route
to every segment it is not on, via the first router of a shortest path there, and a
default route toward the external host; so every segment must be reachable through
routers from the external host's, or the topology is refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from dataclasses import dataclass

ROUTER_HOST = 1
CONTROL_HOST = 2
FIRST_NODE_HOST = 10
NAME = re.compile(r"^[a-z][a-z0-9]{0,14}$")
NODE_NAME = re.compile(r"^node(\d+)$")


class TopologyError(ValueError):
    pass


@dataclass(frozen=True)
class SegmentPlan:
    name: str
    cidr: ipaddress.IPv4Network

    def host(self, n: int) -> ipaddress.IPv4Interface:
        hosts = self.cidr.num_addresses - 2
        if not 0 < n <= hosts:
            raise TopologyError(f"segment {self.name} ({self.cidr}) has no host .{n}")
        return ipaddress.IPv4Interface(f"{self.cidr.network_address + n}/{self.cidr.prefixlen}")

    def last_host(self) -> ipaddress.IPv4Interface:
        return self.host(self.cidr.num_addresses - 2)


@dataclass(frozen=True)
class RouterPlan:
    name: str
    ports: tuple[tuple[str, ipaddress.IPv4Interface], ...]  # (segment, address), eth0.. in order
    # A top-of-rack BGP speaker (FRR) on the router, peering eBGP with these nodes (all
    # when empty), for Calico mode with BGP: `bgp: {asn: 65000, peers: [node1, ...]}`.
    bgp_asn: int | None = None
    bgp_peers: tuple[str, ...] = ()

    def on(self, segment: str) -> ipaddress.IPv4Interface | None:
        return next((addr for seg, addr in self.ports if seg == segment), None)


@dataclass(frozen=True)
class Placement:
    """Where a host sits: its segment and address there."""

    name: str
    segment: str
    address: ipaddress.IPv4Interface


@dataclass(frozen=True)
class Topology:
    segments: tuple[SegmentPlan, ...]
    routers: tuple[RouterPlan, ...]
    nodes: tuple[Placement, ...]
    external: Placement
    control: Placement

    def segment(self, name: str) -> SegmentPlan:
        for segment in self.segments:
            if segment.name == name:
                return segment
        raise TopologyError(f"no segment {name!r} (segments: "
                            f"{', '.join(s.name for s in self.segments)})")


def node_index(name: str, fallback: int) -> int:
    found = NODE_NAME.match(name)
    return int(found.group(1)) if found else fallback


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise TopologyError(f"{kind} name {name!r} must be 1-15 lowercase letters/digits, "
                            "starting with a letter")
    return name


def _router_bgp(router: str, raw: object) -> tuple[int | None, tuple[str, ...]]:
    if raw is None:
        return None, ()
    if not isinstance(raw, dict) or set(raw) - {"asn", "peers"}:
        raise TopologyError(f"router {router}: bgp takes asn and peers")
    asn = raw.get("asn")
    if not isinstance(asn, int) or isinstance(asn, bool) or not 1 <= asn <= 4294967295:
        raise TopologyError(f"router {router}: bgp asn must be an AS number, not {asn!r}")
    peers = raw.get("peers") or []
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        raise TopologyError(f"router {router}: bgp peers is a list of node names")
    return asn, tuple(peers)


def parse_topology(data: object) -> Topology:
    if not isinstance(data, dict):
        raise TopologyError("a topology is a mapping with segments, routers, nodes, external")
    unknown = set(data) - {"segments", "routers", "nodes", "external"}
    if unknown:
        raise TopologyError(f"unknown topology key(s): {', '.join(sorted(unknown))}")
    segments = []
    for raw in data.get("segments") or []:
        try:
            segments.append(SegmentPlan(_check_name("segment", raw["name"]),
                                        ipaddress.IPv4Network(raw["cidr"])))
        except (KeyError, TypeError, ValueError) as err:
            raise TopologyError(f"segment {raw!r}: {err}") from None
    if not segments:
        raise TopologyError("a topology needs at least one segment")
    for i, a in enumerate(segments):
        for b in segments[i + 1:]:
            if a.name == b.name or a.cidr.overlaps(b.cidr):
                raise TopologyError(f"segments {a.name} and {b.name} clash "
                                    f"({a.cidr}, {b.cidr})")
    by_name = {s.name: s for s in segments}

    def segment_of(raw: dict, what: str) -> SegmentPlan:
        name = raw.get("segment") if isinstance(raw, dict) else None
        if name not in by_name:
            raise TopologyError(f"{what}: segment {name!r} is not one of "
                                f"{', '.join(by_name)}")
        return by_name[name]

    routers = []
    for raw in data.get("routers") or []:
        name = _check_name("router", raw.get("name") if isinstance(raw, dict) else None)
        joined = raw.get("segments") or []
        if len(joined) < 2 or len(set(joined)) != len(joined) or \
                any(s not in by_name for s in joined):
            raise TopologyError(f"router {name} must join two or more distinct segments of "
                                f"{', '.join(by_name)}")
        asn, peers = _router_bgp(name, raw.get("bgp"))
        routers.append(RouterPlan(name, tuple((s, by_name[s].host(ROUTER_HOST))
                                              for s in joined), asn, peers))
    nodes = []
    for i, raw in enumerate(data.get("nodes") or [], start=1):
        name = _check_name("node", raw.get("name") if isinstance(raw, dict) else None)
        segment = segment_of(raw, f"node {name}")
        nodes.append(Placement(name, segment.name,
                               segment.host(FIRST_NODE_HOST + node_index(name, i))))
    if not nodes:
        raise TopologyError("a topology needs at least one node")
    for router in routers:
        unknown = set(router.bgp_peers) - {n.name for n in nodes}
        if unknown:
            raise TopologyError(f"router {router.name}: bgp peer {sorted(unknown)[0]!r} is "
                                "not a node of the topology")
    ext_segment = segment_of(data.get("external") or {}, "external")
    topology = Topology(
        segments=tuple(segments),
        routers=tuple(routers),
        nodes=tuple(nodes),
        external=Placement("external", ext_segment.name, ext_segment.last_host()),
        control=Placement("control", segments[0].name, segments[0].host(CONTROL_HOST)),
    )
    _check_unique(topology)
    _check_connected(topology)
    return topology


def _check_unique(topology: Topology) -> None:
    names = [s.name for s in topology.segments] + [r.name for r in topology.routers] + \
        [n.name for n in topology.nodes] + ["external", "control"]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TopologyError(f"names used twice: {', '.join(dupes)}")
    addresses = [n.address.ip for n in topology.nodes]
    if len(set(addresses)) != len(addresses):
        raise TopologyError("two nodes would get the same address")


def _check_connected(topology: Topology) -> None:
    """Every segment must be reachable through routers from the external host's: every
    host's default route leads there, so a host on a segment cut off from it would have
    none (nor a way to the control plane)."""
    start = topology.external.segment
    reachable = {start, *_first_hops(topology, [start])}
    cut_off = [s.name for s in topology.segments if s.name not in reachable]
    if cut_off:
        raise TopologyError(f"segment(s) {', '.join(cut_off)} cannot be reached through "
                            f"routers from segment {start}, where the external host is: "
                            "join them with a router")


@dataclass(frozen=True)
class HostRoutes:
    """What a host's routing table needs beyond its connected segments."""

    routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...]
    default: ipaddress.IPv4Address | None


def host_segments(topology: Topology, host: str) -> list[str]:
    for router in topology.routers:
        if router.name == host:
            return [seg for seg, _ in router.ports]
    placed = [topology.external, topology.control, *topology.nodes]
    return [p.segment for p in placed if p.name == host]


def _first_hops(topology: Topology, start: list[str]) -> dict[str, ipaddress.IPv4Address]:
    """For each segment reachable from `start`, the router address on a start segment that
    begins a shortest path there (BFS over segments, routers as edges)."""
    hops: dict[str, ipaddress.IPv4Address] = {}
    queue: deque[tuple[str, ipaddress.IPv4Address | None]] = deque((s, None) for s in start)
    seen = set(start)
    while queue:
        segment, first = queue.popleft()
        for router in topology.routers:
            here = router.on(segment)
            if here is None:
                continue
            for other, _ in router.ports:
                if other not in seen:
                    seen.add(other)
                    hop = first if first is not None else here.ip
                    hops[other] = hop
                    queue.append((other, hop))
    return hops


def routes_for(topology: Topology, host: str) -> HostRoutes:
    mine = host_segments(topology, host)
    hops = _first_hops(topology, mine)
    routes = tuple((topology.segment(seg).cidr, hop) for seg, hop in sorted(hops.items()))
    if host == topology.external.name:
        default = None  # the external host stands for the internet: it is the way out
    elif topology.external.segment in mine:
        default = topology.external.address.ip
    else:
        default = hops.get(topology.external.segment)
    return HostRoutes(routes, default)
