"""Leases in the datastore → this node's dataplane (routes via the backend, the masquerade
node set). A full resync is the first path and the path after any error; the watch only
speeds things up. Work that failed is redone after a pause, never dropped."""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable

from gingham.agent.status import StatusFile
from gingham.backends.base import Backend
from gingham.dataplane import netns
from gingham.dataplane.routes import RouteIntent, read_routes
from gingham.store.contract import DELETE, Compacted, StoreError, Watch
from gingham.subnet.lease import Lease, LeaseDataError, subnet_of_key
from gingham.subnet.registry import SubnetRegistry
from gingham.subnet.space import routable

log = logging.getLogger("gingham.agent.sync")
RETRY_MIN, RETRY_MAX = 0.5, 10.0
# A full resync this often even when the watch is quiet: a watch whose etcd vanished
# without closing the connection (a partition) would otherwise wait forever.
RESYNC_INTERVAL = 60.0


class ClusterSync:
    def __init__(self, registry: SubnetRegistry, backend: Backend, own: Callable[[], Lease],
                 on_nodes: Callable[[set[ipaddress.IPv4Address]], None],
                 status: StatusFile,
                 standing: Callable[[], list[str]] = list) -> None:
        self.registry = registry
        self.backend = backend
        self.own = own
        self.on_nodes = on_nodes
        self.status = status
        self.standing = standing  # problems owned elsewhere (e.g. a config not followed)
        self.stopping = threading.Event()
        self._watch: Watch | None = None
        # The last picture applied: a lease whose value goes bad keeps what it last said
        # across resyncs, as it does on the watch path.
        self._known: dict[ipaddress.IPv4Network, Lease] = {}
        self._thread = threading.Thread(target=self.run, name="cluster-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._watch is not None:
            self._watch.cancel()
        self._thread.join(10)

    def run(self) -> None:
        delay = RETRY_MIN
        while not self.stopping.is_set():
            try:
                self._sync_then_watch()
                delay = RETRY_MIN
            except Compacted as err:
                log.info("watch fell behind (%s); full resync", err)
                continue
            except StoreError as err:
                # status.json's datastore field is the health probe's (datastore_health).
                log.warning("datastore: %s; keeping the dataplane as it is", err)
            except Exception:
                log.exception("applying leases failed; retrying")
            self.stopping.wait(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _sync_then_watch(self) -> None:
        listing = self.registry.leases()
        leases = {lease.subnet: lease for lease in listing.leases}
        bad = dict(p.split(": ", 1) for p in listing.problems)
        for subnet in map(self._subnet, bad):
            if subnet is not None and subnet not in leases and subnet in self._known:
                leases[subnet] = self._known[subnet]
        self._known = leases  # kept current by _on_event from here on
        self.apply(leases, bad)
        self._watch = watch = self.registry.watch_leases(listing.revision + 1)
        if self.stopping.is_set():
            return
        timer = threading.Timer(RESYNC_INTERVAL, watch.cancel)
        timer.daemon = True
        timer.start()
        try:
            for event in watch:
                self._on_event(event, leases, bad)
                self.apply(leases, bad)
        finally:
            timer.cancel()

    def _on_event(self, event, leases: dict, bad: dict[str, str]) -> None:
        """Fold one change into the picture. A value that does not parse is reported and
        changes nothing: what is programmed for that subnet stays."""
        bad.pop(event.key, None)
        try:
            subnet = subnet_of_key(self.registry.prefix, event.key)
            if event.type == DELETE:
                leases.pop(subnet, None)
            else:
                known = leases.get(subnet)
                # A key new to the picture was created by this event; a known one keeps
                # the creation it was listed or first seen with.
                leases[subnet] = self.registry.decode_lease(
                    event.key, event.value, event.revision,
                    create_revision=known.create_revision if known else event.revision)
        except LeaseDataError as err:
            if event.type != DELETE:
                bad[event.key] = str(err)

    def _subnet(self, key: str) -> ipaddress.IPv4Network | None:
        try:
            return subnet_of_key(self.registry.prefix, key)
        except LeaseDataError:
            return None

    def _held_routes(self, leases: dict, bad: dict[str, str]) -> set[RouteIntent]:
        """Routes already programmed to subnets whose lease does not parse and that this
        process never saw a good value for (it has just started): left as they are, since
        a value that does not parse says nothing, least of all "remove the route"."""
        subnets = {s for s in map(self._subnet, bad) if s is not None and s not in leases}
        if not subnets:
            return set()
        with netns.iproute() as ipr:
            owned, _ = read_routes(ipr)
        return {route for route in owned if route.dst in subnets}

    def apply(self, leases: dict, bad: dict[str, str]) -> None:
        usable, clashes = routable(self.own().subnet, leases.values())
        plan = self.backend.plan(self.own(), usable)
        held = self._held_routes(leases, bad)
        plan.routes |= held
        problems = (self.standing() + clashes + plan.problems + self.backend.apply(plan)
                    + [f"{key}: {why}" for key, why in bad.items()])
        for problem in problems:
            if problem not in self.status.status.problems:
                log.warning("%s", problem)
        self.on_nodes({lease.attrs.public_ip for lease in leases.values()}
                      | {route.gateway for route in held if route.gateway is not None})
        own = self.own().subnet
        self.status.update(routes=len(plan.routes), problems=problems,
                           peers=sum(1 for subnet in leases if subnet != own))
