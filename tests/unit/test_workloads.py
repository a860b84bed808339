"""Pod and namespace records: parsing, label edits, and the lab's declaration and a node's
CNI ADD/DEL merging under compare-and-swap; the recorder keeps what a down datastore
could not take."""

from __future__ import annotations

import threading

import pytest

from gingham.store.contract import StoreUnavailable
from gingham.store.sqlite import EmbeddedStore
from gingham.workloads.recorder import WorkloadRecorder
from gingham.workloads.records import (
    NamedPort,
    Pod,
    WorkloadDataError,
    edited,
    label_edits,
)
from gingham.workloads.store import WorkloadStore

pytestmark = pytest.mark.unit


@pytest.fixture
def workloads(tmp_path):
    store = EmbeddedStore(tmp_path / "store.db")
    yield WorkloadStore(store, "/gingham/network")
    store.close()


def test_named_ports_and_label_edits_parse_as_kubectl_would():
    assert NamedPort.parse("http=8080") == NamedPort("http", 8080, "TCP")
    assert str(NamedPort.parse("dns=53/udp")) == "dns=53/UDP"
    for bad in ("http", "HTTP=80", "http=0", "http=80/ICMP", "a-very-long-port-name=1"):
        with pytest.raises(WorkloadDataError):
            NamedPort.parse(bad)
    edits = label_edits(("app=web", "tier-", "empty="))
    assert edits == {"app": "web", "tier": None, "empty": ""}
    assert edited({"tier": "x", "keep": "y"}, edits) == {"keep": "y", "app": "web", "empty": ""}
    with pytest.raises(WorkloadDataError):
        label_edits(("nolabel",))


def test_the_declaration_and_the_cni_add_merge_and_del_removes(workloads):
    workloads.declare_pod(Pod("web", "front", {"app": "web"}, "node1",
                              ports=[NamedPort("http", 8080)]))
    workloads.attach("web", "front", "node1", "10.244.1.5", "cid1")
    (pod,), _ = workloads.pods("web")
    assert (pod.labels, pod.ip, pod.container_id, pod.ports) == (
        {"app": "web"}, "10.244.1.5", "cid1", [NamedPort("http", 8080)])
    workloads.declare_pod(Pod("web", "front", {"app": "web", "v": "2"}, "node1"))
    assert workloads.pods("web")[0][0].ip == "10.244.1.5"  # a relabel keeps the IP
    workloads.detach("web", "front", "other-cid")  # another container's DEL: kept
    assert workloads.pods()[0]
    workloads.detach("web", "front", "cid1")
    assert workloads.pods()[0] == []
    (ns,), _ = workloads.namespaces()
    assert ns.labels == {"kubernetes.io/metadata.name": "web"}
    with pytest.raises(LookupError, match="pod web/front does not exist"):
        workloads.label_pod("web", "front", lambda old: old)


class FlakyStore:
    """An embedded store that refuses every call while `down` is set."""

    def __init__(self, store: EmbeddedStore) -> None:
        self.inner, self.down = store, threading.Event()

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            if self.down.is_set():
                raise StoreUnavailable("down")
            return method(*args, **kwargs)

        return call


def test_the_recorder_keeps_what_a_down_store_refused_and_the_last_word_wins(tmp_path):
    flaky = FlakyStore(EmbeddedStore(tmp_path / "store.db"))
    workloads = WorkloadStore(flaky, "/p")
    recorder = WorkloadRecorder(workloads, "node1")
    try:
        flaky.down.set()
        recorder.added("default", "a", "10.0.0.1", "c1")  # returns at once, kept
        recorder.added("default", "b", "10.0.0.2", "c2")
        recorder.deleted("default", "b", "c2")  # replaces b's add
        flaky.down.clear()
        recorder._wake.set()
        deadline = threading.Event()
        for _ in range(100):
            if [p.name for p in workloads.pods()[0]] == ["a"]:
                break
            deadline.wait(0.05)
        assert [(p.name, p.ip, p.node) for p in workloads.pods()[0]] == [
            ("a", "10.0.0.1", "node1")]
    finally:
        recorder.close()
        flaky.inner.close()
