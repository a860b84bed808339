"""Calico's IPAM blocks, as pure values: a pool is cut into blocks (/26 by default) that
nodes claim; a block records which of its addresses are taken, by which handle.

The shape is libcalico-go's: `allocations[i]` is the index into `attributes` of whoever
holds the block's i-th address (None: free), `unallocated` the free ordinals in the order
they will be handed out (a released address goes to the back, so it is not reused at
once), `attributes` one entry per holder: the handle (`k8s-pod-network.<containerID>`)
and the pod it is for. `affinity` is `host:<node>` for the node that claimed it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

HANDLE_PREFIX = "k8s-pod-network."


class BlockDataError(ValueError):
    """A stored block that does not parse or does not add up."""


def handle_of(container_id: str) -> str:
    return HANDLE_PREFIX + container_id


def affinity_of(node: str) -> str:
    return f"host:{node}"


@dataclass
class Block:
    cidr: ipaddress.IPv4Network
    affinity: str | None
    allocations: list[int | None]
    unallocated: list[int]
    attributes: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def empty(cls, cidr: ipaddress.IPv4Network, node: str | None) -> Block:
        size = cidr.num_addresses
        return cls(cidr, affinity_of(node) if node else None, [None] * size,
                   list(range(size)))

    @property
    def node(self) -> str | None:
        if self.affinity and self.affinity.startswith("host:"):
            return self.affinity[len("host:"):]
        return None

    def free_count(self) -> int:
        return len(self.unallocated)

    def is_empty(self) -> bool:
        return len(self.unallocated) == len(self.allocations)

    def assign(self, attrs: dict[str, Any]) -> ipaddress.IPv4Address | None:
        """Take the next free address for `attrs` (its "handle" and pod); None if full."""
        if not self.unallocated:
            return None
        ordinal = self.unallocated.pop(0)
        self.allocations[ordinal] = self._attribute_index(attrs)
        return self.cidr.network_address + ordinal

    def _attribute_index(self, attrs: dict[str, Any]) -> int:
        for i, existing in enumerate(self.attributes):
            if existing == attrs:
                return i
        self.attributes.append(dict(attrs))
        return len(self.attributes) - 1

    def holders(self) -> Iterator[tuple[ipaddress.IPv4Address, dict[str, Any]]]:
        """Every taken address with its holder's attributes."""
        for ordinal, index in enumerate(self.allocations):
            if index is not None:
                yield self.cidr.network_address + ordinal, self.attributes[index]

    def release_handle(self, handle: str) -> list[ipaddress.IPv4Address]:
        """Free every address `handle` holds here; the addresses freed."""
        return self._release(lambda _, attrs: attrs.get("handle") == handle)

    def release_address(self, address: ipaddress.IPv4Address) -> bool:
        return bool(self._release(lambda ip, _: ip == address))

    def _release(self, doomed) -> list[ipaddress.IPv4Address]:
        freed = []
        for ordinal, index in enumerate(self.allocations):
            if index is None:
                continue
            address = self.cidr.network_address + ordinal
            if doomed(address, self.attributes[index]):
                self.allocations[ordinal] = None
                self.unallocated.append(ordinal)
                freed.append(address)
        if freed:
            self._compact_attributes()
        return freed

    def _compact_attributes(self) -> None:
        """Drop attributes no allocation points at any more, renumbering the rest."""
        used = sorted({i for i in self.allocations if i is not None})
        renumber = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used]
        self.allocations = [None if i is None else renumber[i] for i in self.allocations]

    def encode(self) -> bytes:
        return json.dumps({"cidr": str(self.cidr), "affinity": self.affinity,
                           "allocations": self.allocations, "unallocated": self.unallocated,
                           "attributes": self.attributes}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Block:
        try:
            data = json.loads(raw)
            block = cls(ipaddress.IPv4Network(data["cidr"]), data.get("affinity"),
                        list(data["allocations"]), list(data["unallocated"]),
                        list(data.get("attributes") or []))
        except (ValueError, KeyError, TypeError) as err:
            raise BlockDataError(f"block does not parse: {err}") from None
        block._check()
        return block

    def _check(self) -> None:
        size = self.cidr.num_addresses
        taken = [i for i, a in enumerate(self.allocations) if a is not None]
        if (len(self.allocations) != size
                or sorted(self.unallocated + taken) != list(range(size))
                or any(not isinstance(self.allocations[i], int)
                       or not 0 <= self.allocations[i] < len(self.attributes) for i in taken)):
            raise BlockDataError(f"block {self.cidr}: allocations, unallocated and attributes "
                                 "do not add up")


def blocks_prefix(root: str) -> str:
    """Where a cluster's blocks live: `<prefix>/ipam/blocks/`."""
    return f"{root}/ipam/blocks/"


def block_key_part(cidr: ipaddress.IPv4Network) -> str:
    """A block's CIDR as a key segment: 10.244.3.64-26 (Calico writes 10-244-3-64-26)."""
    return f"{cidr.network_address}-{cidr.prefixlen}"


def cidr_of_key_part(part: str) -> ipaddress.IPv4Network:
    address, _, length = part.rpartition("-")
    try:
        return ipaddress.IPv4Network(f"{address}/{length}")
    except ValueError:
        raise BlockDataError(f"{part!r} does not name a block") from None


def free_blocks(pool: ipaddress.IPv4Network, block_size: int,
                taken: Iterable[ipaddress.IPv4Network]) -> Iterator[ipaddress.IPv4Network]:
    """The pool's blocks that no existing block overlaps, in address order."""
    taken = list(taken)
    same = {n for n in taken if n.prefixlen == block_size}
    other_sizes = [n for n in taken if n.prefixlen != block_size]  # the pool's size changed
    for block in pool.subnets(new_prefix=block_size):
        if block not in same and not any(block.overlaps(n) for n in other_sizes):
            yield block
