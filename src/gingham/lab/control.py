"""A lab's control plane: its datastore — the embedded SQLite file, or a real etcd member in
the `LAB-control` namespace on the underlay, reached over the underlay as in a real
cluster — and the network config the agents read from it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from gingham.backends.registry import check_options
from gingham.calico.kinds import cluster_key, encode_mode
from gingham.calico.pools import default_pool
from gingham.dataplane import netns
from gingham.lab import etcd, procs, tor
from gingham.lab.plan import CONTROL, LabPlan, netns_name
from gingham.lab.state import LabFiles, LabRecord
from gingham.model.network import parse_network_config
from gingham.resources.document import split_documents
from gingham.resources.kinds import CALICO_API, parse_resource
from gingham.resources.store import APPLY, ResourceStore
from gingham.store.factory import StoreOptions, open_store
from gingham.subnet.registry import SubnetRegistry

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


def etcd_member(plan: LabPlan, files: LabFiles) -> etcd.EtcdMember:
    return etcd.EtcdMember(CONTROL, str(plan.control.address.ip), ETCD_CLIENT_PORT,
                           ETCD_PEER_PORT, files.dir / "etcd")


def start_datastore(plan: LabPlan, files: LabFiles, record: LabRecord) -> None:
    if plan.datastore == "etcd":
        member = etcd_member(plan, files)
        proc = etcd.start_member(member, [member], files.dir / "etcd.log",
                                 netns=netns_name(plan.name, CONTROL))
        record.datastore = {"kind": "etcd", "endpoints": [member.client_url],
                            "netns": netns_name(plan.name, CONTROL), "pid": proc.pid}
        files.save(record)
        with netns.entered(procs.netns_path(netns_name(plan.name, CONTROL))):
            etcd.wait_ready([member.client_url], proc)
    else:
        record.datastore = {"kind": "embedded", "path": str(files.dir / "store.db")}
        files.save(record)


def store_options(record: LabRecord) -> tuple[StoreOptions, str | None]:
    """How to open the lab's datastore, and the namespace to open it from (etcd)."""
    store = record.datastore or {}
    if store.get("kind") == "etcd":
        return StoreOptions(kind="etcd", endpoints=tuple(store["endpoints"])), store["netns"]
    if store.get("kind") == "embedded":
        return StoreOptions(kind="embedded", path=Path(store["path"])), None
    raise LookupError(f"lab {record.name} has no datastore")


@contextlib.contextmanager
def lab_registry(record: LabRecord, timeout: float | None = None
                 ) -> Iterator[SubnetRegistry]:
    """The lab's registry; with etcd this thread works inside the control namespace, so
    its connections cross the underlay like an agent's. `timeout`: see open_store."""
    options, ns = store_options(record)
    with contextlib.ExitStack() as stack:
        if ns is not None:
            stack.enter_context(netns.entered(procs.netns_path(ns)))
        store = open_store(options, timeout)
        stack.callback(store.close)
        yield SubnetRegistry(store)


def write_network_config(plan: LabPlan, record: LabRecord) -> None:
    """The cluster mode, and Flannel's net-conf.json or Calico's default IP pool."""
    if plan.mode == "calico":
        with lab_registry(record) as registry:
            registry.store.put(cluster_key(registry.prefix), encode_mode("calico"))
            ResourceStore(registry.store, registry.prefix).write(APPLY, [default_pool(
                plan.pod_cidr, plan.encap, plan.cross_subnet, plan.ip_masq),
                *tor_peers(plan)])
        return
    network = parse_network_config({"Network": str(plan.pod_cidr),
                                    "Backend": {**plan.backend_options, "Type": plan.backend}})
    check_options(network.backend)
    with lab_registry(record) as registry:
        registry.store.put(cluster_key(registry.prefix), encode_mode("flannel"))
        registry.set_config(network)


def tor_peers(plan: LabPlan) -> list:
    """A node-specific BGPPeer from each node to each top-of-rack router it peers."""
    docs = [{"apiVersion": CALICO_API, "kind": "BGPPeer",
             "metadata": {"name": f"tor-{node.name}-{address.replace('.', '-')}"},
             "spec": {"peerIP": address, "asNumber": asn, "node": node.name}}
            for node in plan.nodes for address, asn in tor.peers_of(plan, node.name)]
    return [parse_resource(raw) for raw in split_documents(docs, "the lab's ToR peers")]


def agent_store_args(record: LabRecord) -> list[str]:
    options, _ = store_options(record)
    if options.kind == "etcd":
        return ["--datastore", "etcd", "--endpoints", ",".join(options.endpoints)]
    return ["--datastore", "embedded", "--store-path", str(options.path)]
