"""The address space the leases share, as pure logic: which subnets overlap, which are
free, and which fit a network config.

No two leases may ever overlap, whatever the config history: a /28 handed out inside a
node's /24 gives other nodes two routes for one address and breaks both nodes. So a
candidate is free only if it overlaps no key under subnets/ at all (of any length, and
including keys whose values do not parse), not merely if its own key is absent.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable

from gingham.model.network import NetworkConfig
from gingham.subnet.lease import Lease

Net = ipaddress.IPv4Network


class Taken:
    """Subnets in use, as sorted address intervals, for overlap tests in O(log n)."""

    def __init__(self, subnets: Iterable[Net]) -> None:
        spans = sorted((int(s.network_address), int(s.broadcast_address)) for s in subnets)
        # Merged, so each start is after the previous end and one bisect answers.
        merged: list[list[int]] = []
        for first, last in spans:
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        self._starts = [m[0] for m in merged]
        self._ends = [m[1] for m in merged]

    def overlaps(self, subnet: Net) -> bool:
        first, last = int(subnet.network_address), int(subnet.broadcast_address)
        at = bisect.bisect_right(self._starts, last) - 1
        return at >= 0 and self._ends[at] >= first


def pick_free_subnet(candidates: list[Net], taken: Iterable[Net],
                     preferred: Net | None = None) -> Net | None:
    """The preferred subnet if it is free, else the lowest free one; free means it overlaps
    nothing taken."""
    used = Taken(taken)
    if preferred is not None and preferred in candidates and not used.overlaps(preferred):
        return preferred
    return next((s for s in candidates if not used.overlaps(s)), None)


def misfit(subnet: Net, config: NetworkConfig) -> str | None:
    """Why a leased subnet cannot stand under `config`, or None if it fits."""
    if not subnet.subnet_of(config.network):
        return f"is outside Network {config.network}"
    if subnet.prefixlen != config.subnet_len:
        return f"is a /{subnet.prefixlen}, not a /{config.subnet_len} (SubnetLen)"
    if not config.subnet_min <= subnet.network_address <= config.subnet_max:
        return (f"is outside SubnetMin {config.subnet_min} .. SubnetMax "
                f"{config.subnet_max}")
    return None


def overlapping(subnets: Iterable[Net]) -> set[Net]:
    """Every subnet that overlaps another one of `subnets`."""
    ordered = sorted(set(subnets), key=lambda s: (int(s.network_address), s.prefixlen))
    found: set[Net] = set()
    reach: Net | None = None  # of those seen, the one reaching furthest
    for subnet in ordered:
        if reach is not None and int(subnet.network_address) <= int(reach.broadcast_address):
            found |= {subnet, reach}
        if reach is None or int(subnet.broadcast_address) > int(reach.broadcast_address):
            reach = subnet
    return found


def leases_that_do_not_fit(config: NetworkConfig, leases: Iterable[Lease]) -> list[str]:
    """One line per live lease that `config` would strand, naming its node."""
    found = []
    for lease in sorted(leases, key=lambda x: int(x.subnet.network_address)):
        why = misfit(lease.subnet, config)
        if why is not None:
            found.append(f"{lease.subnet} of {lease.attrs.node_name or '?'} {why}")
    return found


def routable(own: Net, leases: Iterable[Lease]) -> tuple[list[Lease], list[str]]:
    """The leases a node may route, and a problem for each it may not (see refusals)."""
    leases = list(leases)
    refused = refusals(own, leases)
    return [lease for lease in leases if lease.subnet not in refused], list(refused.values())


def refusals(own: Net, leases: Iterable[Lease]) -> dict[Net, str]:
    """The leases a node may not route, each with why. Of leases that overlap (only a
    store written by hand or by an older version holds such), the one created first is
    routed and the later ones are not, so an intruding lease can neither take a node's
    addresses nor cut it off; this node's own subnet stays its own."""
    leases = list(leases)
    clash = overlapping([own, *(lease.subnet for lease in leases)])
    if not clash:
        return {}
    first: list[tuple[Net, str]] = [(own, "this node")]
    refused = {}
    for lease in sorted((x for x in leases if x.subnet in clash and x.subnet != own),
                        key=lambda x: (x.create_revision, int(x.subnet.network_address))):
        older = next((f"{subnet} of {holder}" for subnet, holder in first
                      if subnet.overlaps(lease.subnet)), None)
        if older is None:
            first.append((lease.subnet, lease.attrs.node_name or "?"))
        else:
            refused[lease.subnet] = (
                f"lease {lease.subnet} of {lease.attrs.node_name or '?'} overlaps the "
                f"earlier lease {older}; not routed (delete one of them)")
    return refused


class SubnetIndex:
    """Subnets by prefix length, so the ones overlapping a given subnet are found without
    looking at the rest: a lookup per length held for those containing it, a bisect per
    longer length for those inside it. Leases are all one length in a sane store, so a
    question costs O(1) there."""

    def __init__(self) -> None:
        self._by_len: dict[int, list[int]] = {}  # prefix length -> sorted network addresses

    def add(self, subnet: Net) -> None:
        starts = self._by_len.setdefault(subnet.prefixlen, [])
        at = bisect.bisect_left(starts, int(subnet.network_address))
        if at == len(starts) or starts[at] != int(subnet.network_address):
            starts.insert(at, int(subnet.network_address))

    def discard(self, subnet: Net) -> None:
        starts = self._by_len.get(subnet.prefixlen, [])
        at = bisect.bisect_left(starts, int(subnet.network_address))
        if at < len(starts) and starts[at] == int(subnet.network_address):
            del starts[at]
            if not starts:
                del self._by_len[subnet.prefixlen]

    def overlapping(self, subnet: Net) -> list[Net]:
        """Every held subnet that overlaps `subnet`, but `subnet` itself."""
        first, last = int(subnet.network_address), int(subnet.broadcast_address)
        found = []
        for length, starts in self._by_len.items():
            if length <= subnet.prefixlen:  # at most one can contain it
                start = first & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
                at = bisect.bisect_left(starts, start)
                if at < len(starts) and starts[at] == start:
                    found.append(Net((start, length)))
            else:
                at = bisect.bisect_left(starts, first)
                while at < len(starts) and starts[at] <= last:
                    found.append(Net((starts[at], length)))
                    at += 1
        return [net for net in found if net != subnet]

    def component(self, subnets: Iterable[Net]) -> set[Net]:
        """`subnets` and every held subnet joined to them by a chain of overlaps: what
        `routable` must see whole to decide any of them."""
        seen, todo = set(subnets), list(subnets)
        while todo:
            for other in self.overlapping(todo.pop()):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen
