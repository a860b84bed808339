"""A lab's topology as pure data: names, addresses and subnets, decided before anything exists.

Names carry the lab's name so labs never collide; lab names have no '-', so the prefix
`<lab>-` identifies exactly one lab's namespaces.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")
POD_PART = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,61}[a-z0-9])?$")
DEFAULT_LAB = "gingham"
DEFAULT_POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
DEFAULT_UNDERLAY = ipaddress.IPv4Network("192.168.50.0/24")
NODE_SUBNET_PREFIX = 24
FIRST_NODE_HOST = 11  # node k is .(10+k) on the underlay
EXTERNAL = "external"


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

    @classmethod
    def single_segment(
        cls,
        name: str,
        nodes: int,
        pod_cidr: ipaddress.IPv4Network = DEFAULT_POD_CIDR,
        underlay: ipaddress.IPv4Network = DEFAULT_UNDERLAY,
    ) -> LabPlan:
        check_lab_name(name)
        if nodes < 1:
            raise PlanError("a lab needs at least one node")
        subnets = list(pod_cidr.subnets(new_prefix=NODE_SUBNET_PREFIX)) \
            if pod_cidr.prefixlen <= NODE_SUBNET_PREFIX else []
        if len(subnets) < nodes + 1:
            raise PlanError(f"pod CIDR {pod_cidr} has too few /{NODE_SUBNET_PREFIX} subnets "
                            f"for {nodes} nodes (node k gets subnet k)")
        hosts = list(underlay.hosts())
        if len(hosts) < FIRST_NODE_HOST + nodes:
            raise PlanError(f"underlay {underlay} is too small for {nodes} nodes")
        if underlay.overlaps(pod_cidr):
            raise PlanError(f"underlay {underlay} overlaps the pod CIDR {pod_cidr}")

        def on_underlay(address: ipaddress.IPv4Address) -> ipaddress.IPv4Interface:
            return ipaddress.IPv4Interface(f"{address}/{underlay.prefixlen}")

        return cls(
            name=name,
            pod_cidr=pod_cidr,
            underlay=underlay,
            nodes=tuple(
                NodePlan(f"node{k}", on_underlay(hosts[FIRST_NODE_HOST - 2 + k]), subnets[k])
                for k in range(1, nodes + 1)
            ),
            external=HostPlan(EXTERNAL, on_underlay(hosts[-1])),
        )

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise PlanError(f"lab {self.name} has no node {name!r} "
                        f"(nodes: {', '.join(n.name for n in self.nodes)})")
