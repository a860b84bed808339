"""Pods and namespaces in the datastore. Every change is a read-modify-write under
compare-and-swap, so the lab (which declares a pod's labels and ports, as the API server
holds them) and a node's CNI service (which adds its IP on ADD) never undo each other."""

from __future__ import annotations

from collections.abc import Callable

from gingham.store.contract import Store
from gingham.workloads.records import (
    Namespace,
    Pod,
    WorkloadDataError,
    namespaces_prefix,
    pod_key,
    pods_prefix,
)

MAX_ATTEMPTS = 100


class WorkloadStore:
    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")

    def _update(self, key: str, decode: Callable, change: Callable) -> object | None:
        """change(current or None) -> new object, or None to delete; returns the new one."""
        for _ in range(MAX_ATTEMPTS):
            kv = self.store.get(key)
            current = decode(kv.value) if kv is not None else None
            new = change(current)
            revision = kv.mod_revision if kv is not None else 0
            if new is None:
                if kv is None or self.store.compare_and_delete(key, revision):
                    return None
            elif self.store.compare_and_swap(key, new.encode(), revision):
                return new
        raise RuntimeError(f"{key} kept changing under {MAX_ATTEMPTS} attempts")

    def declare_pod(self, pod: Pod) -> None:
        """The pod as its owner declares it (labels, ports, node), keeping what a CNI ADD
        recorded already."""
        def change(current: Pod | None) -> Pod:
            if current is not None:
                pod.ip, pod.container_id = current.ip, current.container_id
            return pod

        self.ensure_namespace(pod.namespace)
        self._update(pod_key(self.prefix, pod.namespace, pod.name), Pod.decode, change)

    def attach(self, namespace: str, name: str, node: str, ip: str, container_id: str) -> None:
        """What a CNI ADD learned: the pod runs on `node` with `ip`."""
        def change(current: Pod | None) -> Pod:
            pod = current or Pod(namespace, name)
            pod.node, pod.ip, pod.container_id = node, ip, container_id
            return pod

        self.ensure_namespace(namespace)
        self._update(pod_key(self.prefix, namespace, name), Pod.decode, change)

    def detach(self, namespace: str, name: str, container_id: str) -> None:
        """A CNI DEL: the pod record goes, unless it is another container's by now."""
        def change(current: Pod | None) -> Pod | None:
            if current is not None and current.container_id not in ("", container_id):
                return current
            return None

        self._update(pod_key(self.prefix, namespace, name), Pod.decode, change)

    def ensure_namespace(self, name: str) -> None:
        key = namespaces_prefix(self.prefix) + name
        if self.store.get(key) is None:
            self.store.compare_and_swap(key, Namespace.named(name).encode(), 0)

    def label_pod(self, namespace: str, name: str, edit: Callable[[dict], dict]) -> Pod:
        return self._label(pod_key(self.prefix, namespace, name), Pod.decode,
                           f"pod {namespace}/{name}", edit)

    def label_namespace(self, name: str, edit: Callable[[dict], dict]) -> Namespace:
        return self._label(namespaces_prefix(self.prefix) + name, Namespace.decode,
                           f"namespace {name}", edit)

    def _label(self, key: str, decode: Callable, what: str, edit: Callable[[dict], dict]):
        def change(current):
            if current is None:
                raise LookupError(f"{what} does not exist")
            current.labels = edit(current.labels)
            return current

        return self._update(key, decode, change)

    def pods(self, namespace: str | None = None) -> tuple[list[Pod], list[str]]:
        return self._list(pods_prefix(self.prefix, namespace), Pod.decode)

    def namespaces(self) -> tuple[list[Namespace], list[str]]:
        return self._list(namespaces_prefix(self.prefix), Namespace.decode)

    def _list(self, prefix: str, decode: Callable) -> tuple[list, list[str]]:
        kvs, _ = self.store.range(prefix)
        found, problems = [], []
        for kv in kvs:
            try:
                found.append(decode(kv.value))
            except WorkloadDataError as err:
                problems.append(f"{kv.key}: {err}")
        return found, problems
