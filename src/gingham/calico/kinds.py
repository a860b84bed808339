"""Calico mode's objects as kinds for the informers: IPAM blocks, node records, IP pools."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gingham.ipam.block_ipam import Pool
from gingham.ipam.blocks import Block, blocks_prefix
from gingham.resources.kinds import KINDS
from gingham.resources.store import decode_stored
from gingham.store.contract import KeyValue
from gingham.subnet.lease import NodeInfo, nodes_prefix

BLOCKS, NODES, POOLS = "blocks", "nodes", "ippools"
CLUSTER_KEY = "cluster"  # <prefix>/cluster: {"mode": "flannel" | "calico"}
MODES = ("flannel", "calico")


def cluster_key(prefix: str) -> str:
    return f"{prefix}/{CLUSTER_KEY}"


def _checked(mode: object) -> str:
    if mode not in MODES:
        raise ValueError(f"cluster mode {mode!r} is not one of {', '.join(MODES)}")
    return str(mode)


def encode_mode(mode: str) -> bytes:
    return json.dumps({"mode": _checked(mode)}).encode()


def decode_mode(raw: bytes | None) -> str:
    """The stored cluster mode; no key means a cluster made before modes: flannel."""
    if raw is None:
        return "flannel"
    try:
        mode = json.loads(raw)["mode"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cluster mode does not parse: {err}") from None
    return _checked(mode)


@dataclass(frozen=True)
class BlockKind:
    root: str
    name: str = BLOCKS

    @property
    def prefix(self) -> str:
        return blocks_prefix(self.root)

    def decode(self, kv: KeyValue) -> Block:
        return Block.decode(kv.value)


@dataclass(frozen=True)
class NodeKind:
    root: str
    name: str = NODES

    @property
    def prefix(self) -> str:
        return nodes_prefix(self.root)

    def decode(self, kv: KeyValue) -> NodeInfo:
        return NodeInfo.decode(kv.value)


@dataclass(frozen=True)
class PoolKind:
    root: str
    name: str = POOLS

    @property
    def prefix(self) -> str:
        return KINDS["IPPool"].folder(self.root)

    def decode(self, kv: KeyValue) -> Pool:
        return Pool.of(decode_stored(KINDS["IPPool"], kv.key, kv.value))


BGP_CONFIGS, BGP_PEERS = "bgpconfigurations", "bgppeers"


@dataclass(frozen=True)
class ResourceDocumentKind:
    """A kind of resource stored as its own document (BGPConfiguration, BGPPeer...)."""

    root: str
    name: str  # the resource kind's plural

    @property
    def resource_kind(self):
        return next(k for k in KINDS.values() if k.plural == self.name)

    @property
    def prefix(self) -> str:
        return self.resource_kind.folder(self.root)

    def decode(self, kv: KeyValue):
        return decode_stored(self.resource_kind, kv.key, kv.value)
