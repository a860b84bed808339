"""The policy engine's inputs as they live in the datastore: pods and namespaces (the
workload records) and NetworkPolicies (`<prefix>/networkpolicies/<ns>/<name>`, the
canonical document as JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from gingham.policy.evaluate import NamespaceView, PodView
from gingham.policy.spec import NetworkPolicy, PolicyError, parse_policy
from gingham.resources.kinds import KINDS
from gingham.store.contract import KeyValue
from gingham.workloads.records import (
    Namespace,
    Pod,
    namespaces_prefix,
    pods_prefix,
)

PODS, NAMESPACES, POLICIES = "pods", "namespaces", "networkpolicies"


@dataclass(frozen=True)
class WorkloadKind:
    """Pods or namespaces, as the evaluator's views of their records."""

    name: str
    prefix: str
    view: Callable[[bytes], PodView | NamespaceView]

    def decode(self, kv: KeyValue) -> PodView | NamespaceView:
        return self.view(kv.value)  # WorkloadDataError is the ValueError informers expect


@dataclass(frozen=True)
class PolicyKind:
    root: str
    name: str = POLICIES

    @property
    def prefix(self) -> str:
        return KINDS["NetworkPolicy"].folder(self.root)  # where `gingham apply` writes

    def decode(self, kv: KeyValue) -> NetworkPolicy:
        try:
            return parse_policy(json.loads(kv.value))
        except (ValueError, PolicyError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"policy does not parse: {err}") from None


def policy_kinds(root: str) -> tuple[WorkloadKind, WorkloadKind, PolicyKind]:
    """What a PolicyManager watches."""
    return (WorkloadKind(PODS, pods_prefix(root), lambda raw: PodView.of(Pod.decode(raw))),
            WorkloadKind(NAMESPACES, namespaces_prefix(root),
                         lambda raw: NamespaceView.of(Namespace.decode(raw))),
            PolicyKind(root))
