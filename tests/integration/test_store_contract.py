"""The datastore contract, run against both backends: embedded SQLite and a real etcd."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from gingham.store.contract import DELETE, PUT, Compacted, Event, LeaseNotFound, StoreUnavailable
from gingham.store.etcd import EtcdStore
from gingham.store.sqlite import EmbeddedStore


def collect(watch, into: list[Event], until: int) -> threading.Thread:
    def run():
        for event in watch:
            into.append(event)
            if len(into) >= until:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_put_get_delete_and_prefix_range(store):
    r1 = store.put("/p/a/1", b"one")
    r2 = store.put("/p/a/2", b"two")
    store.put("/p/ab", b"sibling")
    assert r2 > r1
    kv = store.get("/p/a/1")
    assert (kv.value, kv.create_revision, kv.mod_revision) == (b"one", r1, r1)
    kvs, rev = store.range("/p/a/")
    assert [k.key for k in kvs] == ["/p/a/1", "/p/a/2"] and rev >= r2
    r3 = store.put("/p/a/1", b"uno")
    kv = store.get("/p/a/1")
    assert (kv.create_revision, kv.mod_revision) == (r1, r3)
    assert store.delete("/p/a/1") and not store.delete("/p/a/1")
    assert store.get("/p/a/1") is None


def test_compare_and_swap_on_mod_revision(store):
    assert store.compare_and_swap("/c/k", b"v1", 0)  # create if absent
    assert not store.compare_and_swap("/c/k", b"again", 0)
    kv = store.get("/c/k")
    assert not store.compare_and_swap("/c/k", b"stale", kv.mod_revision - 1)
    assert store.compare_and_swap("/c/k", b"v2", kv.mod_revision)
    assert store.get("/c/k").value == b"v2"
    assert not store.compare_and_delete("/c/k", kv.mod_revision)
    assert store.compare_and_delete("/c/k", store.get("/c/k").mod_revision)
    assert store.get("/c/k") is None


def test_racing_creates_have_one_winner(store):
    wins = []

    def race(i):
        if store.compare_and_swap("/race/x", str(i).encode(), 0):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.get("/race/x").value == str(wins[0]).encode()


def test_lease_expiry_keepalive_and_revoke(store):
    short, kept, revoked = store.grant(2), store.grant(2), store.grant(30)
    store.put("/l/short", b"x", lease=short)
    store.put("/l/kept", b"x", lease=kept)
    store.put("/l/revoked", b"x", lease=revoked)
    store.revoke(revoked)
    assert store.get("/l/revoked") is None
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert store.keepalive(kept) >= 1
        time.sleep(0.5)
    assert store.get("/l/short") is None, "an expired lease takes its keys"
    assert store.get("/l/kept") is not None
    with pytest.raises(LeaseNotFound):
        store.keepalive(short)
    with pytest.raises(LeaseNotFound):
        store.put("/l/other", b"x", lease=short)


def test_watch_from_a_past_revision_then_live(store):
    start = store.put("/w/a", b"1")
    store.put("/elsewhere", b"not watched")
    events: list[Event] = []
    watch = store.watch("/w/", start)
    thread = collect(watch, events, 3)
    store.put("/w/b", b"2")
    store.delete("/w/a")
    thread.join(10)
    watch.cancel()
    assert [(e.type, e.key, e.value) for e in events] == [
        (PUT, "/w/a", b"1"), (PUT, "/w/b", b"2"), (DELETE, "/w/a", b"")]
    assert [e.revision for e in events] == sorted(e.revision for e in events)


def test_cancel_ends_an_idle_watch(store):
    watch = store.watch("/idle/", store.put("/x", b"") + 1)
    thread = collect(watch, [], 1)
    time.sleep(0.3)
    watch.cancel()
    thread.join(5)
    assert not thread.is_alive()


def test_resume_from_last_seen_plus_one_misses_nothing(store):
    first = store.put("/r/0", b"")
    seen: list[Event] = []
    watch = store.watch("/r/", first)
    collect(watch, seen, 3)
    for i in (1, 2):
        store.put(f"/r/{i}", b"")
    _wait(lambda: len(seen) >= 3)
    watch.cancel()  # a disconnect
    for i in (3, 4, 5):
        store.put(f"/r/{i}", b"")
    resumed: list[Event] = []
    watch = store.watch("/r/", seen[-1].revision + 1)
    thread = collect(watch, resumed, 3)
    thread.join(10)
    watch.cancel()
    assert [e.key for e in seen + resumed] == [f"/r/{i}" for i in range(6)]


def _wait(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_watch_below_history_raises_compacted(tmp_path, etcd_cluster):
    embedded = EmbeddedStore(tmp_path / "small.db", log_keep=5)
    etcd = EtcdStore(etcd_cluster(1).urls)
    for store in (embedded, etcd):
        for i in range(12):
            last = store.put("/k/x", str(i).encode())
        if store is etcd:
            etcd.call("/v3/kv/compaction", {"revision": str(last)})
        with pytest.raises(Compacted):
            list(store.watch("/k/", 2))
        store.close()


def test_embedded_store_is_shared_by_processes(tmp_path):
    """Two processes racing to create the same keys: each key gets exactly one owner."""
    db = tmp_path / "shared.db"
    EmbeddedStore(db).close()
    script = (
        "import sys; from pathlib import Path; from gingham.store.sqlite import EmbeddedStore\n"
        "s = EmbeddedStore(Path(sys.argv[1]))\n"
        "print(sum(s.compare_and_swap(f'/s/{i}', sys.argv[2].encode(), 0) for i in range(60)))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(db), who],
                              stdout=subprocess.PIPE) for who in ("a", "b")]
    wins = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(wins) == 60
    kvs, _ = EmbeddedStore(db).range("/s/")
    assert len(kvs) == 60


def test_etcd_tls_needs_the_client_certificate(etcd_cluster):
    cluster = etcd_cluster(1, tls=True)
    good = EtcdStore(cluster.urls, cluster.tls.client_files())
    good.put("/tls/k", b"v")
    assert good.get("/tls/k").value == b"v"
    good.close()
    from gingham.store.etcd import TlsFiles

    no_cert = EtcdStore(cluster.urls, TlsFiles(cafile=str(cluster.tls.ca)), timeout=2)
    with pytest.raises(StoreUnavailable) as err:
        no_cert.get("/tls/k")
    assert cluster.urls[0] in str(err.value)
    untrusted = EtcdStore(cluster.urls, TlsFiles(), timeout=2)
    with pytest.raises(StoreUnavailable, match="TLS"):
        untrusted.get("/tls/k")


def test_etcd_cluster_survives_a_killed_member(etcd_cluster):
    cluster = etcd_cluster(3)
    store = EtcdStore(cluster.urls, timeout=2)
    start = store.put("/m/0", b"")
    seen: list[Event] = []
    watch = store.watch("/m/", start)
    collect(watch, seen, 1)
    _wait(lambda: len(seen) >= 1)
    cluster.kill(store.order()[0])  # the member we are talking to
    # the watch breaks; writes fail over to the other two members
    for i in (1, 2, 3):
        store.put(f"/m/{i}", b"")
    watch.cancel()
    resumed: list[Event] = []
    watch = store.watch("/m/", seen[-1].revision + 1)
    collect(watch, resumed, 3).join(10)
    watch.cancel()
    assert [e.key for e in seen + resumed] == ["/m/0", "/m/1", "/m/2", "/m/3"]
    store.close()


def test_unreachable_etcd_is_a_clear_error(free_ports):
    (port,) = free_ports(1)
    store = EtcdStore([f"http://127.0.0.1:{port}"], timeout=1)
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
        store.get("/x")
