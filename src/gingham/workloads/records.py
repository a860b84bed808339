"""Pods and namespaces as the datastore holds them (JSON under `<prefix>/pods/<ns>/<name>`
and `<prefix>/namespaces/<name>`): labels, and for a pod its node, IP, container and named
container ports. The pure part: values, keys, and the label edits `gingham label` makes."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

PROTOCOLS = ("TCP", "UDP", "SCTP")
PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # IANA_SVC_NAME, as Kubernetes
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace, as Kubernetes


class WorkloadDataError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class NamedPort:
    name: str
    port: int
    protocol: str = "TCP"

    @classmethod
    def parse(cls, text: str) -> NamedPort:
        """`NAME=PORT[/PROTO]`, e.g. `http=8080/TCP`."""
        name, sep, rest = text.partition("=")
        number, _, protocol = rest.partition("/")
        protocol = (protocol or "TCP").upper()
        if not sep or not PORT_NAME.fullmatch(name) or len(name) > 15:
            raise WorkloadDataError(f"port {text!r}: expected NAME=PORT[/PROTO] with a name of "
                                    "at most 15 lower-case letters, digits and '-'")
        if not number.isdigit() or not 1 <= int(number) <= 65535:
            raise WorkloadDataError(f"port {text!r}: the port must be 1-65535")
        if protocol not in PROTOCOLS:
            raise WorkloadDataError(f"port {text!r}: the protocol must be one of "
                                    f"{', '.join(PROTOCOLS)}")
        return cls(name, int(number), protocol)

    def __str__(self) -> str:
        return f"{self.name}={self.port}/{self.protocol}"


@dataclass
class Pod:
    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    node: str = ""
    ip: str = ""  # set by the CNI service on ADD
    container_id: str = ""
    ports: list[NamedPort] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def encode(self) -> bytes:
        data = asdict(self)
        data["ports"] = [asdict(p) for p in self.ports]
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Pod:
        try:
            data = json.loads(raw)
            ports = [NamedPort(str(p["name"]), int(p["port"]), str(p["protocol"]))
                     for p in data.get("ports") or []]
            return cls(str(data["namespace"]), str(data["name"]),
                       {str(k): str(v) for k, v in (data.get("labels") or {}).items()},
                       str(data.get("node", "")), str(data.get("ip", "")),
                       str(data.get("container_id", "")), ports)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise WorkloadDataError(f"pod value does not parse: {err}") from None


@dataclass
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def named(cls, name: str) -> Namespace:
        return cls(name, {NAMESPACE_NAME_LABEL: name})

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Namespace:
        try:
            data = json.loads(raw)
            return cls(str(data["name"]),
                       {str(k): str(v) for k, v in (data.get("labels") or {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise WorkloadDataError(f"namespace value does not parse: {err}") from None


def pods_prefix(prefix: str, namespace: str | None = None) -> str:
    return f"{prefix}/pods/" + (f"{namespace}/" if namespace else "")


def pod_key(prefix: str, namespace: str, name: str) -> str:
    return f"{pods_prefix(prefix, namespace)}{name}"


def namespaces_prefix(prefix: str) -> str:
    return f"{prefix}/namespaces/"


def label_edits(args: tuple[str, ...]) -> dict[str, str | None]:
    """kubectl's label arguments: `k=v` sets, `k-` removes (None)."""
    edits: dict[str, str | None] = {}
    for arg in args:
        if arg.endswith("-") and "=" not in arg:
            edits[arg[:-1]] = None
        elif "=" in arg:
            key, value = arg.split("=", 1)
            edits[key] = value
        else:
            raise WorkloadDataError(f"label {arg!r}: expected KEY=VALUE or KEY-")
        key = arg.split("=", 1)[0].rstrip("-")
        if not key:
            raise WorkloadDataError(f"label {arg!r} has no key")
    if not edits:
        raise WorkloadDataError("give at least one KEY=VALUE or KEY-")
    return edits


def edited(labels: dict[str, str], edits: dict[str, str | None]) -> dict[str, str]:
    out = dict(labels)
    for key, value in edits.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out
