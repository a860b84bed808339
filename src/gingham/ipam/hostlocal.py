"""Host-local IPAM: hand out, find, release and garbage-collect addresses of a node's pools."""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gingham.cni.spec import ADDRESSES_EXHAUSTED, CniError
from gingham.ipam.ranges import AddressRange
from gingham.ipam.store import Owner, PoolDirectory


class HostLocalIpam:
    """All pools of one node, each a directory under `root` named by its subnet."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pools: dict[str, PoolDirectory] = {}
        self._lock = threading.Lock()
        # One thread makes spare files behind the calls (see store), one pool at a time.
        self._spare_maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipam-spares")

    def _pool(self, key: str) -> PoolDirectory:
        with self._lock:
            if key not in self._pools:
                self._pools[key] = PoolDirectory(self.root / key)
            return self._pools[key]

    def _existing_pools(self) -> list[PoolDirectory]:
        if not self.root.is_dir():
            return []
        return [self._pool(p.name) for p in sorted(self.root.iterdir()) if p.is_dir()]

    def allocate(
        self, ranges: list[AddressRange], owner: Owner
    ) -> tuple[AddressRange, ipaddress.IPv4Address]:
        """Reserve one address for the attachment; the same one again if it already has one."""
        with contextlib.ExitStack() as stack:
            # Every pool of the request locked once, all at once and in one order (no two
            # calls wait on each other): the look for a held address and the reservation
            # are one step.
            pools = {key: stack.enter_context(self._pool(key).locked())
                     for key in sorted({rng.key for rng in ranges})}
            for rng in ranges:
                for address, holder in pools[rng.key].reservations().items():
                    if holder.same_attachment(owner.container_id, owner.ifname) and address in rng:
                        return rng, address
            for rng in ranges:
                pool = pools[rng.key]
                taken = pool.reservations()
                for candidate in rng.candidates(pool.last_reserved()):
                    if candidate not in taken and pool.reserve(candidate, owner):
                        self._spare_maker.submit(pool.add_spares)
                        return rng, candidate
        raise CniError(
            ADDRESSES_EXHAUSTED,
            "no free address left",
            ", ".join(f"{r.start}-{r.end}" for r in ranges),
        )

    def find(self, container_id: str, ifname: str) -> list[ipaddress.IPv4Address]:
        found = []
        for pool in self._existing_pools():
            with pool.locked():
                found += [a for a, o in pool.reservations().items()
                          if o.same_attachment(container_id, ifname)]
        return found

    def release(self, container_id: str, ifname: str) -> list[ipaddress.IPv4Address]:
        """Free every address of the attachment, in any pool; freeing nothing is fine."""
        return self._release_where(lambda o: o.same_attachment(container_id, ifname))

    def garbage_collect(
        self, network: str, valid: set[tuple[str, str]]
    ) -> list[ipaddress.IPv4Address]:
        """Free the network's addresses whose attachment is not in `valid`."""
        return self._release_where(
            lambda o: o.network == network and (o.container_id, o.ifname) not in valid
        )

    def _release_where(self, doomed) -> list[ipaddress.IPv4Address]:
        released = []
        for pool in self._existing_pools():
            with pool.locked():
                for address, owner in list(pool.reservations().items()):
                    if doomed(owner):
                        pool.release(address)
                        released.append(address)
        return released

    def prepare(self, ranges: list[AddressRange]) -> None:
        """Make the spare files of these ranges' pools now (at start: the first ADD after a
        start would otherwise create its file itself)."""
        for key in sorted({rng.key for rng in ranges}):
            pool = self._pool(key)
            with pool.locked():  # makes the pool's directory
                pass
            pool.add_spares()

    def close(self) -> None:
        self._spare_maker.shutdown(wait=True)
        with self._lock:
            for pool in self._pools.values():
                pool.close()

    def free_count(self, ranges: list[AddressRange]) -> int:
        free = 0
        for rng in ranges:
            with self._pool(rng.key).locked() as pool:
                taken = pool.reservations()
                free += sum(1 for a in rng.candidates(None) if a not in taken)
        return free
