"""Leases → this node's paths to the other nodes, through the backend.

The full path plans every lease and has the backend read the kernel back and apply the
difference: it runs first, after a relist, after a failure and every RESYNC_INTERVAL. The
change path plans only the leases a change touched (with those they overlap) and hands
the backend just what was added and removed, trusting that the kernel holds what was
applied before: no dump, so a change costs the same at 10 nodes or 5000. Intents are
counted, so one shared by two leases goes only with the last of them.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable

from gingham.agent.lease_picture import LeasePicture
from gingham.agent.status import StatusFile
from gingham.backends.base import Backend, BackendPlan
from gingham.dataplane import rtmsg
from gingham.dataplane.netns import Rtnl
from gingham.dataplane.routes import RouteIntent, RouteTaken, read_routes
from gingham.subnet.kinds import LEASES
from gingham.subnet.lease import Lease
from gingham.subnet.space import refusals

log = logging.getLogger("gingham.agent.routes")
Net = ipaddress.IPv4Network
EMPTY = BackendPlan()


class PlanTally:
    """How many programmed leases need each intent."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.routes = 0  # intents of kind "route" held, kept as they come and go

    @staticmethod
    def intents(plan: BackendPlan) -> list[tuple[str, object]]:
        return [*(("route", r) for r in plan.routes), *(("neigh", n) for n in plan.neighbours),
                *(("fdb", f) for f in plan.fdb), *(("peer", p) for p in plan.peers.items())]

    def change(self, old: BackendPlan, new: BackendPlan, before: dict) -> None:
        """Count `old` out and `new` in, noting in `before` whether each intent touched was
        needed before the batch began."""
        gone, came = set(self.intents(old)), set(self.intents(new))
        for intent, step in [*((i, -1) for i in gone - came), *((i, 1) for i in came - gone)]:
            held = self.counts[intent] > 0
            before.setdefault(intent, held)
            self.counts[intent] += step
            if self.counts[intent] <= 0:
                del self.counts[intent]
            if intent[0] == "route":
                self.routes += (intent in self.counts) - held

    def delta(self, before: dict) -> tuple[BackendPlan, BackendPlan]:
        added, removed = BackendPlan(), BackendPlan()
        for intent, was in before.items():
            now = intent in self.counts
            if now != was:
                _put(added if now else removed, intent)
        return added, removed


def _put(plan: BackendPlan, intent: tuple[str, object]) -> None:
    kind, value = intent
    if kind == "route":
        plan.routes.add(value)  # type: ignore[arg-type]
    elif kind == "neigh":
        plan.neighbours.add(value)  # type: ignore[arg-type]
    elif kind == "fdb":
        plan.fdb.add(value)  # type: ignore[arg-type]
    else:
        subnet, address = value  # type: ignore[misc]
        plan.peers[subnet] = address


def _paths(plan: BackendPlan) -> BackendPlan:
    return BackendPlan(plan.routes, plan.neighbours, plan.fdb, plan.peers)


