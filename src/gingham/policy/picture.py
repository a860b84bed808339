"""Everything a verdict depends on, read from the datastore at once: the policies, pods,
namespaces and nodes (their addresses, for the host rule). For `policy explain` and the
prober's expected matrix, both through the pure evaluator (policy/evaluate.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gingham.policy.evaluate import NamespaceView, PodView
from gingham.policy.kinds import PolicyKind
from gingham.policy.spec import NetworkPolicy
from gingham.store.contract import Store
from gingham.subnet.registry import SubnetRegistry
from gingham.workloads.store import WorkloadStore


@dataclass
class PolicyPicture:
    policies: list[NetworkPolicy] = field(default_factory=list)
    pods: list[PodView] = field(default_factory=list)
    namespaces: list[NamespaceView] = field(default_factory=list)
    node_ips: dict[str, tuple[str, ...]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what is stored but does not decode

    def pod(self, ref: str) -> PodView | None:
        return next((p for p in self.pods if p.ref == ref), None)


def read_picture(store: Store, prefix: str) -> PolicyPicture:
    picture = PolicyPicture()
    workloads = WorkloadStore(store, prefix)
    pods, problems = workloads.pods()
    picture.pods = [PodView.of(p) for p in pods]
    namespaces, found = workloads.namespaces()
    picture.namespaces = [NamespaceView.of(n) for n in namespaces]
    nodes, more = SubnetRegistry(store, prefix).nodes()
    picture.node_ips = {n.name: (str(n.public_ip),) for n in nodes}
    kind = PolicyKind(prefix)
    kvs, _ = store.range(kind.prefix)
    for kv in kvs:
        try:
            picture.policies.append(kind.decode(kv))
        except ValueError as err:
            problems.append(f"{kv.key}: {err}")
    picture.problems = problems + found + more
    return picture
