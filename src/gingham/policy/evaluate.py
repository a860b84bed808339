"""What a set of NetworkPolicies allows, computed straight from their meaning in plain
Python: the oracle a truth-table prober compares the nftables dataplane against, so it
shares nothing with the nft compiler.

Traffic from `src` to `dst` is allowed iff both sides allow it:
- egress: `src` is a pod no policy of its namespace with Egress selects, or some egress
  rule of such a policy matches `dst` and the port;
- ingress: likewise for `dst` with Ingress, matching `src`.
A non-pod end (a node, an outside address, given as an IP) has no side of its own.

Choices where Kubernetes leaves room, each the common implementations' (Calico's):
- A pod can always reach itself ("a pod cannot block access to itself").
- Traffic between a pod and its own node is always allowed, both ways ("traffic to and
  from the node where a Pod is running is always allowed", the Kubernetes docs; kubelet
  probes need it). The caller names each node's IPs (`node_ips`); any other node's IP
  is an ordinary address that only an ipBlock matches.
- ipBlock matches pod IPs too, not only addresses outside the cluster.
- A named port matches when the destination pod has a container port of that name and
  protocol with that number, for ingress and egress rules alike; a non-pod destination
  never matches a named port.
- SCTP is evaluated like TCP and UDP; whether the dataplane can filter it is not asked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from gingham.policy.spec import EGRESS, INGRESS, NetworkPolicy, Peer, PortMatch, Rule
from gingham.workloads.records import NAMESPACE_NAME_LABEL, PROTOCOLS, NamedPort, Namespace, Pod


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    ip: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[NamedPort, ...] = ()  # named container ports; a name may differ per pod
    node: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, pod: Pod) -> PodView:
        return cls(pod.namespace, pod.name, pod.ip, dict(pod.labels), tuple(pod.ports),
                   pod.node)


@dataclass(frozen=True)
class NamespaceView:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def of(cls, namespace: Namespace) -> NamespaceView:
        return cls(namespace.name, dict(namespace.labels))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reasons: tuple[str, ...]  # one per side that decided, or why no side applies


Endpoint = PodView | str  # a pod, or the IP of something that is not one


@dataclass(frozen=True)
class _Cluster:
    policies: tuple[NetworkPolicy, ...]
    namespace_labels: Mapping[str, Mapping[str, str]]
    node_ips: Mapping[str, Collection[str]]

    def labels_of(self, namespace: str) -> Mapping[str, str]:
        # Kubernetes sets kubernetes.io/metadata.name on every namespace, listed or not
        return {**self.namespace_labels.get(namespace, {}), NAMESPACE_NAME_LABEL: namespace}


def allowed(src: Endpoint, dst: Endpoint, port: int, protocol: str, *,
            pods: Iterable[PodView] = (), namespaces: Iterable[NamespaceView] = (),
            policies: Iterable[NetworkPolicy] = (),
            node_ips: Mapping[str, Collection[str]] | None = None) -> Verdict:
    """Whether `src` may open `protocol` traffic to `dst` on `port`. An end given as an IP
    that one of `pods` has is that pod; `node_ips` maps node name to the node's IPs."""
    protocol = protocol.upper()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    by_ip = {pod.ip: pod for pod in pods if pod.ip}
    src = by_ip.get(src, src) if isinstance(src, str) else src
    dst = by_ip.get(dst, dst) if isinstance(dst, str) else dst
    if isinstance(src, PodView) and isinstance(dst, PodView) and src.ref == dst.ref:
        return Verdict(True, (f"{src.ref} to itself: a pod can always reach itself",))
    if not isinstance(src, PodView) and not isinstance(dst, PodView):
        return Verdict(True, (f"{src} to {dst}: neither end is a pod, no policy applies",))
    cluster = _Cluster(tuple(policies), {ns.name: ns.labels for ns in namespaces},
                       node_ips or {})
    sides = []
    if isinstance(src, PodView):
        sides.append(_side(EGRESS, src, dst, dst, port, protocol, cluster))
    if isinstance(dst, PodView):
        sides.append(_side(INGRESS, dst, src, dst, port, protocol, cluster))
    return Verdict(all(ok for ok, _ in sides), tuple(reason for _, reason in sides))


def _name(end: Endpoint) -> str:
    return end.ref if isinstance(end, PodView) else end


def _side(direction: str, pod: PodView, peer: Endpoint, target: Endpoint, port: int,
          protocol: str, cluster: _Cluster) -> tuple[bool, str]:
    """One pod's side of the traffic: (allowed, why). `peer` is the other end; `target`
    the destination, which named ports resolve against."""
    side = f"{direction.lower()} of {pod.ref}"
    if isinstance(peer, str) and peer in cluster.node_ips.get(pod.node, ()):
        return True, f"{side}: {peer} is its own node {pod.node}, always allowed"
    isolating = [p for p in cluster.policies
                 if p.namespace == pod.namespace and direction in p.policy_types
                 and p.pod_selector.matches(pod.labels)]
    if not isolating:
        return True, f"{side} not isolated"
    allowing = [f"{p.ref} rule {i}" for p in isolating
                for i, rule in enumerate(p.rules(direction))
                if _rule_matches(rule, p.namespace, peer, target, port, protocol, cluster)]
    if allowing:
        return True, f"{side} allowed by {', '.join(allowing)}"
    return False, (f"{side} isolated by {', '.join(p.ref for p in isolating)}; no rule "
                   f"allows {_name(peer)} on {port}/{protocol}")


def _rule_matches(rule: Rule, namespace: str, peer: Endpoint, target: Endpoint, port: int,
                  protocol: str, cluster: _Cluster) -> bool:
    peers_ok = not rule.peers or any(_peer_matches(p, namespace, peer, cluster)
                                     for p in rule.peers)
    ports_ok = not rule.ports or any(_port_matches(m, target, port, protocol)
                                     for m in rule.ports)
    return peers_ok and ports_ok


def _peer_matches(peer: Peer, namespace: str, end: Endpoint, cluster: _Cluster) -> bool:
    if peer.ip_block is not None:
        text = end.ip if isinstance(end, PodView) else end
        if not text:
            return False
        ip = ipaddress.ip_address(text)
        block = peer.ip_block
        return ip in block.cidr and not any(ip in net for net in block.except_)
    if not isinstance(end, PodView):
        return False  # selectors only ever select pods
    if peer.namespace_selector is None:
        in_namespace = end.namespace == namespace
    else:
        in_namespace = peer.namespace_selector.matches(cluster.labels_of(end.namespace))
    return in_namespace and (peer.pod_selector is None
                             or peer.pod_selector.matches(end.labels))


def _port_matches(match: PortMatch, target: Endpoint, port: int, protocol: str) -> bool:
    if match.protocol != protocol:
        return False
    if match.port is None:
        return True
    if isinstance(match.port, str):
        return isinstance(target, PodView) and any(
            p.name == match.port and p.protocol == protocol and p.port == port
            for p in target.ports)
    return match.port <= port <= (match.end_port or match.port)
