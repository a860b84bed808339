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

from gingham.agent.cluster_sync import ClusterSync
from gingham.agent.cni_service import CniService
from gingham.agent.config import AgentConfig
from gingham.agent.membership import Membership
from gingham.agent.node import MasqueradeNodes, detect_uplink, reconcile_node
from gingham.agent.server import PluginServer
from gingham.agent.status import AgentStatus, StatusFile
from gingham.dataplane import masquerade
from gingham.model.files import parse_subnet_env

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
        self.sync: ClusterSync | None = None
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
        masq = MasqueradeNodes(config, public_ip)
        # On a restart the table already lists the other nodes: keep them until the first
        # sync says otherwise, else pod traffic to them would be NATed meanwhile.
        masq.current |= masquerade.programmed_nodes()
        reconcile_node(config, mtu, masq.current)
        self.serve(config, mtu)
        self.sync = ClusterSync(m.registry, m.backend, m.own, masq.update, self.status,
                                m.standing_problems)
        self.sync.start()
        while (network := m.keep_lease(self.stopping)) is not None:
            self._switch(m, network, config, uplink, masq)

    def _switch(self, m: Membership, network, config: AgentConfig, uplink,
                masq: MasqueradeNodes) -> None:
        """Move to a new backend in place: the old one's devices, routes, neighbours and
        FDB entries go, the new one's come, pods keep their addresses. Pods made before
        keep their MTU: a smaller tunnel MTU reaches only pods made after (as Flannel)."""
        assert self.sync is not None and m.registry is not None
        self.sync.stop()
        try:
            backend = m.switch_backend(network)
        except ValueError as err:  # a config no agent can run: said, and not retried
            m.refuse(f"cannot switch to backend {network.backend.type}, keeping "
                     f"{m.backend.type if m.backend else '?'}: {err}")
            m.unfollowable = network
            backend = m.backend
        except Exception as err:  # e.g. the datastore: the next poll tries again
            log.error("switching to backend %s failed, will retry: %s",
                      network.backend.type, err)
            backend = m.backend
        assert backend is not None
        mtu = self.config.mtu or backend.mtu(uplink)
        reconcile_node(config, mtu, masq.current)
        self.serve(config, mtu)
        self.sync = ClusterSync(m.registry, backend, m.own, masq.update, self.status,
                                m.standing_problems)
        self.sync.start()

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
        if self.sync is not None:
            self.sync.stop()
        if self.server is not None:
            self.server.stop()
        if self.membership is not None:
            self.membership.close()


def run_agent(config: AgentConfig) -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent = Agent(config)
    try:
        agent.run()
    except (Stop, InterruptedError) as why:
        log.info("stopping (%s)", why)
    finally:
        agent.shutdown()
