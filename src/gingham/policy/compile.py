"""NetworkPolicy compiled into one nftables table of a node (`inet gingham_policy`), for the
pods on that node: pure, from the policies, pods and namespaces to nft's JSON commands.

Shape (DESIGN 2.5, after Calico's nftables dataplane):
- base chains on the forward hook: `egress` (priority 0), `ingress` (10), `allowed` (20).
  An `accept` ends only its own base chain, so a packet allowed out of its pod still meets
  the ingress chain of the pod it goes to, and then `allowed`; a drop is final.
- dispatch per pod through verdict maps keyed by the pod's address in the connection's
  original direction (`ct original ip saddr vmap @egress_pods`, `... daddr vmap
  @ingress_pods`): a pod no policy isolates is in neither map and passes untouched; the
  cost per packet is a map lookup plus the rules of the policies that select that pod.
  The original tuple, not the packet's header, so a reply is judged as the connection it
  belongs to: replies of allowed connections pass, and a policy change applies at once to
  live connections in both directions. There is no `ct state established accept`
  bypass; instead a connection judged allowed carries the ruleset's generation in its
  conntrack mark and skips the chains until the next change (base_chains).
  By address rather than interface: a bridged (Flannel) pod's traffic reaches the inet
  forward hook through br_netfilter with the bridge as its interface, not the pod's port.
- per pod `eg_`/`in_` chains: its own traffic to itself passes, then a jump to each
  selecting policy's chain, then drop. Per policy `pe_`/`pi_` chains: one rule per
  (peer, port) of each policy rule, ending in accept.
- selector peers as sets of pod addresses (`peer_…`), named ports as one set per name of
  `address . protocol . port` over every pod that declares it (`np_…`), so a name that
  means different numbers on different pods resolves per destination pod. A pod or
  label change is then a change of set elements.

Host traffic (Kubernetes' rule): a node and its own pods always reach each other; that
traffic does not pass the forward hook, so it is never filtered. Other nodes' addresses are
ordinary addresses, matched only by ipBlock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping

from gingham.dataplane import nft
from gingham.policy.evaluate import NamespaceView, PodView
from gingham.policy.spec import EGRESS, INGRESS, LabelSelector, NetworkPolicy, Peer, PortMatch
from gingham.workloads.records import NAMESPACE_NAME_LABEL

FAMILY = "inet"
TABLE = "gingham_policy"
EGRESS_PODS, INGRESS_PODS = "egress_pods", "ingress_pods"
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
LOG_GROUP = 100  # NFLOG group of denied packets (policy/flowlog.py reads it)
MARK_MASK = 0x00FFFFFF  # the conntrack mark's bits that hold a verdict's generation
LOG_PREFIX_MAX = 127  # nft's limit
# Which end of the connection's original tuple a direction's peer and pod are.
PEER_END = {INGRESS: "saddr", EGRESS: "daddr"}


def _name(prefix: str, *parts: object) -> str:
    return prefix + hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


def _ct(key: str) -> dict:
    """A field of the connection's original direction (`ct original ip saddr`)."""
    return {"ct": {"key": f"ip {key}" if key in ("saddr", "daddr") else key,
                   "dir": "original"}}


# The packet's protocol is its connection's; nft needs it before `ct original proto-dst`
# to know the port's type.
L4PROTO = {"meta": {"key": "l4proto"}}


