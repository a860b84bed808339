"""The resource kinds the CLI takes (calicoctl's projectcalico.org/v3 shapes, and Kubernetes'
Pod, Namespace and NetworkPolicy): how each is checked, where it lives in the datastore and
how `get` shows it. Checks that look at one document live here; those across documents
(overlapping pools) in resources/store.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gingham.model import selector
from gingham.resources.document import RawDocument, Resource, ResourceError
from gingham.resources.records import NAMESPACE_RECORDS, NODE_RECORDS, POD_RECORDS

CALICO_API = "projectcalico.org/v3"
ENCAP_MODES = ("Never", "Always", "CrossSubnet")
DEFAULT_BLOCK_SIZE = 26
BLOCK_SIZES = range(20, 33)
MAX_ASN = 4294967295
# DNS-1123 subdomain, as Kubernetes and Calico name resources.
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


class Fields:
    """Reads a spec field by field, each with its type and default; `done()` refuses any
    field nobody asked for (a typo must not pass as a default)."""

    def __init__(self, spec: dict[str, Any], where: str) -> None:
        self.spec = dict(spec)
        self.where = where

    def fail(self, message: str) -> ResourceError:
        return ResourceError(f"{self.where}: {message}")

    def take(self, name: str, kind: type | tuple[type, ...], default: Any = None,
             required: bool = False) -> Any:
        if name not in self.spec:
            if required:
                raise self.fail(f"spec.{name} is required")
            return default
        value = self.spec.pop(name)
        # bool is an int in Python; an int field must not take `true`
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(f"spec.{name} must be a {names}, not {value!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.take(name, str, default)
        if value not in choices:
            raise self.fail(f"spec.{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    def selector(self, name: str, default: str = "") -> str:
        text = self.take(name, str, default)
        try:
            selector.parse(text)
        except selector.SelectorError as err:
            raise self.fail(f"spec.{name} {text!r} does not parse: {err}") from None
        return text

    def asn(self, name: str, required: bool = False) -> int | None:
        value = self.take(name, int, required=required)
        if value is not None and not 1 <= value <= MAX_ASN:
            raise self.fail(f"spec.{name} {value} is not an AS number (1-{MAX_ASN})")
        return value

    def done(self) -> None:
        if self.spec:
            raise self.fail(f"unknown field spec.{sorted(self.spec)[0]}")


def check_ippool(fields: Fields) -> dict[str, Any]:
    text = fields.take("cidr", str, required=True)
    try:
        cidr = ipaddress.ip_network(text)
    except ValueError as err:
        raise fields.fail(f"spec.cidr {text!r} is not a CIDR: {err}") from None
    if cidr.version != 4:
        raise fields.fail(f"spec.cidr {text}: only IPv4 pools are supported")
    block_size = fields.take("blockSize", int, DEFAULT_BLOCK_SIZE)
    if block_size not in BLOCK_SIZES:
        raise fields.fail(f"spec.blockSize {block_size} is outside 20-32")
    if block_size < cidr.prefixlen:
        raise fields.fail(f"spec.blockSize /{block_size} is larger than the pool {cidr}")
    ipip = fields.choice("ipipMode", ENCAP_MODES, "Never")
    vxlan = fields.choice("vxlanMode", ENCAP_MODES, "Never")
    if ipip != "Never" and vxlan != "Never":
        raise fields.fail(f"ipipMode {ipip} and vxlanMode {vxlan}: a pool encapsulates one "
                          "way at most")
    spec = {
        "cidr": str(cidr), "blockSize": block_size, "ipipMode": ipip, "vxlanMode": vxlan,
        "natOutgoing": fields.take("natOutgoing", bool, False),
        "disabled": fields.take("disabled", bool, False),
        "nodeSelector": fields.selector("nodeSelector", "all()"),
    }
    fields.done()
    return spec


def check_bgp_configuration(fields: Fields) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeToNodeMeshEnabled": fields.take("nodeToNodeMeshEnabled", bool, True),
        "logSeverityScreen": fields.choice("logSeverityScreen",
                                           ("Debug", "Info", "Warning", "Error", "Fatal"),
                                           "Info"),
    }
    asn = fields.asn("asNumber")
    if asn is not None:
        spec["asNumber"] = asn
    port = fields.take("listenPort", int, 179)
    if not 1 <= port <= 65535:
        raise fields.fail(f"spec.listenPort {port} is outside 1-65535")
    spec["listenPort"] = port
    restart = fields.take("nodeMeshMaxRestartTime", str)
    if restart is not None:
        spec["nodeMeshMaxRestartTime"] = duration(fields, "nodeMeshMaxRestartTime", restart)
    # bfdEnabled is Gingham's (Calico has none): BFD on every BGP session.
    spec["bfdEnabled"] = fields.take("bfdEnabled", bool, False)
    fields.done()
    return spec


DURATION = re.compile(r"(\d+)(s|m)")


def duration(fields: Fields, name: str, text: str) -> str:
    """A Kubernetes-style duration as Calico takes it: `120s`, `2m`."""
    found = DURATION.fullmatch(text)
    if found is None:
        raise fields.fail(f"spec.{name} {text!r} is not a duration like 120s or 2m")
    return text


def seconds(text: str) -> int:
    found = DURATION.fullmatch(text)
    assert found is not None, text
    return int(found.group(1)) * (60 if found.group(2) == "m" else 1)


def check_bgp_peer(fields: Fields) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    peer_ip = fields.take("peerIP", str)
    peer_selector = fields.selector("peerSelector")
    if (peer_ip is None) == (not peer_selector):
        raise fields.fail("give exactly one of spec.peerIP and spec.peerSelector")
    if peer_ip is not None:
        try:
            spec["peerIP"] = str(ipaddress.IPv4Address(peer_ip))
        except ValueError:
            raise fields.fail(f"spec.peerIP {peer_ip!r} is not an IPv4 address") from None
        spec["asNumber"] = fields.asn("asNumber", required=True)
    else:
        spec["peerSelector"] = peer_selector
        asn = fields.asn("asNumber")
        if asn is not None:
            spec["asNumber"] = asn
    node = fields.take("node", str)
    node_selector = fields.selector("nodeSelector")
    if node is not None and node_selector:
        raise fields.fail("give at most one of spec.node and spec.nodeSelector")
    if node is not None:
        spec["node"] = node
    if node_selector:
        spec["nodeSelector"] = node_selector
    password = fields.take("password", (str, dict))
    if isinstance(password, dict):  # Calico's {secretKeyRef: ...}: no secrets store here
        raise fields.fail("spec.password: give the password itself (no Kubernetes secrets "
                          "here)")
    if password:
        if '"' in password or "\\" in password:
            raise fields.fail("spec.password may not hold a quote or a backslash")
        spec["password"] = password
    if fields.take("keepOriginalNextHop", bool, False):
        spec["keepOriginalNextHop"] = True
    keepalive = fields.take("keepaliveTime", str)
    if keepalive is not None:
        spec["keepaliveTime"] = duration(fields, "keepaliveTime", keepalive)
    fields.done()
    return spec


def check_node(fields: Fields) -> dict[str, Any]:
    bgp = Fields(fields.take("bgp", dict, {}), f"{fields.where}: spec.bgp")
    spec: dict[str, Any] = {}
    address = bgp.take("ipv4Address", str)
    if address is not None:
        try:
            spec["ipv4Address"] = str(ipaddress.IPv4Interface(address))
        except ValueError:
            raise bgp.fail(f"ipv4Address {address!r} is not an IPv4 address/length") from None
    asn = bgp.asn("asNumber")
    if asn is not None:
        spec["asNumber"] = asn
    cluster_id = bgp.take("routeReflectorClusterID", str)
    if cluster_id is not None:
        try:
            spec["routeReflectorClusterID"] = str(ipaddress.IPv4Address(cluster_id))
        except ValueError:
            raise bgp.fail(f"routeReflectorClusterID {cluster_id!r} is not an IPv4 "
                           "address") from None
    bgp.done()
    fields.done()
    return {"bgp": spec}


def check_namespace(fields: Fields) -> dict[str, Any]:
    fields.done()
    return {}


def check_pod(fields: Fields) -> dict[str, Any]:
    """Kubernetes' Pod as far as a network policy looks at it: its node and the named
    ports of its containers."""
    spec: dict[str, Any] = {}
    node = fields.take("nodeName", str)
    if node is not None:
        spec["nodeName"] = node
    containers = []
    for i, raw in enumerate(fields.take("containers", list, [])):
        if not isinstance(raw, dict):
            raise fields.fail(f"spec.containers[{i}] must be a mapping")
        container = Fields(raw, f"{fields.where}: spec.containers[{i}]")
        ports = []
        for j, port in enumerate(container.take("ports", list, [])):
            if not isinstance(port, dict):
                raise container.fail(f"ports[{j}] must be a mapping")
            entry = Fields(port, f"{container.where}.ports[{j}]")
            number = entry.take("containerPort", int, required=True)
            if not 1 <= number <= 65535:
                raise entry.fail(f"containerPort {number} is outside 1-65535")
            out = {"containerPort": number,
                   "protocol": entry.choice("protocol", ("TCP", "UDP", "SCTP"), "TCP")}
            name = entry.take("name", str)
            if name is not None:
                out["name"] = name
            entry.done()
            ports.append(out)
        item: dict[str, Any] = {"name": container.take("name", str, f"c{i}")}
        if ports:
            item["ports"] = ports
        for ignored in ("image", "command", "args"):  # kept out: nothing here runs them
            container.take(ignored, (str, list))
        container.done()
        containers.append(item)
    if containers:
        spec["containers"] = containers
    fields.done()
    return spec


def parse_network_policy(raw: RawDocument) -> Resource:
    """Kubernetes' NetworkPolicy as the policy model reads it, its spec in canonical form
    (what is stored is then `to_document(policy)`)."""
    # imported here: policy/spec.py takes NAME and LABEL_VALUE from this module
    from gingham.policy.spec import PolicyError, parse_policy, to_document

    document = {"apiVersion": raw.api_version, "kind": raw.kind, "metadata": raw.metadata,
                "spec": raw.spec}
    try:
        policy = parse_policy(document, raw.where)
    except PolicyError as err:
        raise ResourceError(str(err)) from None
    return Resource(raw.kind, policy.name, to_document(policy)["spec"], dict(policy.labels),
                    policy.namespace, raw.where)


@dataclass(frozen=True)
class ResourceKind:
    kind: str
    plural: str  # `gingham get <plural>` and the datastore folder
    check: Callable[[Fields], dict[str, Any]] | None  # None: `model` parses the document
    api_version: str = CALICO_API
    namespaced: bool = False
    aliases: tuple[str, ...] = ()  # other names `get` and `delete` take
    # How the resource is stored when not as its own document (resources/records.py):
    # Node over the node record an agent writes, Pod and Namespace over the workload
    # records the CNI service keeps.
    record: Any = None
    # A kind with a model of its own (policy/spec.py) parses its whole document with it,
    # metadata too, so that what `apply` takes is what the model takes.
    model: Callable[[RawDocument], Resource] | None = None

    def key(self, prefix: str, name: str, namespace: str = "") -> str:
        return f"{self.folder(prefix)}{namespace + '/' if self.namespaced else ''}{name}"

    def folder(self, prefix: str) -> str:
        return f"{prefix}/{self.plural}/"

    def parse(self, raw: RawDocument) -> Resource:
        """The resource a document stands for, every default filled in."""
        if raw.kind != self.kind:
            raise ResourceError(f"{raw.where}: kind {raw.kind!r}, expected {self.kind}")
        if raw.api_version != self.api_version:
            raise ResourceError(f"{raw.where}: apiVersion must be {self.api_version}, not "
                                f"{raw.api_version!r}")
        if self.model is not None:
            return self.model(raw)
        assert self.check is not None, self.kind
        meta = Fields(raw.metadata, raw.where)
        name = meta.take("name", str, required=True)
        if len(name) > 253 or not NAME.fullmatch(name):
            raise meta.fail(f"metadata.name {name!r} is not a valid name (lower-case letters, "
                            "digits, '-' and '.')")
        namespace = meta.take("namespace", str, "default") if self.namespaced else ""
        labels = meta.take("labels", dict, {})
        for key, value in labels.items():
            if not isinstance(value, str) or not LABEL_VALUE.fullmatch(value):
                raise meta.fail(f"label {key}={value!r}: values are strings of letters, "
                                "digits, '-', '_' and '.'")
        for ignored in ("uid", "resourceVersion", "creationTimestamp"):  # `get` output
            meta.take(ignored, (str, int))
        if meta.spec:
            raise meta.fail(f"unknown field metadata.{sorted(meta.spec)[0]}")
        return Resource(self.kind, name, self.check(Fields(raw.spec, raw.where)), labels,
                        namespace, raw.where)


KINDS = {k.kind: k for k in (
    ResourceKind("IPPool", "ippools", check_ippool, aliases=("ippool", "pool", "pools")),
    ResourceKind("BGPConfiguration", "bgpconfigurations", check_bgp_configuration,
                 aliases=("bgpconfiguration", "bgpconfig", "bgpconfigs")),
    ResourceKind("BGPPeer", "bgppeers", check_bgp_peer, aliases=("bgppeer",)),
    ResourceKind("Node", "nodes", check_node, aliases=("node",), record=NODE_RECORDS),
    ResourceKind("Namespace", "namespaces", check_namespace, api_version="v1",
                 aliases=("namespace", "ns"), record=NAMESPACE_RECORDS),
    ResourceKind("Pod", "pods", check_pod, api_version="v1", namespaced=True,
                 aliases=("pod",), record=POD_RECORDS),
    # not `policy`: calicoctl gives that name to Calico's own (projectcalico.org/v3) kind
    ResourceKind("NetworkPolicy", "networkpolicies", None,
                 api_version="networking.k8s.io/v1", namespaced=True,
                 aliases=("networkpolicy", "netpol"), model=parse_network_policy),
)}


def kind_named(name: str) -> ResourceKind:
    """The kind a command line names (`ippools`, `IPPool`, `pool`...)."""
    for kind in KINDS.values():
        if name in (kind.kind, kind.plural, *kind.aliases) or name.lower() == kind.kind.lower():
            return kind
    known = ", ".join(k.plural for k in KINDS.values())
    raise ResourceError(f"unknown resource kind {name!r} (known: {known})")


def parse_resource(raw: RawDocument) -> Resource:
    kind = KINDS.get(raw.kind)
    if kind is None:
        raise ResourceError(f"{raw.where}: unknown kind {raw.kind!r} (known: "
                            f"{', '.join(KINDS)})")
    return kind.parse(raw)
