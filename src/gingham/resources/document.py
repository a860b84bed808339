"""Resource documents as calicoctl reads them: `apiVersion`, `kind`, `metadata` (name,
labels, namespace for namespaced kinds) and `spec`, or a `<Kind>List` / `List` of them
under `items`. A document is checked by its kind (resources/kinds.py) into a `Resource`
whose spec holds every field with its default, so what is stored and shown is complete.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class ResourceError(ValueError):
    """A document that is not a valid resource; the message names where it came from."""


@dataclass(frozen=True)
class Resource:
    kind: str
    name: str
    spec: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = ""  # for namespaced kinds only
    where: str = field(default="", compare=False)  # the file and document it came from

    @property
    def named(self) -> str:
        """Where it came from if known, else its title: how errors start."""
        return self.where or self.title

    @property
    def title(self) -> str:
        """How messages name it: `IPPool default-ipv4-ippool`, `Pod web/frontend`."""
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


@dataclass(frozen=True)
class RawDocument:
    """One resource as written, before its kind checked it; `where` names it in errors."""

    api_version: str
    kind: str
    metadata: dict[str, Any]
    spec: dict[str, Any]
    where: str


def split_documents(documents: Iterable[object], source: str) -> list[RawDocument]:
    """The resources of a file's documents, lists unpacked; ResourceError naming the file
    and document (1-based, and the item within a list) of the first that is malformed."""
    raws = []
    for number, doc in enumerate(documents, 1):
        where = f"{source}: document {number}"
        top = _mapping(doc, where)
        kind = top.get("kind")
        if isinstance(kind, str) and kind.endswith("List"):
            items = top.get("items")
            if not isinstance(items, list):
                raise ResourceError(f"{where}: a {kind} needs a list under 'items'")
            extra = set(top) - {"apiVersion", "kind", "items", "metadata"}
            if extra:
                raise ResourceError(f"{where}: unknown field {sorted(extra)[0]!r} in {kind}")
            for index, item in enumerate(items, 1):
                raws.append(_raw(item, f"{where}, item {index}"))
        else:
            raws.append(_raw(top, where))
    return raws


def _raw(doc: object, where: str) -> RawDocument:
    top = _mapping(doc, where)
    extra = set(top) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        raise ResourceError(f"{where}: unknown top-level field {sorted(extra)[0]!r}")
    api_version, kind = top.get("apiVersion"), top.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ResourceError(f"{where}: no 'kind'")
    if not isinstance(api_version, str) or not api_version:
        raise ResourceError(f"{where}: no 'apiVersion'")
    metadata = _mapping(top.get("metadata", {}), f"{where}: metadata")
    spec = _mapping(top.get("spec") or {}, f"{where}: spec")
    name = metadata.get("name")
    title = f"{kind} {name}" if isinstance(name, str) and name else kind
    return RawDocument(api_version, kind, metadata, spec, f"{where} ({title})")


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ResourceError(f"{where}: expected a mapping, found {type(value).__name__}")
    return value


def to_document(resource: Resource, api_version: str) -> dict[str, Any]:
    """The document that applies back to `resource` unchanged."""
    metadata: dict[str, Any] = {"name": resource.name}
    if resource.namespace:
        metadata["namespace"] = resource.namespace
    if resource.labels:
        metadata["labels"] = dict(sorted(resource.labels.items()))
    doc: dict[str, Any] = {"apiVersion": api_version, "kind": resource.kind,
                           "metadata": metadata}
    if resource.spec:
        doc["spec"] = resource.spec
    return doc
