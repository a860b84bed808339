"""How one kind of cluster object lives in the datastore: under which prefix, and how a
stored value becomes an object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gingham.store.contract import KeyValue


@dataclass(frozen=True)
class Undecodable:
    """A stored value that does not decode: reported, and what was applied for it stays."""

    why: str


class Kind(Protocol):
    name: str
    prefix: str  # every key of the kind, and nothing else, starts with it

    def decode(self, kv: KeyValue) -> object:
        """The object the value stands for; ValueError if it stands for none."""
        ...
