"""The policy engine's inputs as they live in the datastore: pods and namespaces (the
workload records) and NetworkPolicies (`<prefix>/networkpolicies/<ns>/<name>`, the
canonical document as JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gingham.policy.evaluate import NamespaceView, PodView
from gingham.policy.spec import NetworkPolicy, PolicyError, parse_policy
from gingham.store.contract import KeyValue
from gingham.workloads.records import (
    Namespace,
    Pod,
    WorkloadDataError,
    namespaces_prefix,
    pods_prefix,
)

PODS, NAMESPACES, POLICIES = "pods", "namespaces", "networkpolicies"


def policies_prefix(root: str) -> str:
    return f"{root}/networkpolicies/"


@dataclass(frozen=True)
class PodKind:
    root: str
    name: str = PODS

    @property
    def prefix(self) -> str:
        return pods_prefix(self.root)

    def decode(self, kv: KeyValue) -> PodView:
        try:
            return PodView.of(Pod.decode(kv.value))
        except WorkloadDataError as err:
            raise ValueError(str(err)) from None


@dataclass(frozen=True)
class NamespaceKind:
    root: str
    name: str = NAMESPACES

    @property
    def prefix(self) -> str:
        return namespaces_prefix(self.root)

    def decode(self, kv: KeyValue) -> NamespaceView:
        try:
            return NamespaceView.of(Namespace.decode(kv.value))
        except WorkloadDataError as err:
            raise ValueError(str(err)) from None


@dataclass(frozen=True)
class PolicyKind:
    root: str
    name: str = POLICIES

    @property
    def prefix(self) -> str:
        return policies_prefix(self.root)

    def decode(self, kv: KeyValue) -> NetworkPolicy:
        try:
            return parse_policy(json.loads(kv.value))
        except (ValueError, PolicyError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"policy does not parse: {err}") from None


def policy_kinds(root: str) -> tuple[PodKind, NamespaceKind, PolicyKind]:
    """What a PolicyManager watches."""
    return PodKind(root), NamespaceKind(root), PolicyKind(root)
