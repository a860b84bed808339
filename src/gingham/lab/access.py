"""Reaching a lab's datastore from the CLI: the embedded file, or etcd over the lab's
underlay (this process steps into the lab's control-plane namespace first)."""

from __future__ import annotations

from gingham.dataplane import netns
from gingham.lab import procs
from gingham.lab.state import LabFiles
from gingham.store.factory import StoreOptions


def enter_lab_datastore(lab: str) -> StoreOptions:
    files = LabFiles(lab)
    record = files.load()
    store = getattr(record, "datastore", None) or {}
    if store.get("kind") == "etcd":
        netns.setns(netns.open_netns(procs.netns_path(store["netns"])))
        return StoreOptions(kind="etcd", endpoints=tuple(store["endpoints"]))
    if store.get("kind") == "embedded":
        return StoreOptions(kind="embedded", path=files.dir / "store.db")
    raise LookupError(f"lab {lab} has no datastore (it was built with static subnets)")
