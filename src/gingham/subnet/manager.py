"""Getting and keeping this node's subnet lease.

Acquire: a lease already held under this node's name is taken back (same subnet after a
restart); else the previous subnet from subnet.env if still free; else the lowest free one,
where free means overlapping no key under subnets/ (see space.py). Creation is
compare-and-swap on "absent" and on the config being the one the candidates came from, so
two nodes racing never share a subnet (the loser re-reads and tries the next), and two
nodes that read different configs (another SubnetLen) can never both create a lease.
Every lease rides a datastore lease with a TTL (default 24 h) that is renewed
`renew_margin` (default 1 h) before it runs out; a lease that lapsed anyway is written
again.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from gingham.model.network import NetworkConfig
from gingham.store.contract import LeaseNotFound
from gingham.subnet.lease import Lease, LeaseAttrs, LeaseDataError, subnet_key
from gingham.subnet.registry import SubnetRegistry
from gingham.subnet.space import pick_free_subnet

log = logging.getLogger("gingham.subnet")
DEFAULT_TTL = 24 * 3600
DEFAULT_RENEW_MARGIN = 3600
MAX_RACES = 20


class SubnetExhausted(RuntimeError):
    pass


class ConfigChanged(RuntimeError):
    """The stored network config is no longer the one this manager allocates for."""


class LeaseManager:
    def __init__(self, registry: SubnetRegistry, config: NetworkConfig,
                 ttl: int = DEFAULT_TTL, renew_margin: int = DEFAULT_RENEW_MARGIN) -> None:
        if renew_margin >= ttl:
            raise ValueError(f"lease renew margin {renew_margin}s must be below the TTL {ttl}s")
        self.registry = registry
        self.config = config
        self.ttl = ttl
        self.renew_margin = renew_margin
        self.expires_at = 0.0  # monotonic

    def acquire(self, attrs: LeaseAttrs, previous: ipaddress.IPv4Network | None = None,
                *, held: bool = False) -> Lease:
        """`held`: this node's pods use `previous` (it came from subnet.env), so it is never
        traded for another subnet just because its key holds a value that does not parse:
        that is refused (LeaseDataError) until someone fixes or deletes the value."""
        store = self.registry.store
        for _ in range(MAX_RACES):
            listing = self.registry.leases()
            mine = [lease for lease in listing.leases
                    if lease.attrs.node_name == attrs.node_name
                    and lease.subnet.subnet_of(self.config.network)]
            if mine:
                current = mine[0]
                store_lease = store.grant(self.ttl)
                got = self.registry.write_lease(current.subnet, attrs, store_lease,
                                                current.mod_revision)
                if got is not None:
                    # The key now rides the new lease; the old one (a previous run's) has
                    # nothing left to keep.
                    if current.store_lease and current.store_lease != store_lease:
                        store.revoke(current.store_lease)
                    log.info("took back %s for %s", current.subnet, attrs.node_name)
                    return self._held(got)
                store.revoke(store_lease)
                continue
            if held and previous in listing.taken \
                    and all(lease.subnet != previous for lease in listing.leases):
                raise LeaseDataError(
                    f"{subnet_key(self.registry.prefix, previous)} does not parse, and this "
                    f"node's pods use {previous}: not taking another subnet; fix or delete "
                    "that value")
            subnet = pick_free_subnet(self.config.subnets(), listing.taken, previous)
            if subnet is None:
                raise SubnetExhausted(
                    f"network {self.config.network} has no free /{self.config.subnet_len} "
                    f"left ({len(listing.taken)} leased)")
            config_revision = self._config_revision()
            store_lease = store.grant(self.ttl)
            got = self.registry.write_lease(subnet, attrs, store_lease, 0, config_revision)
            if got is not None:
                log.info("leased %s for %s", subnet, attrs.node_name)
                return self._held(got)
            store.revoke(store_lease)  # raced: someone took it first
        raise SubnetExhausted(f"lost {MAX_RACES} races for a subnet; datastore too busy?")

    def _config_revision(self) -> int:
        stored, revision = self.registry.read_config()
        if stored != self.config:
            raise ConfigChanged(f"the network config changed while allocating for "
                                f"{self.config.network}; allocating again under the new one")
        return revision

    def _held(self, lease: Lease) -> Lease:
        self.expires_at = time.monotonic() + self.ttl
        return lease

    def renew_due(self) -> bool:
        return time.monotonic() >= self.expires_at - self.renew_margin

    def renew(self, lease: Lease) -> Lease:
        """Keep the lease alive; if it lapsed, write it again (same subnet if still free)."""
        try:
            self.registry.store.keepalive(lease.store_lease)
            return self._held(lease)
        except LeaseNotFound:
            log.warning("lease on %s lapsed; acquiring again", lease.subnet)
            # Pods use this subnet: never trade it for another because its key is unreadable.
            return self.acquire(lease.attrs, previous=lease.subnet, held=True)
