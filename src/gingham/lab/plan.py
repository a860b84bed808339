"""A lab's topology as pure data: names, addresses and subnets, decided before anything exists.

Names carry the lab's name so labs never collide; lab names have no '-', so the prefix
`<lab>-` identifies exactly one lab's namespaces.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")
POD_PART = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,61}[a-z0-9])?$")
DEFAULT_LAB = "gingham"
DEFAULT_POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
DEFAULT_UNDERLAY = ipaddress.IPv4Network("192.168.50.0/24")
NODE_SUBNET_PREFIX = 24
FIRST_NODE_HOST = 11  # node k is .(10+k) on the underlay
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


@dataclass(frozen=True)
class NodePlan(HostPlan):
    pod_subnet: ipaddress.IPv4Network = field(default=DEFAULT_POD_CIDR)


@dataclass(frozen=True)
class LabPlan:
    name: str
    pod_cidr: ipaddress.IPv4Network
    underlay: ipaddress.IPv4Network
    nodes: tuple[NodePlan, ...]
    external: HostPlan
    control: HostPlan  # runs etcd when the datastore is etcd
    datastore: str = DEFAULT_DATASTORE
    backend: str = DEFAULT_BACKEND
    backend_options: dict = field(default_factory=dict, hash=False)  # e.g. DirectRouting

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
        check_lab_name(name)
        if nodes < 1:
            raise PlanError("a lab needs at least one node")
        if datastore not in DATASTORES:
            raise PlanError(f"datastore {datastore!r} is not one of {', '.join(DATASTORES)}")
        if underlay.overlaps(pod_cidr):
            raise PlanError(f"underlay {underlay} overlaps the pod CIDR {pod_cidr}")
        hosts = list(underlay.hosts())
        if len(hosts) < FIRST_NODE_HOST + 1:
            raise PlanError(f"underlay {underlay} is too small for a lab")
        plan = cls(name=name, pod_cidr=pod_cidr, underlay=underlay, nodes=(),
                   external=HostPlan(EXTERNAL, _on(underlay, hosts[-1])),
                   control=HostPlan(CONTROL, _on(underlay, hosts[1])),
                   datastore=datastore, backend=backend,
                   backend_options=dict(backend_options or {}))
        for k in range(1, nodes + 1):
            plan = plan.with_node(k)
        return plan

    def with_node(self, k: int) -> LabPlan:
        """This plan plus node k: underlay address .(10+k), preferred pod subnet k."""
        hosts = list(self.underlay.hosts())
        subnets = list(self.pod_cidr.subnets(new_prefix=NODE_SUBNET_PREFIX)) \
            if self.pod_cidr.prefixlen <= NODE_SUBNET_PREFIX else []
        if k >= len(subnets):
            raise PlanError(f"pod CIDR {self.pod_cidr} has too few /{NODE_SUBNET_PREFIX} "
                            f"subnets for node{k} (node k gets subnet k)")
        if FIRST_NODE_HOST - 2 + k >= len(hosts) - 1:
            raise PlanError(f"underlay {self.underlay} is too small for node{k}")
        if any(n.name == f"node{k}" for n in self.nodes):
            raise PlanError(f"lab {self.name} already has node{k}")
        node = NodePlan(f"node{k}", _on(self.underlay, hosts[FIRST_NODE_HOST - 2 + k]),
                        subnets[k])
        return replace(self, nodes=(*self.nodes, node))

    def without_node(self, name: str) -> LabPlan:
        self.node(name)
        return replace(self, nodes=tuple(n for n in self.nodes if n.name != name))

    def next_node_index(self) -> int:
        return max((int(n.name.removeprefix("node")) for n in self.nodes), default=0) + 1

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise PlanError(f"lab {self.name} has no node {name!r} "
                        f"(nodes: {', '.join(n.name for n in self.nodes)})")


def _on(underlay: ipaddress.IPv4Network, address: ipaddress.IPv4Address
        ) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"{address}/{underlay.prefixlen}")