def _match(left: dict, right: object, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


class _Cluster:
    def __init__(self, pods: Iterable[PodView], namespaces: Iterable[NamespaceView]) -> None:
        self.pods = [p for p in pods if p.ip]
        self.labels = {n.name: n.labels for n in namespaces}

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        return {**self.labels.get(name, {}), NAMESPACE_NAME_LABEL: name}

    @staticmethod
    def selected(policy: NetworkPolicy, pods: Iterable[PodView]) -> list[PodView]:
        return [p for p in pods if p.namespace == policy.namespace
                and policy.pod_selector.matches(p.labels)]

    def peer_members(self, peer: Peer, namespace: str) -> list[str]:
        def namespace_ok(pod: PodView) -> bool:
            if peer.namespace_selector is None:
                return pod.namespace == namespace
            return peer.namespace_selector.matches(self.namespace_labels(pod.namespace))

        chosen = peer.pod_selector or LabelSelector()
        return sorted({p.ip for p in self.pods if namespace_ok(p) and chosen.matches(p.labels)})


class _Table:
    """The commands being built: sets, maps, chains and rules of the one table."""

    def __init__(self) -> None:
        self.sets: dict[str, tuple[object, list]] = {}  # name -> (type, elements)
        self.chains: dict[str, list[list[dict]]] = {}  # regular chains -> rules

    def chain(self, name: str, rules: list[list[dict]]) -> str:
        self.chains[name] = rules
        return name


def _port_exprs(match: PortMatch, table: _Table, cluster: _Cluster) -> list[dict]:
    protocol = [_match(L4PROTO, PROTOCOLS[match.protocol])]
    if match.port is None:
        return protocol
    if isinstance(match.port, str):  # named: resolved per destination pod, through a set
        name = _name("np_", match.port)
        if name not in table.sets:
            elements = sorted({(p.ip, PROTOCOLS[n.protocol], n.port) for p in cluster.pods
                               for n in p.ports if n.name == match.port})
            table.sets[name] = (["ipv4_addr", "inet_proto", "inet_service"],
                                [{"concat": list(e)} for e in elements])
        return [*protocol, _match({"concat": [_ct("daddr"), L4PROTO, _ct("proto-dst")]},
                                  f"@{name}")]
    ports: object = match.port if match.end_port is None else {
        "range": [match.port, match.end_port]}
    return [*protocol, _match(_ct("proto-dst"), ports)]


def _peer_exprs(peer: Peer, direction: str, namespace: str, table: _Table,
                cluster: _Cluster) -> list[dict] | None:
    """The matches of one peer; None for one no IPv4 connection can match."""
    end = _ct(PEER_END[direction])
    if peer.ip_block is not None:
        if peer.ip_block.cidr.version != 4:
            return None
        exprs = [_match(end, nft.network(peer.ip_block.cidr))]  # type: ignore[arg-type]
        if peer.ip_block.except_:
            exprs.append(_match(end, {"set": [nft.network(n) for n in peer.ip_block.except_]},
                                "!="))  # type: ignore[arg-type]
        return exprs
    key = (namespace, peer.pod_selector, peer.namespace_selector)
    name = _name("peer_", key)
    if name not in table.sets:  # one set for every policy with this peer
        table.sets[name] = ("ipv4_addr", cluster.peer_members(peer, namespace))
    return [_match(end, f"@{name}")]


def policy_chain_name(ref: str, direction: str) -> str:
    """The chain of a policy's rules of one direction (`ns/name`), on every node."""
    return _name("pi_" if direction == INGRESS else "pe_", ref)


def _policy_chain(policy: NetworkPolicy, direction: str, table: _Table,
                  cluster: _Cluster) -> str:
    name = policy_chain_name(policy.ref, direction)
    if name in table.chains:
        return name
    rules = []
    for rule in policy.rules(direction):
        peers = [_peer_exprs(p, direction, policy.namespace, table, cluster)
                 for p in rule.peers] if rule.peers else [[]]
        ports = [_port_exprs(p, table, cluster) for p in rule.ports] or [[]]
        rules += [[*peer, *port, {"accept": None}] for peer in peers if peer is not None
                  for port in ports]
    return table.chain(name, rules)


def deny_prefix(direction: str, pod: str, policies: Iterable[str]) -> str:
    """What a denied packet is logged with: who was isolated, and by which policies."""
    text = f"gingham {direction.lower()} {pod} {','.join(policies)}"
    return text if len(text) <= LOG_PREFIX_MAX else text[:LOG_PREFIX_MAX - 3] + "..."


def render_policy_table(policies: Iterable[NetworkPolicy], pods: Iterable[PodView],
                        namespaces: Iterable[NamespaceView], local: Collection[str],
                        log_denied: bool = False, generation: int = 1) -> list[dict]:
    """The whole table as one transaction that replaces any earlier version atomically,
    or [] when no pod of `local` (the refs, `namespace/name`, of this node's pods) is
    isolated. `log_denied`: each denied packet goes to NFLOG first. `generation`: see
    base_chains."""
    body = render_policy_body(policies, pods, namespaces, local, log_denied)
    return body + base_chains(generation) if body else []


def render_policy_body(policies: Iterable[NetworkPolicy], pods: Iterable[PodView],
                       namespaces: Iterable[NamespaceView], local: Collection[str],
                       log_denied: bool = False) -> list[dict]:
    """The table without its base chains (which only the generation changes)."""
    cluster = _Cluster(pods, namespaces)
    table = _Table()
    dispatch: dict[str, list] = {EGRESS_PODS: [], INGRESS_PODS: []}
    ordered = sorted(policies, key=lambda p: p.ref)
    mine = sorted((p for p in cluster.pods if p.ref in local), key=lambda p: p.ref)
    isolating: dict[tuple[str, str], list[NetworkPolicy]] = {}  # (pod, direction) ->
    for policy in ordered:
        for pod in cluster.selected(policy, mine):
            for direction in policy.policy_types:
                isolating.setdefault((pod.ref, direction), []).append(policy)
    for pod in mine:
        for direction, map_name in ((EGRESS, EGRESS_PODS), (INGRESS, INGRESS_PODS)):
            chosen = isolating.get((pod.ref, direction))
            if not chosen:
                continue  # not isolated in this direction
            jumps = [[{"jump": {"target": _policy_chain(p, direction, table, cluster)}}]
                     for p in chosen]
            own = [[_match(_ct(PEER_END[direction]), pod.ip), {"accept": None}]]
            deny: list[dict] = [{"drop": None}]
            if log_denied:
                deny.insert(0, {"log": {"prefix": deny_prefix(
                    direction, pod.ref, (p.name for p in chosen)), "group": LOG_GROUP}})
            prefix = "in_" if direction == INGRESS else "eg_"
            chain = table.chain(_name(prefix, pod.ref), [*own, *jumps, deny])
            dispatch[map_name].append([pod.ip, {"jump": {"target": chain}}])
    if not any(dispatch.values()):
        return []  # no pod here is isolated: no table (policy/manager.py)
    return _commands(table, dispatch)


def _commands(table: _Table, dispatch: dict[str, list]) -> list[dict]:
    ident = {"family": FAMILY, "table": TABLE}
    commands: list[dict] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}},
                            {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
                            {"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for name, (kind, elements) in sorted(table.sets.items()):
        commands.append({"add": {"set": {**ident, "name": name, "type": kind}}})
        if elements:
            commands.append({"add": {"element": {**ident, "name": name, "elem": elements}}})
    for name in dispatch:
        commands.append({"add": {"map": {**ident, "name": name, "type": "ipv4_addr",
                                         "map": "verdict"}}})
    for name in sorted(table.chains):
        commands.append({"add": {"chain": {**ident, "name": name}}})
    for name in sorted(table.chains):
        commands += [{"add": {"rule": {**ident, "chain": name, "expr": expr}}}
                     for expr in table.chains[name]]
    for name, elements in dispatch.items():  # after the chains they jump to
        if elements:
            commands.append({"add": {"element": {**ident, "name": name, "elem": elements}}})
    return commands


def base_chains(generation: int) -> list[dict]:
    """The forward hook's chains. A connection both sides let through is marked with the
    generation of the ruleset that judged it (the low 24 bits of its conntrack mark); its
    later packets skip the verdict while that ruleset stands. Every change of the table
    comes with a new generation, so the next packet of every live connection is judged
    again by the new rules: replies and established connections follow the policy
    without walking the chains on every packet."""
    ident = {"family": FAMILY, "table": TABLE}
    mark = {"ct": {"key": "mark"}}
    judged = _match({"&": [mark, MARK_MASK]}, generation)
    commands: list[dict] = []
    for base, prio, end, map_name in (("egress", 0, "saddr", EGRESS_PODS),
                                      ("ingress", 10, "daddr", INGRESS_PODS),
                                      ("allowed", 20, None, None)):
        commands.append({"add": {"chain": {**ident, "name": base, "type": "filter",
                                           "hook": "forward", "prio": prio,
                                           "policy": "accept"}}})
        if end is not None:
            rules = [[judged, {"accept": None}],
                     [{"vmap": {"key": _ct(end), "data": f"@{map_name}"}}]]
        else:  # both sides let it through: remember it for this generation
            keep = {"&": [mark, ~MARK_MASK & 0xFFFFFFFF]}
            rules = [[_match({"&": [mark, MARK_MASK]}, generation, "!="),
                      {"mangle": {"key": mark, "value": {"|": [keep, generation]}}}]]
        commands += [{"add": {"rule": {**ident, "chain": base, "expr": expr}}}
                     for expr in rules]
    return commands
