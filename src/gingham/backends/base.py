"""The backend contract: what a lease says about this node, and what to do about the others.

A backend is pure where it can be: `plan` turns leases into intents and problems, with no
I/O, so it is unit-tested; `apply` makes the kernel match the plan and is safe to rerun.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Protocol

from pyroute2 import IPRoute

from gingham.dataplane import rtmsg, tunl0
from gingham.dataplane.netns import Rtnl
from gingham.dataplane.routes import RouteIntent, apply_routes, route_message, taken
from gingham.dataplane.uplink import Uplink
from gingham.dataplane.vxlan import FdbIntent, NeighIntent, remove_vteps
from gingham.subnet.lease import Lease


@dataclass
class BackendPlan:
    routes: set[RouteIntent] = field(default_factory=set)
    neighbours: set[NeighIntent] = field(default_factory=set)
    fdb: set[FdbIntent] = field(default_factory=set)
    peers: dict = field(default_factory=dict)  # subnet -> node address, for userspace tunnels
    problems: list[str] = field(default_factory=list)  # why some lease gets no path

    def merge(self, other: BackendPlan) -> None:
        self.routes |= other.routes
        self.neighbours |= other.neighbours
        self.fdb |= other.fdb
        self.peers.update(other.peers)
        self.problems += other.problems


class Backend(Protocol):
    type: str

    def mtu(self, uplink: Uplink) -> int:
        """The pod MTU this backend leaves room for."""
        ...

    def lease_data(self) -> dict:
        """What other nodes need to reach this one (BackendData in the lease)."""
        ...

    def setup(self, own: Lease) -> None:
        """Make this node's own end (e.g. its tunnel device), once the lease is known."""
        ...

    def plan_lease(self, own: Lease, lease: Lease) -> BackendPlan:
        """What reaching one other node's lease takes (pure)."""
        ...

    def plan(self, own: Lease, leases: list[Lease]) -> BackendPlan: ...

    def apply(self, plan: BackendPlan) -> list[str]:
        """Make the kernel match the plan, reading back what it has; returns problems met
        on the way. The resync path: always right, costs what the cluster's size costs."""
        ...

    def apply_changes(self, rtnl: Rtnl, added: BackendPlan, removed: BackendPlan) -> None:
        """Add what `added` has and remove what `removed` has, trusting that the kernel holds
        what was applied before: no dump, so a change costs the same at any cluster size.
        Raises RouteTaken if a route to add is there already (a resync sorts it out)."""
        ...

    def teardown(self) -> None:
        """Remove everything this backend owns (switching to another backend)."""
        ...


class LeaseBackend:
    """What every backend shares: a plan is the union of per-lease plans, and routes are
    changed by destination (a replaced route is never removed and re-added)."""

    type = ""

    def plan_lease(self, own: Lease, lease: Lease) -> BackendPlan:
        raise NotImplementedError

    def plan(self, own: Lease, leases: list[Lease]) -> BackendPlan:
        plan = BackendPlan()
        for lease in leases:
            if lease.subnet != own.subnet:
                plan.merge(self.plan_lease(own, lease))
        return plan

    def apply_changes(self, rtnl: Rtnl, added: BackendPlan, removed: BackendPlan) -> None:
        send_changes(rtnl, route_changes(added.routes, removed.routes))

    def refused(self, lease: Lease) -> BackendPlan | None:
        """The plan for a lease of another backend's type: none, with the reason."""
        if lease.attrs.backend_type == self.type:
            return None
        return BackendPlan(problems=[f"{self.type}: lease {lease.subnet} of "
                                     f"{lease.attrs.node_name} uses backend "
                                     f"{lease.attrs.backend_type}; not routed"])


def route_changes(added: set[RouteIntent], removed: set[RouteIntent]) -> list[rtmsg.Message]:
    """A destination in both is replaced in place; one only in `added` is new to Gingham."""
    had, keeps = {r.dst for r in removed}, {r.dst for r in added}
    return ([route_message(False, r) for r in sorted(removed) if r.dst not in keeps]
            + [route_message(True, r, new=r.dst not in had) for r in sorted(added)])


def send_changes(rtnl: Rtnl, messages: list[rtmsg.Message]) -> None:
    """One batch, in order; deleting what is gone already is fine, adding a route that is
    there already raises RouteTaken once the rest has run."""
    taken(rtmsg.send(rtnl, messages, tolerated=rtmsg.GONE | {errno.EEXIST}))


def program_routes(rtnl: Rtnl, routes: set[RouteIntent]) -> list[str]:
    """Make Gingham's routes exactly `routes`; a destination someone else's route already
    holds is left alone and returned as a problem."""
    diff = apply_routes(rtnl, routes)
    return [f"route to {dst} exists and is not Gingham's; left alone" for dst in diff.blocked]


def clear_earlier_tunnels(ipr: IPRoute, keep_vtep: str | None = None) -> None:
    """No tunnel of an earlier backend may linger, even one switched away from while the
    agent was down (the seeds' manual `ip link delete flannel.1`, done here): Gingham's
    VTEPs but `keep_vtep`, and its address on tunl0. A userspace tunnel's TUN device
    needs nothing: it goes when the agent that held it does."""
    remove_vteps(ipr, keep=keep_vtep)
    tunl0.release(ipr)


class RoutesOnlyBackend(LeaseBackend):
    """A backend whose whole dataplane, once set up, is its `proto 71` routes."""

    def apply(self, plan: BackendPlan) -> list[str]:
        with rtmsg.rtnl() as rtnl:
            return program_routes(rtnl, plan.routes)

    def teardown(self) -> None:
        with rtmsg.rtnl() as rtnl:
            apply_routes(rtnl, set())
