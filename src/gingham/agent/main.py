"""Running an agent.

Static mode (--subnet): program the node, serve CNI calls. Datastore mode: join the cluster
(config, lease, node record), program the node for the lease, serve CNI calls, and keep the
routes to every other node's subnet in step with the leases. If the datastore is down at
start but a previous subnet.env exists, CNI calls are served for that subnet meanwhile and
nothing already programmed is touched.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace

from gingham.agent.cni_service import CniService
from gingham.agent.config import AgentConfig
from gingham.agent.config_follow import ConfigFollower
from gingham.agent.lease_picture import LeasePicture
from gingham.agent.lease_routes import LeaseRoutes
from gingham.agent.membership import Membership
from gingham.agent.node import MasqueradeNodes, detect_uplink, reconcile_node
from gingham.agent.server import PluginServer
from gingham.agent.status import AgentStatus, StatusFile
from gingham.dataplane import masquerade
from gingham.model.files import parse_subnet_env
from gingham.policy.kinds import policy_kinds
from gingham.policy.manager import policy_manager
from gingham.subnet.kinds import ConfigKind, LeaseKind
from gingham.subnet.lease import config_key
from gingham.sync.informer import Informer
from gingham.sync.loop import ReconcileLoop, stop_all
from gingham.workloads.recorder import WorkloadRecorder
from gingham.workloads.store import WorkloadStore

log = logging.getLogger("gingham.agent")


class Stop(Exception):
    pass


def _stop(signum, frame):
    raise Stop(signal.Signals(signum).name)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.server: PluginServer | None = None
        self.loop: ReconcileLoop | None = None
        self.informers: list[Informer] = []
        self.membership: Membership | None = None
        self.status = StatusFile(config.status_path, AgentStatus(node=config.node_name))

    def serve(self, config: AgentConfig, mtu: int) -> None:
        """Start serving plugin calls, or point the running server at a new subnet."""
        if self.server is not None:
            self.server.service.config, self.server.service.mtu = config, mtu
            return
        self.server = PluginServer(config.socket_path, CniService(config, mtu), config.workers)
        self.server.bind()
        threading.Thread(target=self.server.serve_forever, name="cni-accept",
                         daemon=True).start()
        log.info("serving CNI calls on %s", config.socket_path)

    def run(self) -> None:
        uplink = detect_uplink(self.config)
        public_ip = self.config.public_ip or uplink.address.ip
        if self.config.store is None:
            mtu = self.config.mtu or uplink.mtu
            reconcile_node(self.config, mtu, {public_ip})
            self.status.update(subnet=str(self.config.pod_subnet), public_ip=str(public_ip),
                               datastore="none (static subnet)")
            self.serve(self.config, mtu)
            self.stopping.wait()
            return
        previous = self._previous()
        if previous is not None:
            log.info("serving the previous subnet %s until the datastore answers",
                     previous[0].pod_subnet)
            # Said in status.json too, so "error: ..." there reads as degraded, not down.
            self.status.update(subnet=str(previous[0].pod_subnet))
            self.serve(*previous)
        self.membership = m = Membership(self.config, uplink, self.status)
        lease = m.join(self.stopping,
                       previous[0].pod_subnet if previous else self.config.prefer_subnet,
                       held=previous is not None)
        assert m.network is not None and m.backend is not None and m.registry is not None
        config = replace(self.config, pod_subnet=lease.subnet, cluster_cidr=m.network.network)
        if previous is not None and previous[0].pod_subnet != lease.subnet:
            log.warning("lease is %s, not the previous %s: existing pods keep stale addresses",
                        lease.subnet, previous[0].pod_subnet)
        mtu = self.config.mtu or m.backend.mtu(uplink)
        m.backend.setup(lease)
        picture = LeasePicture(m.registry.prefix)
        routes = LeaseRoutes(m.backend, m.own, self.status, picture)
        masq = MasqueradeNodes(config, public_ip, picture, routes.node_gateways,
                               masquerade.programmed_nodes())
        reconcile_node(config, mtu, masq.current)
        self.serve(config, mtu)
        assert self.server is not None
        self.server.service.workloads = WorkloadRecorder(
            WorkloadStore(m.registry.store, m.registry.prefix), config.node_name)
        follower = ConfigFollower(config_key(m.registry.prefix),
                                  lambda stored: self._follow(m, stored, config, uplink,
                                                              routes, masq))
        # The fixed order: a new backend before anything through it; sets before routes
        # (a node's address is in the masquerade node set before its pods are routed, and
        # the routes manager's status says "synced" only once both are done).
        policy = policy_manager(config, bridged=True)
        self.loop = ReconcileLoop([follower, masq, routes, policy], self._report)
        self.informers = [Informer(m.registry.store, kind, self.loop.deliver)
                          for kind in (ConfigKind(m.registry.prefix),
                                       LeaseKind(m.registry.prefix),
                                       *policy_kinds(m.registry.prefix))]
        self.loop.start()
        for informer in self.informers:
            informer.start()
        m.keep_lease(self.stopping)

    def _report(self, problems: list[str]) -> None:
        assert self.membership is not None
        for problem in problems:
            if problem not in self.status.status.problems:
                log.warning("%s", problem)
        self.status.update(problems=self.membership.standing_problems() + problems)

    def _follow(self, m: Membership, stored: object | None, config: AgentConfig, uplink,
                routes: LeaseRoutes, masq: MasqueradeNodes) -> None:
        """Follow the stored config: move to a new backend in place. The old one's devices,
        routes, neighbours and FDB entries go, the new one's come, pods keep their
        addresses. Pods made before keep their MTU: a smaller tunnel MTU reaches only pods
        made after (as Flannel)."""
        network = m.changed_config(stored)
        if network is None:
            return
        try:
            backend = m.switch_backend(network)
        except ValueError as err:  # a config no agent can run: said, and not retried
            m.refuse(f"cannot switch to backend {network.backend.type}, keeping "
                     f"{m.backend.type if m.backend else '?'}: {err}")
            m.unfollowable = network
            return
        finally:
            assert m.backend is not None
            routes.use(m.backend)  # whichever runs now, old or new, is planned anew
        mtu = self.config.mtu or backend.mtu(uplink)
        reconcile_node(config, mtu, masq.current)
        self.serve(config, mtu)

    def _previous(self) -> tuple[AgentConfig, int] | None:
        try:
            network, gateway, mtu = parse_subnet_env(self.config.subnet_env.read_text())
            return replace(self.config, cluster_cidr=network, pod_subnet=gateway.network), mtu
        except (FileNotFoundError, ValueError):
            return None

    def shutdown(self) -> None:
        """Stop serving and watching. Routes, pods and the lease stay: a restarted agent
        picks them up, and pods keep talking meanwhile."""
        self.stopping.set()
        stop_all(self.informers, self.loop, self.server)
        if self.membership is not None:
            self.membership.close()


def run_agent(config: AgentConfig) -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if config.mode == "calico":
        from gingham.calico.agent import CalicoAgent

        agent: Agent | CalicoAgent = CalicoAgent(config)
    else:
        agent = Agent(config)
    try:
        agent.run()
    except (Stop, InterruptedError) as why:
        log.info("stopping (%s)", why)
    finally:
        agent.shutdown()
