"""A Calico-mode node agent: felix's part without BGP. It joins by writing its node record,
serves CNI calls with block IPAM and routed `cali*` pods, and keeps the routes to every
other node's blocks in step with the datastore on the shared reconcile loop.

Composed from parts beside Flannel mode's (agent/main.py), not branched through them: the
CNI plumbing, the status file, the datastore health probe, the informers and the loop are
the same; IPAM, the pod attachment and the route manager are Calico's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading

from gingham.agent.config import CONFLIST_NAME, AgentConfig
from gingham.agent.datastore_health import DatastoreHealth
from gingham.agent.node import detect_uplink
from gingham.agent.server import PluginServer
from gingham.agent.status import AgentStatus, StatusFile
from gingham.calico.bird import BirdManager, BirdProcess
from gingham.calico.bird import retire as retire_bird
from gingham.calico.block_routes import BlockRoutes
from gingham.calico.cni_service import CalicoCniService
from gingham.calico.kinds import (
    BGP_CONFIGS,
    BGP_PEERS,
    BlockKind,
    NodeKind,
    PoolKind,
    ResourceDocumentKind,
    cluster_key,
    decode_mode,
)
from gingham.calico.nat_outgoing import NatOutgoing
from gingham.calico.pools import DEFAULT_POOL, default_pool
from gingham.calico.tunnels import IPIP_OVERHEAD, VXLAN_OVERHEAD
from gingham.dataplane import sysctl
from gingham.ipam.block_ipam import BlockIpam
from gingham.model.files import render_conflist, write_atomically
from gingham.policy.kinds import policy_kinds
from gingham.policy.manager import policy_manager
from gingham.resources.document import ResourceError
from gingham.resources.kinds import KINDS
from gingham.resources.store import CREATE, ResourceStore
from gingham.store.contract import Store, StoreError
from gingham.store.factory import open_store
from gingham.subnet.lease import NodeInfo
from gingham.subnet.registry import SubnetRegistry
from gingham.sync.informer import Informer
from gingham.sync.loop import ReconcileLoop, stop_all
from gingham.workloads.recorder import WorkloadRecorder
from gingham.workloads.store import WorkloadStore

log = logging.getLogger("gingham.calico.agent")
JOIN_RETRY = 2.0
OVERHEAD = {"vxlanMode": VXLAN_OVERHEAD, "ipipMode": IPIP_OVERHEAD}  # outer headers


class CalicoAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.status = StatusFile(config.status_path, AgentStatus(node=config.node_name,
                                                                 backend="calico"))
        self.health = DatastoreHealth(self.status)
        self.store: Store | None = None
        self.server: PluginServer | None = None
        self.loop: ReconcileLoop | None = None
        self.informers: list[Informer] = []

    def run(self) -> None:
        uplink = detect_uplink(self.config)
        public_ip = self.config.public_ip or uplink.address.ip
        store = self._join(NodeInfo(self.config.node_name, public_ip, self.config.labels,
                                    ipv4_address=str(uplink.address)))
        prefix = self.config.prefix
        ipam = BlockIpam(store, prefix)
        mtu = self.config.mtu or uplink.mtu - self._overhead(ipam)
        if sysctl.ensure("net.ipv4.ip_forward", "1"):
            log.info("enabled IPv4 forwarding")
        if self.config.cni_conf_dir is not None:
            write_atomically(self.config.cni_conf_dir / CONFLIST_NAME, json.dumps(
                render_conflist(self.config.network_name, None, mtu, self.config.socket_path),
                indent=2))
        service = CalicoCniService(self.config, mtu, ipam, lambda: self.config.labels)
        service.workloads = WorkloadRecorder(WorkloadStore(store, prefix), self.config.node_name)
        self.server = PluginServer(self.config.socket_path, service, self.config.workers)
        self.server.bind()
        threading.Thread(target=self.server.serve_forever, name="cni-accept",
                         daemon=True).start()
        log.info("calico mode: serving CNI calls on %s, pod MTU %d", self.config.socket_path,
                 mtu)
        self.status.update(public_ip=str(public_ip))
        # Sets before routes, as in Flannel mode: the masquerade exceptions for a new node
        # are in place before its pods are routed.
        routes = BlockRoutes(self.config.node_name, uplink, self.status, ipam,
                             lambda: self.config.labels, bgp=self.config.bgp)
        managers: list = [NatOutgoing(), routes, policy_manager(self.config, bridged=False)]
        kinds: list = [PoolKind(prefix), NodeKind(prefix), BlockKind(prefix),
                       *policy_kinds(prefix)]
        if not self.config.bgp:
            retire_bird(self.config.run_dir)
        else:
            bird = BirdProcess(self.config.run_dir, self._wake)
            managers.append(BirdManager(self.config.node_name, bird))
            kinds += [ResourceDocumentKind(prefix, BGP_CONFIGS),
                      ResourceDocumentKind(prefix, BGP_PEERS)]
        self.loop = ReconcileLoop(managers, self._report)
        self.informers = [Informer(store, kind, self.loop.deliver) for kind in kinds]
        self.loop.start()
        for informer in self.informers:
            informer.start()
        self.stopping.wait()

    def _join(self, node: NodeInfo) -> Store:
        """Open the datastore, check it runs Calico mode and write the node record,
        retrying until the datastore answers; a mismatched mode is retried too (an operator
        may be setting the cluster up)."""
        assert self.config.store is not None
        last = ""
        while not self.stopping.is_set():
            try:
                if self.store is None:
                    self.store = open_store(self.config.store)
                    self.health.start(self.store.probe)
                kv = self.store.get(cluster_key(self.config.prefix))
                mode = decode_mode(kv.value if kv else None)
                if mode != "calico":
                    raise ValueError(f"the datastore's cluster mode is {mode}, this agent runs "
                                     f"calico (set {cluster_key(self.config.prefix)})")
                self._default_pool(self.store)
                SubnetRegistry(self.store, self.config.prefix).put_node(node)
                self.health.joined()
                log.info("joined as %s (%s)", node.name, node.public_ip)
                return self.store
            except (StoreError, ValueError) as err:
                if str(err) != last:
                    log.error("cannot join the cluster: %s", err)
                    last = str(err)
                self.health.join_failed(str(err))
            self.stopping.wait(JOIN_RETRY)
        raise InterruptedError("stopped before joining")

    def _default_pool(self, store: Store) -> None:
        """With --cluster-cidr, a cluster without pools gets Calico's default one."""
        if self.config.cluster_cidr is None:
            return
        resources = ResourceStore(store, self.config.prefix)
        if resources.list(KINDS["IPPool"])[0]:
            return
        with contextlib.suppress(ResourceError):  # another node made it first
            resources.write(CREATE, [default_pool(self.config.cluster_cidr)])
            log.info("created IP pool %s (%s)", DEFAULT_POOL, self.config.cluster_cidr)

    def _overhead(self, ipam: BlockIpam) -> int:
        """The largest encapsulation of the pools that select this node: pods get the MTU
        that fits through every path they may take."""
        pools = [p for p in ipam.pools() if p.selects(self.config.labels)]
        return max((size for p in pools for mode, size in OVERHEAD.items()
                    if p.spec[mode] != "Never"), default=0)

    def _wake(self) -> None:
        if self.loop is not None:
            self.loop.wake()

    def _report(self, problems: list[str]) -> None:
        for problem in problems:
            if problem not in self.status.status.problems:
                log.warning("%s", problem)
        self.status.update(problems=problems)

    def shutdown(self) -> None:
        """Stop serving and watching; routes and pods stay for the next agent."""
        self.stopping.set()
        stop_all(self.informers, self.loop, self.server)
        # BIRD stays (bird.py): the next agent of this node takes it over, no session drops.
        self.health.stop()
        if self.store is not None:
            self.store.close()