class LeaseRoutes:
    name = "routes"
    kinds = (LEASES,)

    def __init__(self, backend: Backend, own: Callable[[], Lease], status: StatusFile,
                 picture: LeasePicture) -> None:
        self.backend = backend
        self.own = own
        self.status = status
        self.picture = picture
        self.full = True
        self.changed: set[Net] = set()
        self.programmed: dict[Net, BackendPlan] = {}  # per routed lease, its paths
        self.refused: dict[Net, list[str]] = {}  # per lease, why it has no (full) path
        self.tally = PlanTally()
        self.held: set[RouteIntent] = set()  # routes kept for leases that do not decode
        self.kernel_problems: list[str] = []
        self.reported = True  # whether the problems returned last are still the problems
        self._rtnl: Rtnl | None = None

    # -- folding changes in (no I/O) ------------------------------------------------------

    def on_snapshot(self, kind: str, objects: dict[str, object]) -> None:
        self.picture.replace(objects)
        self.full = True

    def on_update(self, kind: str, key: str, obj: object | None) -> None:
        subnet = self.picture.change(key, obj)
        if subnet is not None:
            self.changed.add(subnet)
            if any(route.dst == subnet for route in self.held):
                self.full = True  # a held route's key changed: the full path decides
        self.reported = False

    def use(self, backend: Backend) -> None:
        """Run `backend` from now on (a switch): everything is planned anew."""
        self.backend = backend
        self.full = True

    def resync(self) -> None:
        self.full = True

    def dirty(self) -> bool:
        return self.picture.listed and (self.full or bool(self.changed) or not self.reported)

    # -- applying --------------------------------------------------------------------------

    def apply(self) -> list[str]:
        self.reported = True
        if self.full or self.kernel_problems:
            # Routes someone else holds are sorted out only by reading the kernel.
            self._apply_full()
        elif self.changed:
            try:
                self._apply_changes()
            except RouteTaken as err:
                log.info("%s; reading the kernel back", err)
                self._apply_full()
            except Exception:
                self.full = True  # what reached the kernel is unknown: the retry reads it
                self._close()
                raise
        leases = self.picture.leases
        self.status.update(routes=self.tally.routes + len(self.held),
                           peers=len(leases) - (self.own().subnet in leases))
        return self.problems()

    def problems(self) -> list[str]:
        return ([p for ps in self.refused.values() for p in ps] + self.kernel_problems
                + self.picture.problems())

    def _apply_full(self) -> None:
        own = self.own()
        leases = self.picture.leases
        refused = refusals(own.subnet, leases.values())
        plans = {subnet: self.backend.plan_lease(own, lease) for subnet, lease in leases.items()
                 if subnet != own.subnet and subnet not in refused}
        plan = BackendPlan()
        for each in plans.values():
            plan.merge(each)
        self.held = self._held_routes()
        plan.routes |= self.held
        self.kernel_problems = self.backend.apply(plan)
        self.programmed = {s: _paths(p) for s, p in plans.items()}
        self.refused = {s: [why] for s, why in refused.items()}
        self.refused.update({s: p.problems for s, p in plans.items() if p.problems})
        self.tally = PlanTally()
        for paths in self.programmed.values():
            self.tally.change(EMPTY, paths, {})
        self.full = False
        self.changed.clear()

    def _held_routes(self) -> set[RouteIntent]:
        """Routes already programmed to subnets whose lease does not decode and that this
        process never saw a good value for (it has just started): left as they are."""
        subnets = {s for s in map(self.picture.subnet, self.picture.bad)
                   if s is not None and s not in self.picture.leases}
        if not subnets:
            return set()
        owned, _ = read_routes(self._netlink())
        return {route for route in owned if route.dst in subnets}

    def _apply_changes(self) -> None:
        own = self.own()
        leases = self.picture.leases
        group = self.picture.index.component(self.changed)
        refused = refusals(own.subnet, [leases[s] for s in group if s in leases])
        before: dict = {}
        for subnet in group:
            lease = leases.get(subnet)
            plan = EMPTY if lease is None or subnet == own.subnet or subnet in refused \
                else self.backend.plan_lease(own, lease)
            self.tally.change(self.programmed.pop(subnet, EMPTY), _paths(plan), before)
            if plan.routes or plan.neighbours or plan.fdb or plan.peers:
                self.programmed[subnet] = _paths(plan)
            problems = ([refused[subnet]] if subnet in refused else []) + plan.problems
            if problems:
                self.refused[subnet] = problems
            else:
                self.refused.pop(subnet, None)
        self.changed.clear()
        added, removed = self.tally.delta(before)
        self.backend.apply_changes(self._netlink(), added, removed)

    def _netlink(self) -> Rtnl:
        if self._rtnl is None:
            self._rtnl = rtmsg.rtnl()
        return self._rtnl

    def _close(self) -> None:
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None

    def node_gateways(self) -> set[ipaddress.IPv4Address]:
        """Next hops of held routes: nodes the leases no longer name but still reach."""
        return {route.gateway for route in self.held if route.gateway is not None}
