"""Calico's block IPAM on the datastore (libcalico-go's algorithm):

1. an address from one of the node's own (affine) blocks;
2. else the node claims a free block of a pool that selects it: creating the block key is
   the claim (compare-and-swap on "absent"), with the address already in it;
3. else, unless `strictAffinity`, a free address borrowed from another node's block;
4. else IpamExhausted.

Keys under `<prefix>/ipam/`: `blocks/<a.b.c.d>-<len>` (the block, its affinity
`host:<node>` in it: one record, so a claim cannot be half done), `handles/<handle>` (which
blocks hold the handle's addresses, for a quick release) and `config` (strictAffinity).
A handle is written before its block on assignment and after it on release, so a crash
leaves at worst a handle without an address, which `check` reports and a release clears;
never an address without its record. Every write is a compare-and-swap against what was
read; a lost race reads again.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gingham.ipam.blocks import (
    Block,
    BlockDataError,
    block_key_part,
    blocks_prefix,
    cidr_of_key_part,
    free_blocks,
    handle_of,
)
from gingham.model import selector
from gingham.resources.document import Resource
from gingham.resources.kinds import KINDS
from gingham.resources.store import ResourceStore
from gingham.store.contract import Store

MAX_ATTEMPTS = 200  # lost races before giving up: each one means another node got there


class IpamExhausted(RuntimeError):
    """No pool that selects the node has a free address."""


class IpamConflict(RuntimeError):
    """Races lost MAX_ATTEMPTS times in a row."""


@dataclass(frozen=True)
class Pool:
    name: str
    cidr: ipaddress.IPv4Network
    block_size: int
    spec: dict[str, Any]

    @classmethod
    def of(cls, pool: Resource) -> Pool:
        return cls(pool.name, ipaddress.IPv4Network(pool.spec["cidr"]), pool.spec["blockSize"],
                   pool.spec)

    def selects(self, labels: Mapping[str, str]) -> bool:
        return not self.spec["disabled"] and selector.parse(
            self.spec["nodeSelector"]).matches(labels)


@dataclass(frozen=True)
class Assignment:
    address: ipaddress.IPv4Address
    block: ipaddress.IPv4Network
    pool: Pool


@dataclass
class StoredBlock:
    block: Block
    revision: int


class BlockIpam:
    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.resources = ResourceStore(store, self.prefix)

    # -- keys ---------------------------------------------------------------------------

    @property
    def blocks_prefix(self) -> str:
        return blocks_prefix(self.prefix)

    @property
    def handles_prefix(self) -> str:
        return f"{self.prefix}/ipam/handles/"

    def _block_key(self, cidr: ipaddress.IPv4Network) -> str:
        return self.blocks_prefix + block_key_part(cidr)

    def _handle_key(self, handle: str) -> str:
        return self.handles_prefix + handle

    # -- reading ------------------------------------------------------------------------

    def pools(self) -> list[Pool]:
        stored, _ = self.resources.list(KINDS["IPPool"])
        return [Pool.of(s.resource) for s in stored]

    def blocks(self) -> tuple[dict[ipaddress.IPv4Network, StoredBlock], list[str]]:
        """Every block, and a line for each stored value that does not parse."""
        kvs, _ = self.store.range(self.blocks_prefix)
        found, problems = {}, []
        for kv in kvs:
            try:
                block = Block.decode(kv.value)
                if block_key_part(block.cidr) != kv.key.removeprefix(self.blocks_prefix):
                    raise BlockDataError(f"holds block {block.cidr}")
            except BlockDataError as err:
                problems.append(f"{kv.key}: {err}")
                continue
            found[block.cidr] = StoredBlock(block, kv.mod_revision)
        return found, problems

    def strict_affinity(self) -> bool:
        kv = self.store.get(f"{self.prefix}/ipam/config")
        return bool(kv and json.loads(kv.value).get("strictAffinity"))

    def set_strict_affinity(self, strict: bool) -> None:
        self.store.put(f"{self.prefix}/ipam/config",
                       json.dumps({"strictAffinity": strict}).encode())

    # -- assigning ----------------------------------------------------------------------

    def assign(self, node: str, labels: Mapping[str, str], attrs: dict[str, Any]) -> Assignment:
        """An address for `attrs` (its "handle" and pod) on `node`, whose labels the pools'
        nodeSelectors see."""
        handle = attrs["handle"]
        for _ in range(MAX_ATTEMPTS):
            pools = [p for p in self.pools() if p.selects(labels)]
            if not pools:
                raise IpamExhausted(f"no enabled IP pool selects node {node}")
            blocks, _ = self.blocks()
            pool_of = {cidr: pool for cidr in blocks
                       if (pool := next((p for p in pools if cidr.subnet_of(p.cidr)), None))}
            mine = [s for cidr, s in blocks.items() if s.block.node == node
                    and cidr in pool_of and s.block.free_count()]
            if mine:
                got = self._take(mine[0], handle, attrs, pool_of[mine[0].block.cidr])
                if got is not None:
                    return got
                continue  # lost a race for that block: read again
            claimed = self._claim(node, pools, blocks, handle, attrs)
            if claimed is not None:
                return claimed
            strict = self.strict_affinity()
            others = [s for cidr, s in blocks.items() if s.block.node != node
                      and cidr in pool_of and s.block.free_count()]
            if others and not strict:
                got = self._take(others[0], handle, attrs, pool_of[others[0].block.cidr])
                if got is not None:
                    return got
                continue
            names = ", ".join(p.name for p in pools)
            raise IpamExhausted(f"no free address for node {node} in IP pools {names}"
                                + (" (strictAffinity: no borrowing)" if strict and others
                                   else ""))
        raise IpamConflict(f"lost {MAX_ATTEMPTS} races in a row for an address on {node}")

    def _take(self, stored: StoredBlock, handle: str, attrs: dict[str, Any],
              pool: Pool) -> Assignment | None:
        block = stored.block
        address = block.assign(attrs)
        assert address is not None
        self._count_in_handle(handle, block.cidr, +1)
        if self.store.compare_and_swap(self._block_key(block.cidr), block.encode(),
                                       stored.revision):
            return Assignment(address, block.cidr, pool)
        self._count_in_handle(handle, block.cidr, -1)
        return None

    def _claim(self, node: str, pools: list[Pool],
               blocks: dict[ipaddress.IPv4Network, StoredBlock], handle: str,
               attrs: dict[str, Any]) -> Assignment | None:
        for pool in pools:
            taken = [cidr for cidr in blocks if cidr.overlaps(pool.cidr)]
            for cidr in free_blocks(pool.cidr, pool.block_size, taken):
                block = Block.empty(cidr, node)
                address = block.assign(attrs)
                assert address is not None
                self._count_in_handle(handle, cidr, +1)
                if self.store.compare_and_swap(self._block_key(cidr), block.encode(), 0):
                    return Assignment(address, cidr, pool)
                self._count_in_handle(handle, cidr, -1)  # another node claimed it first
        return None

    def _count_in_handle(self, handle: str, cidr: ipaddress.IPv4Network, delta: int) -> None:
        """Add `delta` to the handle's count for the block; the record goes at zero."""
        key = self._handle_key(handle)
        part = block_key_part(cidr)
        for _ in range(MAX_ATTEMPTS):
            kv = self.store.get(key)
            counts: dict[str, int] = json.loads(kv.value)["blocks"] if kv else {}
            counts[part] = counts.get(part, 0) + delta
            if counts[part] <= 0:
                del counts[part]
            revision = kv.mod_revision if kv else 0
            if not counts:
                if kv is None or self.store.compare_and_delete(key, revision):
                    return
            elif self.store.compare_and_swap(
                    key, json.dumps({"handle": handle, "blocks": counts}).encode(), revision):
                return
        raise IpamConflict(f"lost {MAX_ATTEMPTS} races on handle {handle}")

    # -- releasing ----------------------------------------------------------------------

    def release(self, handle: str) -> list[ipaddress.IPv4Address]:
        """Free every address the handle holds; an emptied block goes back to its pool.
        Without its record (a crash between writes) every block is searched."""
        kv = self.store.get(self._handle_key(handle))
        if kv is not None:
            cidrs = [cidr_of_key_part(part) for part in json.loads(kv.value)["blocks"]]
        else:
            cidrs = list(self.blocks()[0])
        freed: list[ipaddress.IPv4Address] = []
        for cidr in cidrs:
            freed += self._release_in(cidr, lambda b: b.release_handle(handle))
        if kv is not None:
            self.store.compare_and_delete(self._handle_key(handle), kv.mod_revision)
        return freed

    def release_address(self, address: ipaddress.IPv4Address) -> str | None:
        """Free one address whoever holds it; its handle, or None if it was free."""
        for cidr, stored in self.blocks()[0].items():
            if address in cidr:
                holder = dict(stored.block.holders()).get(address)
                if holder is None:
                    return None
                self._release_in(cidr, lambda b: [address] if b.release_address(address)
                                 else [])
                self._count_in_handle(holder["handle"], cidr, -1)
                return holder["handle"]
        return None

    def _release_in(self, cidr: ipaddress.IPv4Network, release) -> list[ipaddress.IPv4Address]:
        key = self._block_key(cidr)
        for _ in range(MAX_ATTEMPTS):
            kv = self.store.get(key)
            if kv is None:
                return []
            block = Block.decode(kv.value)
            freed = release(block)
            if not freed:
                return []
            written = (self.store.compare_and_delete(key, kv.mod_revision) if block.is_empty()
                       else self.store.compare_and_swap(key, block.encode(), kv.mod_revision))
            if written:
                return freed
        raise IpamConflict(f"lost {MAX_ATTEMPTS} races on block {cidr}")

    # -- looking ------------------------------------------------------------------------

    def check(self, nodes: set[str],
              pods: Mapping[tuple[str, str], str] | None) -> list[str]:
        """Every inconsistency, one line each: blocks of nodes that do not exist or outside
        every pool, addresses whose pod is gone or runs as another container now (when
        `pods`, (namespace, name) -> container ID, is known), addresses whose handle has no
        record, handles without addresses."""
        problems: list[str] = []
        blocks, unreadable = self.blocks()
        problems += unreadable
        pools = self.pools()
        held: dict[str, dict[str, int]] = {}
        for cidr, stored in blocks.items():
            block = stored.block
            if block.node is not None and block.node not in nodes:
                problems.append(f"block {cidr} is affine to node {block.node}, which does not "
                                "exist")
            if not any(cidr.subnet_of(p.cidr) for p in pools):
                problems.append(f"block {cidr} lies in no IP pool")
            for address, attrs in block.holders():
                counts = held.setdefault(attrs.get("handle", ""), {})
                counts[block_key_part(cidr)] = counts.get(block_key_part(cidr), 0) + 1
                pod = (attrs.get("namespace", ""), attrs.get("pod", ""))
                if pods is None or not pod[1]:
                    continue
                if pod not in pods:
                    problems.append(f"address {address} is held for pod {pod[0]}/{pod[1]}, "
                                    "which no longer exists")
                elif pods[pod] and attrs.get("handle") != handle_of(pods[pod]):
                    problems.append(f"address {address} is held by {attrs.get('handle')} for "
                                    f"pod {pod[0]}/{pod[1]}, which runs as container "
                                    f"{pods[pod][:12]} now")
        kvs, _ = self.store.range(self.handles_prefix)
        recorded = {}
        for kv in kvs:
            handle = kv.key.removeprefix(self.handles_prefix)
            try:
                recorded[handle] = dict(json.loads(kv.value)["blocks"])
            except (ValueError, KeyError, TypeError):
                problems.append(f"{kv.key}: handle does not parse")
                continue
        for handle, counts in sorted(recorded.items()):
            if handle not in held:
                problems.append(f"handle {handle} holds no address")
            elif counts != held[handle]:
                problems.append(f"handle {handle} records {counts}, the blocks hold "
                                f"{held[handle]}")
        for handle in sorted(held.keys() - recorded.keys()):
            problems.append(f"addresses of handle {handle} have no handle record")
        return problems
