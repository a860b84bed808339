"""A lab's topology as pure data: names, addresses and subnets, decided before anything exists.

Names carry the lab's name so labs never collide; lab names have no '-', so the prefix
`<lab>-` identifies exactly one lab's namespaces.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from gingham.lab.topology import (
    FIRST_NODE_HOST,
    Placement,
    RouterPlan,
    SegmentPlan,
    Topology,
    node_index,
)

LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")
POD_PART = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,61}[a-z0-9])?$")
DEFAULT_LAB = "gingham"
DEFAULT_POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
DEFAULT_UNDERLAY = ipaddress.IPv4Network("192.168.50.0/24")
NODE_SUBNET_PREFIX = 24
UNDERLAY = "underlay"  # the one segment of a lab built without a topology file
EXTERNAL = "external"
CONTROL = "control"
DATASTORES = ("embedded", "etcd")
DEFAULT_DATASTORE = "embedded"
DEFAULT_BACKEND = "host-gw"


class PlanError(ValueError):
    pass


def check_lab_name(name: str) -> str:
    if not LAB_NAME.match(name):
        raise PlanError(f"lab name {name!r} must be 1-10 lowercase letters/digits, starting "
                        "with a letter (no '-')")
    return name


def parse_pod_ref(ref: str) -> tuple[str, str]:
    namespace, slash, pod = ref.partition("/")
    if not slash or not POD_PART.match(namespace) or not POD_PART.match(pod):
        raise PlanError(f"pod {ref!r} must be NAMESPACE/POD in lowercase DNS label form")
    return namespace, pod


def netns_name(lab: str, host: str) -> str:
    return f"{lab}-{host}"


def pod_netns_name(lab: str, namespace: str, pod: str) -> str:
    return f"{lab}-pod-{namespace}-{pod}"


@dataclass(frozen=True)
class HostPlan:
    name: str
    address: ipaddress.IPv4Interface
    segment: str = UNDERLAY


@dataclass(frozen=True)
class NodePlan(HostPlan):
    pod_subnet: ipaddress.IPv4Network = field(default=DEFAULT_POD_CIDR)


@dataclass(frozen=True)
class LabPlan:
    name: str
    pod_cidr: ipaddress.IPv4Network
    underlay: ipaddress.IPv4Network  # the first segment's CIDR
    nodes: tuple[NodePlan, ...]
    external: HostPlan
    control: HostPlan  # runs etcd when the datastore is etcd
    datastore: str = DEFAULT_DATASTORE
    backend: str = DEFAULT_BACKEND
    backend_options: dict = field(default_factory=dict, hash=False)  # e.g. DirectRouting
    ip_masq: bool = True  # agents masquerade pod traffic leaving the cluster (flanneld --ip-masq)
    segments: tuple[SegmentPlan, ...] = ()
    routers: tuple[RouterPlan, ...] = ()
    mode: str = "flannel"  # or calico: routed pods, IP pools and block IPAM
    encap: str = "none"  # calico: the default pool's encapsulation, none, vxlan or ipip
    cross_subnet: bool = False  # calico: encapsulate only between subnets (CrossSubnet)
    bgp: bool = False  # calico: every node runs BIRD (`lab up`'s default for calico)
    log_denied: bool = False  # agents log what NetworkPolicy drops (`lab up --log`)

    @classmethod
    def single_segment(
        cls,
        name: str,
        nodes: int,
        pod_cidr: ipaddress.IPv4Network = DEFAULT_POD_CIDR,
        underlay: ipaddress.IPv4Network = DEFAULT_UNDERLAY,
        datastore: str = DEFAULT_DATASTORE,
        backend: str = DEFAULT_BACKEND,
        backend_options: dict | None = None,
    ) -> LabPlan:
        if nodes < 1:
            raise PlanError("a lab needs at least one node")
        topology = Topology(segments=(SegmentPlan(UNDERLAY, underlay),), routers=(),
                            nodes=(), external=Placement(EXTERNAL, UNDERLAY, _last(underlay)),
                            control=Placement(CONTROL, UNDERLAY, _host(underlay, 2)))
        plan = cls.from_topology(name, topology, pod_cidr, datastore, backend, backend_options)
        for k in range(1, nodes + 1):
            plan = plan.with_node(k)
        return plan

    @classmethod
    def from_topology(
        cls,
        name: str,
        topology: Topology,
        pod_cidr: ipaddress.IPv4Network = DEFAULT_POD_CIDR,
        datastore: str = DEFAULT_DATASTORE,
        backend: str = DEFAULT_BACKEND,
        backend_options: dict | None = None,
    ) -> LabPlan:
        check_lab_name(name)
        if datastore not in DATASTORES:
            raise PlanError(f"datastore {datastore!r} is not one of {', '.join(DATASTORES)}")
        for segment in topology.segments:
            if segment.cidr.overlaps(pod_cidr):
                raise PlanError(f"segment {segment.name} ({segment.cidr}) overlaps the pod "
                                f"CIDR {pod_cidr}")
            if segment.cidr.num_addresses < 2 + FIRST_NODE_HOST + 2:
                raise PlanError(f"segment {segment.name} ({segment.cidr}) is too small")

        def host(p: Placement) -> HostPlan:
            return HostPlan(p.name, p.address, p.segment)

        plan = cls(name=name, pod_cidr=pod_cidr, underlay=topology.segments[0].cidr, nodes=(),
                   external=host(topology.external), control=host(topology.control),
                   datastore=datastore, backend=backend,
                   backend_options=dict(backend_options or {}),
                   segments=topology.segments, routers=topology.routers)
        for i, node in enumerate(topology.nodes, start=1):
            plan = plan._with(NodePlan(node.name, node.address, node.segment,
                                       plan._subnet(node_index(node.name, i))))
        return plan

    def topology(self) -> Topology:
        return Topology(
            segments=self.segments, routers=self.routers,
            nodes=tuple(Placement(n.name, n.segment, n.address) for n in self.nodes),
            external=Placement(self.external.name, self.external.segment,
                               self.external.address),
            control=Placement(self.control.name, self.control.segment, self.control.address),
        )

    def _subnet(self, k: int) -> ipaddress.IPv4Network:
        subnets = list(self.pod_cidr.subnets(new_prefix=NODE_SUBNET_PREFIX)) \
            if self.pod_cidr.prefixlen <= NODE_SUBNET_PREFIX else []
        if k >= len(subnets):
            raise PlanError(f"pod CIDR {self.pod_cidr} has too few /{NODE_SUBNET_PREFIX} "
                            f"subnets for node{k} (node k gets subnet k)")
        return subnets[k]

    def _with(self, node: NodePlan) -> LabPlan:
        if any(n.name == node.name for n in self.nodes):
            raise PlanError(f"lab {self.name} already has {node.name}")
        return replace(self, nodes=(*self.nodes, node))

    def with_node(self, k: int, segment: str | None = None) -> LabPlan:
        """This plan plus node k on `segment` (default: the first): address .(10+k),
        preferred pod subnet k."""
        seg = next((s for s in self.segments if s.name == (segment or self.segments[0].name)),
                   None)
        if seg is None:
            raise PlanError(f"lab {self.name} has no segment {segment!r}")
        if FIRST_NODE_HOST + k >= seg.cidr.num_addresses - 2:
            raise PlanError(f"segment {seg.name} ({seg.cidr}) is too small for node{k}")
        return self._with(NodePlan(f"node{k}", _host(seg.cidr, FIRST_NODE_HOST + k), seg.name,
                                   self._subnet(k)))

    def without_node(self, name: str) -> LabPlan:
        self.node(name)
        return replace(self, nodes=tuple(n for n in self.nodes if n.name != name))

    def next_node_index(self) -> int:
        return max((node_index(n.name, 0) for n in self.nodes), default=0) + 1

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise PlanError(f"lab {self.name} has no node {name!r} "
                        f"(nodes: {', '.join(n.name for n in self.nodes)})")


def _host(cidr: ipaddress.IPv4Network, n: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"{cidr.network_address + n}/{cidr.prefixlen}")


def _last(cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    return _host(cidr, cidr.num_addresses - 2)
