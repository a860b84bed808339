"""Resources in the datastore: `<prefix>/<plural>/[<namespace>/]<name>`, each value the
complete document (JSON) that applies back to it.

create/replace/apply/delete take a whole file's resources at once: every one is checked
first, alone and against the others and what is stored (overlapping pools, a create of
something that exists, a replace of something that does not), and only when all pass is
anything written, each write a compare-and-swap against the revision that was checked.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from dataclasses import dataclass, replace

from gingham.ipam.blocks import Block, BlockDataError, blocks_prefix
from gingham.resources.document import RawDocument, Resource, ResourceError, to_document
from gingham.resources.kinds import KINDS, ResourceKind
from gingham.store.contract import Store

CREATE, REPLACE, APPLY = "create", "replace", "apply"


@dataclass(frozen=True)
class Stored:
    resource: Resource
    revision: int  # its key's modification revision, for compare-and-swap
    value: bytes = b""
    lease: int = 0  # a node record lives as long as its agent's lease


def decode_stored(kind: ResourceKind, key: str, value: bytes) -> Resource:
    """The resource a stored value holds; ResourceError naming the key if none."""
    if kind.record is not None:
        try:
            return kind.record.resource(value)
        except ValueError as err:
            raise ResourceError(f"{key}: {err}") from None
    try:
        doc = json.loads(value)
        raw = RawDocument(doc["apiVersion"], doc["kind"], doc.get("metadata", {}),
                          doc.get("spec", {}), key)
    except (ValueError, KeyError, TypeError) as err:
        raise ResourceError(f"{key}: stored value does not parse: {err}") from None
    return kind.parse(raw)


class ResourceStore:
    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")

    def list(self, kind: ResourceKind) -> tuple[list[Stored], list[str]]:
        """Every stored resource of `kind`, and a line for each value that does not decode."""
        kvs, _ = self.store.range(kind.folder(self.prefix))
        found, problems = [], []
        for kv in kvs:
            try:
                found.append(Stored(decode_stored(kind, kv.key, kv.value), kv.mod_revision,
                                    kv.value, kv.lease))
            except ResourceError as err:
                problems.append(str(err))
        return found, problems

    def get(self, kind: ResourceKind, name: str, namespace: str = "") -> Stored | None:
        kv = self.store.get(kind.key(self.prefix, name, namespace))
        if kv is None:
            return None
        return Stored(decode_stored(kind, kv.key, kv.value), kv.mod_revision, kv.value,
                      kv.lease)

    def write(self, action: str, resources: list[Resource]) -> None:
        """Create, replace or apply (create or replace) every resource, or none of them."""
        plan = self._checked(action, resources)
        for resource, stored in plan:
            kind = KINDS[resource.kind]
            value = (json.dumps(to_document(resource, kind.api_version), sort_keys=True).encode()
                     if kind.record is None else
                     kind.record.merged(resource, stored.value if stored else None))
            if not self.store.compare_and_swap(kind.key(self.prefix, resource.name,
                                                        resource.namespace),
                                               value, stored.revision if stored else 0,
                                               stored.lease if stored else 0):
                raise ResourceError(f"{resource.title} changed while being written; nothing "
                                    "after it was written, run the command again")

    def delete(self, resources: list[Resource]) -> None:
        """Delete every resource, or none if any does not exist (or is a pool addresses are
        in use from)."""
        current = []
        for resource in resources:
            kind = KINDS[resource.kind]
            stored = self.get(kind, resource.name, resource.namespace)
            if stored is None:
                raise ResourceError(f"{resource.named}: does not exist; nothing was deleted")
            if kind.kind == "IPPool":
                self._stranded(replace(stored.resource, where=resource.where), None)
            current.append((kind, resource, stored.revision))
        for kind, resource, revision in current:
            if not self.store.compare_and_delete(
                    kind.key(self.prefix, resource.name, resource.namespace), revision):
                raise ResourceError(f"{resource.title} changed while being deleted; run the "
                                    "command again")

    def _checked(self, action: str, resources: list[Resource]
                 ) -> list[tuple[Resource, Stored | None]]:
        seen: set[tuple[str, str, str]] = set()
        plan = []
        for resource in resources:
            ident = (resource.kind, resource.namespace, resource.name)
            if ident in seen:
                raise ResourceError(f"{resource.named}: {resource.title} is given twice")
            seen.add(ident)
            stored = self.get(KINDS[resource.kind], resource.name, resource.namespace)
            if action == CREATE and stored is not None:
                raise ResourceError(f"{resource.named}: already exists; nothing was created")
            if action == REPLACE and stored is None:
                raise ResourceError(f"{resource.named}: does not exist; nothing was replaced")
            record = KINDS[resource.kind].record
            if record is not None:
                record.merged(resource, stored.value if stored else None)  # fails early
            plan.append((resource, stored))
        self._check_pools([r for r in resources if r.kind == "IPPool"])
        self._check_peers([r for r in resources if r.kind == "BGPPeer"])
        return plan

    def _allocated(self) -> list[ipaddress.IPv4Address]:
        """Every address block IPAM has handed out."""
        kvs, _ = self.store.range(blocks_prefix(self.prefix))
        found = []
        for kv in kvs:
            with contextlib.suppress(BlockDataError):
                found += [address for address, _ in Block.decode(kv.value).holders()]
        return found

    def _stranded(self, old: Resource, new_cidr: ipaddress.IPv4Network | None) -> None:
        """Refuse to shrink (or, new_cidr None, delete) a pool under addresses in use."""
        cidr = ipaddress.IPv4Network(old.spec["cidr"])
        lost = [a for a in self._allocated() if a in cidr and (new_cidr is None or
                                                              a not in new_cidr)]
        if lost:
            what = "deleting it" if new_cidr is None else f"shrinking it to {new_cidr}"
            raise ResourceError(f"{old.named}: {what} would strand {len(lost)} allocated "
                                f"address(es) ({', '.join(map(str, sorted(lost)[:3]))}"
                                f"{', ...' if len(lost) > 3 else ''}); nothing was written")

    def _check_peers(self, peers: list[Resource]) -> None:
        """No two BGPPeers give one peer address two AS numbers on a node they share (only
        peers bound to different nodes cannot meet)."""
        if not peers:
            return
        stored, _ = self.list(KINDS["BGPPeer"])
        names = {p.name for p in peers}
        every = peers + [s.resource for s in stored if s.resource.name not in names]
        for i, peer in enumerate(every):
            for other in every[i + 1:]:
                a, b = peer.spec, other.spec
                if "peerIP" in a and a.get("peerIP") == b.get("peerIP") \
                        and a["asNumber"] != b["asNumber"] \
                        and not ("node" in a and "node" in b and a["node"] != b["node"]):
                    raise ResourceError(f"{peer.named}: peerIP {a['peerIP']} is AS "
                                        f"{a['asNumber']} here and AS {b['asNumber']} in "
                                        f"{other.title}; nothing was written")

    def _check_pools(self, pools: list[Resource]) -> None:
        """No two pools overlap, counting the stored ones these do not replace; none shrinks
        away from addresses in use."""
        if not pools:
            return
        stored, _ = self.list(KINDS["IPPool"])
        names = {p.name for p in pools}
        before = {s.resource.name: s.resource for s in stored}
        for pool in pools:
            old = before.get(pool.name)
            if old is not None and old.spec["cidr"] != pool.spec["cidr"]:
                self._stranded(replace(old, where=pool.where),
                               ipaddress.IPv4Network(pool.spec["cidr"]))
        every = pools + [s.resource for s in stored if s.resource.name not in names]
        for i, pool in enumerate(every):
            cidr = ipaddress.IPv4Network(pool.spec["cidr"])
            for other in every[i + 1:]:
                if cidr.overlaps(ipaddress.IPv4Network(other.spec["cidr"])):
                    raise ResourceError(f"{pool.named}: {cidr} overlaps {other.title} "
                                        f"({other.spec['cidr']}); nothing was written")

