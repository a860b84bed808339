"""Routes Gingham owns, reconciled: desired set vs what the kernel has, apply the difference.

Ownership is the route protocol number: `ip route show proto 71` lists exactly Gingham's
routes. A route to the same destination that someone else installed is never replaced or
removed; it is reported instead.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

GINGHAM_PROTO = 71  # free in /etc/iproute2/rt_protos; `ip route show proto 71`
MAIN_TABLE = 254
RTNH_F_ONLINK = 4  # pyroute2 ignores onlink=True; the flag must be passed as flags=4
ESRCH = 3


class RouteTaken(RuntimeError):
    """A route Gingham was to add already exists: someone else's, or one a full resync must
    sort out."""


@dataclass(frozen=True, order=True)
class RouteIntent:
    dst: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None
    oif: int
    onlink: bool = False


@dataclass
class RouteDiff:
    to_set: list[RouteIntent]
    to_remove: list[RouteIntent]
    blocked: list[ipaddress.IPv4Network]  # desired, but a foreign route holds the destination


def diff_routes(desired: set[RouteIntent], owned: set[RouteIntent],
                foreign: set[ipaddress.IPv4Network]) -> RouteDiff:
    want = {r.dst: r for r in desired if r.dst not in foreign}
    return RouteDiff(
        to_set=sorted(r for r in want.values() if r not in owned),
        to_remove=sorted(r for r in owned if r.dst not in want),
        blocked=sorted(r.dst for r in desired if r.dst in foreign),
    )


def _dst(route) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{route.get_attr('RTA_DST') or '0.0.0.0'}/{route['dst_len']}")


def read_routes(ipr: IPRoute) -> tuple[set[RouteIntent], set[ipaddress.IPv4Network]]:
    """Gingham's IPv4 main-table routes, and the destinations of everyone else's."""
    owned, foreign = set(), set()
    for route in ipr.get_routes(family=2, table=MAIN_TABLE):
        if route["proto"] == GINGHAM_PROTO:
            gateway = route.get_attr("RTA_GATEWAY")
            owned.add(RouteIntent(_dst(route),
                                  ipaddress.IPv4Address(gateway) if gateway else None,
                                  route.get_attr("RTA_OIF"), bool(route["flags"] & RTNH_F_ONLINK)))
        elif route["type"] == 1:  # unicast; local/broadcast entries live in other tables
            foreign.add(_dst(route))
    return owned, foreign


def apply_routes(ipr: IPRoute, desired: set[RouteIntent]) -> RouteDiff:
    owned, foreign = read_routes(ipr)
    diff = diff_routes(desired, owned, foreign)
    for route in diff.to_remove:
        remove_route(ipr, route)
    for route in diff.to_set:
        set_route(ipr, route)
    return diff


def remove_route(ipr: IPRoute, route: RouteIntent) -> None:
    """Delete Gingham's route to route.dst; the kernel matches the protocol, so a route
    someone else holds there is never the one deleted."""
    try:
        ipr.route("del", dst=str(route.dst), table=MAIN_TABLE, proto=GINGHAM_PROTO)
    except NetlinkError as err:
        if err.code != ESRCH:
            raise


def set_route(ipr: IPRoute, route: RouteIntent, new: bool = False) -> None:
    """Install or replace Gingham's route. `new`: the destination is not known to hold a
    route of Gingham's, so it is only added, and RouteTaken says one is there already."""
    spec: dict = {"dst": str(route.dst), "oif": route.oif, "table": MAIN_TABLE,
                  "proto": GINGHAM_PROTO}
    if route.gateway is not None:
        spec["gateway"] = str(route.gateway)
    if route.onlink:
        spec["flags"] = RTNH_F_ONLINK
    try:
        ipr.route("add" if new else "replace", **spec)
    except NetlinkError as err:
        if err.code == errno.EEXIST:
            raise RouteTaken(f"a route to {route.dst} exists already") from err
        raise
