"""Routes Gingham owns, reconciled: desired set vs what the kernel has, apply the difference.

Ownership is the route protocol number, one per owner: Flannel's backends 71 (`ip route
show proto 71` lists exactly their routes), Calico mode's block routes 80 (felix's number).
A route to the same destination that another owner installed is never replaced or removed;
it is reported instead.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from gingham.dataplane import rtmsg
from gingham.dataplane.netns import Rtnl

GINGHAM_PROTO = 71  # free in /etc/iproute2/rt_protos; `ip route show proto 71`
CALICO_PROTO = 80  # what felix marks its routes with
MAIN_TABLE = 254
RTNH_F_ONLINK = 4  # rtm_flags


class RouteTaken(RuntimeError):
    """A route Gingham was to add already exists: someone else's, or one a full resync must
    sort out."""


@dataclass(frozen=True, order=True)
class RouteIntent:
    dst: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None
    oif: int
    onlink: bool = False
    blackhole: bool = False  # no device: drop what matches (a node's own Calico blocks)


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


def read_routes(rtnl: Rtnl, proto: int = GINGHAM_PROTO
                ) -> tuple[set[RouteIntent], set[ipaddress.IPv4Network]]:
    """The owner's (`proto`) IPv4 main-table routes, and the destinations of everyone
    else's."""
    owned, foreign = set(), set()
    for route in rtmsg.dump_routes(rtnl):
        if route.table != MAIN_TABLE:
            continue
        if route.proto == proto:
            owned.add(RouteIntent(route.dst, route.gateway, route.oif or 0,
                                  bool(route.flags & RTNH_F_ONLINK),
                                  route.type == rtmsg.RTN_BLACKHOLE))
        elif route.type in (rtmsg.RTN_UNICAST, rtmsg.RTN_BLACKHOLE):
            foreign.add(route.dst)  # local/broadcast entries live in other tables
    return owned, foreign


def apply_routes(rtnl: Rtnl, desired: set[RouteIntent], proto: int = GINGHAM_PROTO
                 ) -> RouteDiff:
    owned, foreign = read_routes(rtnl, proto)
    diff = diff_routes(desired, owned, foreign)
    rtmsg.send(rtnl, [route_message(False, r, proto=proto) for r in diff.to_remove]
               + [route_message(True, r, proto=proto) for r in diff.to_set],
               tolerated=rtmsg.GONE)
    return diff


def route_message(add: bool, route: RouteIntent, new: bool = False,
                  proto: int = GINGHAM_PROTO) -> rtmsg.Message:
    """Install or replace (delete) the owner's route. `new`: the destination is not known to
    hold a route of the owner's, so it is only added (EEXIST if one is there). A delete
    names the protocol, so a route someone else holds there is never the one deleted."""
    return rtmsg.route_message(add, route.dst, route.gateway, route.oif, route.onlink,
                               MAIN_TABLE, proto, exclusive=new, blackhole=route.blackhole)


def taken(results: list[int]) -> None:
    """Raise RouteTaken if an exclusive add of a batch met a route already there."""
    if errno.EEXIST in results:
        raise RouteTaken("a route to add exists already")
