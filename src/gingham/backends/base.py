"""The backend contract: what a lease says about this node, and what to do about the others.

A backend is pure where it can be: `plan` turns leases into intents and problems, with no
I/O, so it is unit-tested; `apply` makes the kernel match the plan and is safe to rerun.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pyroute2 import IPRoute

from gingham.dataplane import netns, tunl0
from gingham.dataplane.routes import RouteIntent, apply_routes
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

    def plan(self, own: Lease, leases: list[Lease]) -> BackendPlan: ...

    def apply(self, plan: BackendPlan) -> list[str]:
        """Make the kernel match the plan; returns problems met on the way."""
        ...

    def teardown(self) -> None:
        """Remove everything this backend owns (switching to another backend)."""
        ...


def program_routes(ipr: IPRoute, routes: set[RouteIntent]) -> list[str]:
    """Make Gingham's routes exactly `routes`; a destination someone else's route already
    holds is left alone and returned as a problem."""
    diff = apply_routes(ipr, routes)
    return [f"route to {dst} exists and is not Gingham's; left alone" for dst in diff.blocked]


def clear_earlier_tunnels(ipr: IPRoute, keep_vtep: str | None = None) -> None:
    """No tunnel of an earlier backend may linger, even one switched away from while the
    agent was down (the seeds' manual `ip link delete flannel.1`, done here): Gingham's
    VTEPs but `keep_vtep`, and its address on tunl0. A userspace tunnel's TUN device
    needs nothing: it goes when the agent that held it does."""
    remove_vteps(ipr, keep=keep_vtep)
    tunl0.release(ipr)


class RoutesOnlyBackend:
    """A backend whose whole dataplane, once set up, is its `proto 71` routes."""

    def apply(self, plan: BackendPlan) -> list[str]:
        with netns.iproute() as ipr:
            return program_routes(ipr, plan.routes)

    def teardown(self) -> None:
        with netns.iproute() as ipr:
            apply_routes(ipr, set())
