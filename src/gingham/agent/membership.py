"""This node as a member of the cluster: the network config, its subnet lease (acquired,
renewed), its node record, and the backend that reaches the other nodes."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading

from gingham.agent.config import AgentConfig
from gingham.agent.datastore_health import DatastoreHealth
from gingham.agent.status import StatusFile
from gingham.backends.base import Backend
from gingham.backends.registry import BackendUnavailable, make_backend
from gingham.dataplane.uplink import Uplink
from gingham.model.network import NetworkConfig
from gingham.store.contract import Store, StoreError, StoreUnavailable
from gingham.store.factory import open_store
from gingham.subnet.lease import Lease, LeaseAttrs, NodeInfo
from gingham.subnet.manager import ConfigChanged, LeaseManager
from gingham.subnet.registry import ConfigMissing, SubnetRegistry
from gingham.subnet.space import misfit
from gingham.sync.kinds import Undecodable

log = logging.getLogger("gingham.agent.membership")
JOIN_RETRY = 2.0
RENEW_RETRY = 10.0


class Membership:
    def __init__(self, config: AgentConfig, uplink: Uplink, status: StatusFile) -> None:
        assert config.store is not None
        self.config = config
        self.uplink = uplink
        self.public_ip = config.public_ip or uplink.address.ip
        self.status = status
        self.health = DatastoreHealth(status)  # the only writer of status.datastore
        self.store: Store | None = None
        self.registry: SubnetRegistry | None = None
        self.network: NetworkConfig | None = None
        self.backend: Backend | None = None
        self.manager: LeaseManager | None = None
        self.lease: Lease | None = None
        self.refused = ""  # why this node cannot follow the stored config, if it cannot
        self.unfollowable: NetworkConfig | None = None  # a config refused, not retried
        # A store that cannot be opened yet (TLS files missing, an embedded path that cannot
        # be made) is reported and retried by join() like an unreachable one, the previous
        # subnet served meanwhile. Bad options (ValueError) fail the start right here.
        with contextlib.suppress(StoreUnavailable):
            self._open_store()

    def _open_store(self) -> None:
        assert self.config.store is not None
        self.store = open_store(self.config.store)
        self.registry = SubnetRegistry(self.store, self.config.prefix)
        self.health.start(self.store.probe)

    def join(self, stopping: threading.Event, previous: ipaddress.IPv4Network | None,
             held: bool = False) -> Lease:
        """Config, backend and lease, retrying until the datastore answers. Errors that a
        retry cannot fix (a bad config, an unknown backend) are reported and retried too:
        an operator may fix the config while we wait. `held`: pods use `previous` already
        (see LeaseManager.acquire)."""
        last = ""
        while not stopping.is_set():
            try:
                return self._join_once(previous, held)
            except (StoreError, ConfigMissing, ValueError, RuntimeError) as err:
                if str(err) != last:
                    log.error("cannot join the cluster: %s", err)
                    last = str(err)
                self.health.join_failed(str(err))
            stopping.wait(JOIN_RETRY)
        raise InterruptedError("stopped before joining")

    def _join_once(self, previous: ipaddress.IPv4Network | None, held: bool) -> Lease:
        if self.registry is None:
            self._open_store()
        assert self.registry is not None
        network = self.registry.get_config()
        backend = make_backend(network.backend, self.uplink, self.config.node_name)
        manager = LeaseManager(self.registry, network, self.config.lease_ttl,
                               self.config.lease_renew_margin)
        lease = manager.acquire(self.attrs(network, backend), previous, held=held)
        self.registry.put_node(NodeInfo(self.config.node_name, self.public_ip,
                                        self.config.labels), lease.store_lease)
        self.network, self.backend, self.manager, self.lease = network, backend, manager, lease
        self.status.update(backend=network.backend.type, subnet=str(lease.subnet),
                           public_ip=str(self.public_ip))
        self.health.joined()
        log.info("joined: %s (%s backend) as %s", lease.subnet, network.backend.type,
                 self.public_ip)
        return lease

    def attrs(self, network: NetworkConfig, backend: Backend) -> LeaseAttrs:
        return LeaseAttrs(self.public_ip, network.backend.type, self.config.node_name,
                          backend.lease_data())

    def own(self) -> Lease:
        assert self.lease is not None
        return self.lease

    def keep_lease(self, stopping: threading.Event) -> None:
        """Renew the lease before it runs out, for as long as the agent runs."""
        assert self.manager is not None and self.registry is not None
        while not stopping.wait(1.0):
            if not self.manager.renew_due():
                continue
            try:
                renewed = self.manager.renew(self.own())
            except (StoreError, ConfigChanged) as err:
                log.warning("lease renewal failed (%s); retrying in %.0fs", err, RENEW_RETRY)
                stopping.wait(RENEW_RETRY)
                continue
            if renewed.subnet != self.own().subnet:
                log.error("lease moved from %s to %s: pods on the old subnet lose their "
                          "routes; restarting the agent", self.own().subnet, renewed.subnet)
                raise SystemExit(3)
            self.lease = renewed
            self.registry.put_node(NodeInfo(self.config.node_name, self.public_ip,
                                            self.config.labels), renewed.store_lease)

    def changed_config(self, stored: object | None) -> NetworkConfig | None:
        """A new config this node can move to, given the stored one as the config informer
        delivers it (a NetworkConfig, Undecodable, or None: no config key); one it cannot
        move to is reported, once."""
        assert self.registry is not None and self.network is not None
        if not isinstance(stored, NetworkConfig):
            why = stored.why if isinstance(stored, Undecodable) \
                else self.registry.missing_config()
            self.refuse(f"network config unreadable, keeping {self.network.backend.type}: "
                        f"{why}")
            return None
        network = stored
        if network == self.network:
            self.refuse("")
            self.unfollowable = None
            return None
        if network == self.unfollowable:
            return None  # refused already; the problem stands while it is stored
        if network.network != self.network.network:
            self.refuse(f"Network changed from {self.network.network} to {network.network}: "
                         "pods keep their addresses, so restart the agents to move")
            return None
        why = misfit(self.own().subnet, network)
        if why is not None:  # stored past `config set`, which refuses it
            self.refuse(f"the stored network config does not fit this node's lease "
                        f"{self.own().subnet}, which {why}; keeping the running config")
            return None
        return network

    def refuse(self, why: str) -> None:
        """Set (or with "", clear) the config change this node cannot follow."""
        if why != self.refused:
            if why:
                log.error("%s", why)
            others = [p for p in self.status.status.problems if p != self.refused]
            self.refused = why
            self.status.update(problems=[why, *others] if why else others)

    def standing_problems(self) -> list[str]:
        """Problems that last until the config changes again, for every status update."""
        return [self.refused] if self.refused else []

    def switch_backend(self, network: NetworkConfig) -> Backend:
        """Tear the current backend down completely and run `network`'s instead; the lease
        is rewritten with the new backend's type and data. On a bad new backend the old
        one keeps running (raises before anything is torn down)."""
        assert self.backend is not None and self.manager is not None
        backend = make_backend(network.backend, self.uplink, self.config.node_name)
        old = self.backend
        log.info("switching backend %s -> %s", old.type, backend.type)
        old.teardown()
        try:
            backend.setup(self.own())
        except Exception as err:
            old.setup(self.own())  # back to what worked
            # Not retried until the config changes: each retry would tear the working
            # backend down again, and pods would lose their routes every time.
            raise BackendUnavailable(str(err)) from err
        self.backend = backend
        self.manager.config = network
        self.lease = self.manager.acquire(self.attrs(network, backend),
                                          previous=self.own().subnet, held=True)
        self.network = network
        self.status.update(backend=network.backend.type)
        return backend

    def close(self) -> None:
        self.health.stop()
        if self.store is not None:
            self.store.close()
