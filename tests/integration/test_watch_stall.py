"""A watch that goes silent without its connection closing is noticed and resumed within
10 s: three real etcd members, the informer watching through the first; that member is
frozen (SIGSTOP: its sockets stay open, nothing more comes), a change is written through
another member, and the informer must have relisted with it well before the next periodic
resync would have come."""

from __future__ import annotations

import os
import signal
import time

from gingham.store.etcd import EtcdStore
from gingham.subnet.kinds import ConfigKind
from gingham.sync.informer import Change, Informer, Snapshot

DEADLINE = 10.0


def test_a_frozen_members_silent_watch_is_resumed_through_another(etcd_cluster):
    cluster = etcd_cluster(3)
    store = EtcdStore(cluster.urls)  # the first member answers first, and takes the watch
    writer = EtcdStore(cluster.urls[1:])
    updates: list = []
    informer = Informer(store, ConfigKind("/stall"), updates.append)
    informer.start()
    frozen = cluster.procs[0]
    try:
        deadline = time.monotonic() + 10
        while not updates:
            assert time.monotonic() < deadline, "no listing"
            time.sleep(0.05)
        writer.put("/stall/config", b'{"Network": "10.244.0.0/16"}')
        while not any(isinstance(u, Change) for u in updates):
            assert time.monotonic() < deadline, "the watch delivered nothing while healthy"
            time.sleep(0.05)
        os.kill(frozen.pid, signal.SIGSTOP)
        time.sleep(0.5)
        written = time.monotonic()
        writer.put("/stall/config", b'{"Network": "10.245.0.0/16"}')
        while not any("10.245" in repr(u) for u in updates):
            assert time.monotonic() - written < DEADLINE, \
                f"the change was not delivered within {DEADLINE:g}s of a silent watch"
            time.sleep(0.05)
        took = time.monotonic() - written
        assert isinstance(updates[-1], Snapshot), "resumed by relisting"
        print(f"silent watch resumed {took:.1f}s after the change")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        informer.stop()
        store.close()
        writer.close()
