"""A Kubernetes NetworkPolicy (networking.k8s.io/v1) read from its document into frozen
values, checked as the API server checks it, and written back in canonical form.

Every mapping is read field by field and one with a field nobody read is refused, so a
typo fails instead of passing as a default. Errors name the field path
(`spec.ingress[0].ports[1].endPort 70 is below port 80`). `resources.kinds.Fields` is not
used: its messages assume flat `spec.<field>` names, and a policy nests lists of mappings.
A YAML `null` counts as absent, as it does in Kubernetes' JSON.

Defaults are Kubernetes': namespace `default`, protocol TCP, and without `policyTypes`
Ingress, plus Egress when `spec.egress` has at least one rule (`egress: []` alone does not
isolate egress — Kubernetes defaults on the rule count, not on the key being present).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gingham.resources.kinds import LABEL_VALUE, NAME
from gingham.workloads.records import PORT_NAME, PROTOCOLS

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
INGRESS, EGRESS = "Ingress", "Egress"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Labels = tuple[tuple[str, str], ...]  # sorted by key: equal selectors compare equal
_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
               bool: "a boolean"}


class PolicyError(ValueError):
    """A NetworkPolicy document Kubernetes would refuse; the message names the field."""


@dataclass(frozen=True)
class Requirement:
    """One `matchExpressions` entry."""

    key: str
    operator: str  # one of OPERATORS
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        found = self.key in labels and labels[self.key] in self.values
        # NotIn also holds when the key is absent, as in Kubernetes
        return found if self.operator == "In" else not found


@dataclass(frozen=True)
class LabelSelector:
    """Kubernetes' label selector: every label and every expression must hold; the empty
    selector matches everything."""

    match_labels: Labels = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))


@dataclass(frozen=True)
class IpBlock:
    cidr: IPNetwork
    except_: tuple[IPNetwork, ...] = ()  # each strictly inside cidr


@dataclass(frozen=True)
class Peer:
    """One `from`/`to` entry: an ip_block alone, or one or both selectors (both: AND).
    A pod_selector without namespace_selector means pods of the policy's own namespace."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IpBlock | None = None


@dataclass(frozen=True)
class PortMatch:
    """Traffic on `protocol` to `port` (a number, or a container port's name), up to
    `end_port` inclusive when set; no port means every port of the protocol."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """No peers: every peer; no ports: every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PortMatch, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]  # INGRESS and/or EGRESS, in the order given
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    labels: Labels = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress


def parse_policy(document: Mapping[str, Any], where: str = "") -> NetworkPolicy:
    """The policy a loaded YAML/JSON document stands for, every default filled in;
    PolicyError (prefixed with `where` when given) at the first thing Kubernetes refuses."""
    try:
        return _policy(_Fields(document, ""))
    except PolicyError as err:
        if where:
            raise PolicyError(f"{where}: {err}") from None
        raise


def to_document(policy: NetworkPolicy) -> dict[str, Any]:
    """The canonical Kubernetes document: defaults written out, empty lists left out."""
    meta: dict[str, Any] = {"name": policy.name, "namespace": policy.namespace}
    if policy.labels:
        meta["labels"] = dict(policy.labels)
    spec: dict[str, Any] = {"podSelector": _selector_doc(policy.pod_selector),
                            "policyTypes": list(policy.policy_types)}
    if policy.ingress:
        spec["ingress"] = [_rule_doc(rule, "from") for rule in policy.ingress]
    if policy.egress:
        spec["egress"] = [_rule_doc(rule, "to") for rule in policy.egress]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}


