"""Reaching a lab's datastore from the CLI (`gingham --lab NAME get ...`): the embedded
file, or etcd over the lab's underlay, for which this whole (single-threaded) process
steps into the lab's control-plane namespace."""

from __future__ import annotations

from gingham.dataplane import netns
from gingham.lab import procs
from gingham.lab.control import store_options
from gingham.lab.state import LabFiles
from gingham.store.factory import StoreOptions


def enter_lab_datastore(lab: str) -> StoreOptions:
    options, ns = store_options(LabFiles(lab).load())
    if ns is not None:
        netns.setns(netns.open_netns(procs.netns_path(ns)))
    return options