class _Fields:
    """One mapping of the document and its path; `done()` refuses fields nobody read."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            raise PolicyError(f"{path or 'the document'} must be a mapping, not {value!r}")
        self.fields = dict(value)
        self.path = path

    def at(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(self, name: str, kind: type | tuple[type, ...], required: bool = False) -> Any:
        value = self.fields.pop(name, None)
        if value is None:
            if required:
                raise PolicyError(f"{self.at(name)} is required")
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; an integer field must not take `true`
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise PolicyError(f"{self.at(name)} must be {names}, not {value!r}")
        return value

    def mapping(self, name: str, required: bool = False) -> _Fields | None:
        value = self.take(name, dict, required)
        return None if value is None else _Fields(value, self.at(name))

    def items(self, name: str) -> list[tuple[str, Any]]:
        """Each entry of a list field with its path, `name[i]`."""
        return [(f"{self.at(name)}[{i}]", item)
                for i, item in enumerate(self.take(name, list) or [])]

    def done(self) -> None:
        if self.fields:
            raise PolicyError(f"unknown field {self.at(sorted(map(str, self.fields))[0])}")


def _policy(doc: _Fields) -> NetworkPolicy:
    api_version = doc.take("apiVersion", str, required=True)
    if api_version != API_VERSION:
        raise PolicyError(f"apiVersion must be {API_VERSION}, not {api_version!r}")
    kind = doc.take("kind", str, required=True)
    if kind != KIND:
        raise PolicyError(f"kind must be {KIND}, not {kind!r}")
    meta = doc.mapping("metadata", required=True)
    spec = doc.mapping("spec", required=True)
    assert meta is not None and spec is not None
    doc.done()
    name = meta.take("name", str, required=True)
    if len(name) > 253 or not NAME.fullmatch(name):
        raise PolicyError(f"metadata.name {name!r} is not a DNS-1123 subdomain (lower-case "
                          "letters, digits, '-' and '.')")
    namespace = meta.take("namespace", str) or "default"
    if len(namespace) > 63 or "." in namespace or not NAME.fullmatch(namespace):
        raise PolicyError(f"metadata.namespace {namespace!r} is not a DNS-1123 label "
                          "(lower-case letters, digits and '-')")
    labels = _labels(meta, "labels")
    for ignored in ("uid", "resourceVersion", "creationTimestamp", "generation"):
        meta.take(ignored, (str, int))  # what a server's `get` adds: accepted, not kept
    meta.done()

    pod_selector = spec.mapping("podSelector", required=True)
    assert pod_selector is not None
    selected = _selector(pod_selector)
    ingress = tuple(_rule(path, raw, "from") for path, raw in spec.items("ingress"))
    egress = tuple(_rule(path, raw, "to") for path, raw in spec.items("egress"))
    types = _policy_types(spec, bool(egress))
    spec.done()
    return NetworkPolicy(namespace, name, selected, types, ingress, egress, labels)


def _policy_types(spec: _Fields, has_egress: bool) -> tuple[str, ...]:
    path = spec.at("policyTypes")
    given = spec.take("policyTypes", list) or []
    if not given:
        return (INGRESS, EGRESS) if has_egress else (INGRESS,)
    types: list[str] = []
    for i, value in enumerate(given):
        if value not in (INGRESS, EGRESS):
            raise PolicyError(f"{path}[{i}] {value!r} is not Ingress or Egress")
        if value in types:
            raise PolicyError(f"{path}[{i}] repeats {value}")
        types.append(value)
    return tuple(types)


def _is_label_key(key: object) -> bool:
    """A qualified name: `[prefix/]name`, prefix a DNS subdomain, name at most 63."""
    if not isinstance(key, str):
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and len(prefix) <= 253 and NAME.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and LABEL_VALUE.fullmatch(name) is not None


def _label_value(value: object, path: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
        raise PolicyError(f"{path} {value!r} is not a label value (at most 63 letters, "
                          "digits, '-', '_' and '.', alphanumeric at each end)")
    return value


def _labels(fields: _Fields, name: str) -> Labels:
    path = fields.at(name)
    labels = []
    for key, value in (fields.take(name, dict) or {}).items():
        if not _is_label_key(key):
            raise PolicyError(f"{path} key {key!r} is not a label key ([prefix/]name)")
        labels.append((key, _label_value(value, f"{path}.{key}")))
    return tuple(sorted(labels))


def _selector(fields: _Fields) -> LabelSelector:
    match_labels = _labels(fields, "matchLabels")
    expressions = []
    for path, raw in fields.items("matchExpressions"):
        entry = _Fields(raw, path)
        key = entry.take("key", str, required=True)
        if not _is_label_key(key):
            raise PolicyError(f"{entry.at('key')} {key!r} is not a label key ([prefix/]name)")
        operator = entry.take("operator", str, required=True)
        if operator not in OPERATORS:
            raise PolicyError(f"{entry.at('operator')} {operator!r} is not one of "
                              f"{', '.join(OPERATORS)}")
        values = tuple(_label_value(value, vpath) for vpath, value in entry.items("values"))
        if operator in ("In", "NotIn") and not values:
            raise PolicyError(f"{entry.at('values')} must not be empty for {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise PolicyError(f"{entry.at('values')} must be empty for {operator}")
        entry.done()
        expressions.append(Requirement(key, operator, values))
    fields.done()
    return LabelSelector(match_labels, tuple(expressions))


def _rule(path: str, raw: object, peers_key: str) -> Rule:
    fields = _Fields(raw, path)
    peers = tuple(_peer(ppath, peer) for ppath, peer in fields.items(peers_key))
    ports = tuple(_port(ppath, port) for ppath, port in fields.items("ports"))
    fields.done()
    return Rule(peers, ports)


def _peer(path: str, raw: object) -> Peer:
    fields = _Fields(raw, path)
    pods = fields.mapping("podSelector")
    namespaces = fields.mapping("namespaceSelector")
    block = fields.mapping("ipBlock")
    fields.done()  # before the checks below, so a misspelt selector is named as such
    if block is not None:
        if pods is not None or namespaces is not None:
            raise PolicyError(f"{path}: ipBlock cannot be combined with podSelector or "
                              "namespaceSelector")
        return Peer(ip_block=_ip_block(block))
    if pods is None and namespaces is None:
        raise PolicyError(f"{path} must set podSelector, namespaceSelector or ipBlock")
    return Peer(None if pods is None else _selector(pods),
                None if namespaces is None else _selector(namespaces))


def _network(text: object, path: str) -> IPNetwork:
    if not isinstance(text, str) or "/" not in text:
        raise PolicyError(f"{path} {text!r} is not a CIDR (address/length)")
    try:
        return ipaddress.ip_network(text)
    except ValueError as err:
        raise PolicyError(f"{path} {text!r} is not a CIDR: {err}") from None


def _ip_block(fields: _Fields) -> IpBlock:
    cidr = _network(fields.take("cidr", str, required=True), fields.at("cidr"))
    excepts = []
    for path, text in fields.items("except"):
        inner = _network(text, path)
        # Kubernetes: each except must be a strict subset of cidr
        if (inner.version != cidr.version or not inner.subnet_of(cidr)  # type: ignore[arg-type]
                or inner.prefixlen <= cidr.prefixlen):
            raise PolicyError(f"{path} {inner} is not strictly inside cidr {cidr}")
        excepts.append(inner)
    fields.done()
    return IpBlock(cidr, tuple(excepts))


def _is_port_name(name: str) -> bool:
    """IANA_SVC_NAME as Kubernetes checks it: also no `--` and at least one letter."""
    return (len(name) <= 15 and PORT_NAME.fullmatch(name) is not None and "--" not in name
            and re.search("[a-z]", name) is not None)


def _port(path: str, raw: object) -> PortMatch:
    fields = _Fields(raw, path)
    protocol = fields.take("protocol", str) or "TCP"
    port = fields.take("port", (int, str))
    end_port = fields.take("endPort", int)
    fields.done()
    if protocol not in PROTOCOLS:
        raise PolicyError(f"{fields.at('protocol')} {protocol!r} is not one of "
                          f"{', '.join(PROTOCOLS)}")
    if isinstance(port, int) and not 1 <= port <= 65535:
        raise PolicyError(f"{fields.at('port')} {port} is outside 1-65535")
    if isinstance(port, str) and not _is_port_name(port):
        raise PolicyError(f"{fields.at('port')} {port!r} is not a port number or name (at "
                          "most 15 lower-case letters, digits and '-', with a letter)")
    if end_port is not None:
        where = fields.at("endPort")
        if not isinstance(port, int):
            given = "none is set" if port is None else f"not {port!r}"
            raise PolicyError(f"{where} needs a numeric port, {given}")
        if not 1 <= end_port <= 65535:
            raise PolicyError(f"{where} {end_port} is outside 1-65535")
        if end_port < port:
            raise PolicyError(f"{where} {end_port} is below port {port}")
    return PortMatch(protocol, port, end_port)


def _selector_doc(selector: LabelSelector) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if selector.match_labels:
        doc["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        doc["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": list(r.values)}
                                                      if r.values else {})}
            for r in selector.match_expressions]
    return doc


def _peer_doc(peer: Peer) -> dict[str, Any]:
    if peer.ip_block is not None:
        block: dict[str, Any] = {"cidr": str(peer.ip_block.cidr)}
        if peer.ip_block.except_:
            block["except"] = [str(net) for net in peer.ip_block.except_]
        return {"ipBlock": block}
    doc = {}
    if peer.pod_selector is not None:
        doc["podSelector"] = _selector_doc(peer.pod_selector)
    if peer.namespace_selector is not None:
        doc["namespaceSelector"] = _selector_doc(peer.namespace_selector)
    return doc


def _port_doc(port: PortMatch) -> dict[str, Any]:
    doc: dict[str, Any] = {"protocol": port.protocol}
    if port.port is not None:
        doc["port"] = port.port
    if port.end_port is not None:
        doc["endPort"] = port.end_port
    return doc


def _rule_doc(rule: Rule, peers_key: str) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if rule.peers:
        doc[peers_key] = [_peer_doc(peer) for peer in rule.peers]
    if rule.ports:
        doc["ports"] = [_port_doc(port) for port in rule.ports]
    return doc
