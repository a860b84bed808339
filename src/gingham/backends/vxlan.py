"""vxlan: pod frames wrapped in UDP between VTEPs (`flannel.<VNI>`), so nodes need only reach
each other at L3. Per remote node, exactly as Flannel programs it:

    10.244.5.0/24 via 10.244.5.0 dev flannel.1 onlink
    neigh 10.244.5.0 lladdr <remote VTEP MAC> PERMANENT dev flannel.1
    fdb <remote VTEP MAC> dst <remote node IP> self permanent dev flannel.1

With DirectRouting, nodes on this node's own subnet get a host-gw route instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gingham.backends.base import (
    BackendPlan,
    LeaseBackend,
    clear_earlier_tunnels,
    program_routes,
    route_changes,
    send_changes,
)
from gingham.backends.hostgw import direct_route
from gingham.backends.options import BackendConfigError, check_known, int_option
from gingham.dataplane import netns, rtmsg
from gingham.dataplane.netns import Rtnl
from gingham.dataplane.routes import RouteIntent, apply_routes
from gingham.dataplane.uplink import Uplink
from gingham.dataplane.vxlan import (
    FdbIntent,
    NeighIntent,
    VtepSpec,
    apply_fdb,
    apply_neighbours,
    ensure_vtep,
    fdb_message,
    neigh_message,
    remove_vteps,
    stable_mac,
)
from gingham.model.network import BackendConfig
from gingham.subnet.lease import Lease

TYPE = "vxlan"
DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # Flannel's (the kernel's legacy Linux VXLAN port), not IANA's 4789
OVERHEAD = 50  # outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8
MAX_VNI = (1 << 24) - 1
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# GBP and MTU are Flannel's keys: accepted, but Gingham does not act on them.
OPTIONS = ("VNI", "Port", "DirectRouting", "GBP", "MTU")


@dataclass(frozen=True)
class VxlanOptions:
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    direct_routing: bool = False

    @classmethod
    def parse(cls, config: BackendConfig) -> VxlanOptions:
        check_known(config, OPTIONS)
        direct = config.options.get("DirectRouting", False)
        if not isinstance(direct, bool):
            raise BackendConfigError(f"vxlan DirectRouting {direct!r} is not true/false")
        options = cls(int_option(config, "VNI", DEFAULT_VNI, 0, MAX_VNI),
                      int_option(config, "Port", DEFAULT_PORT, 1, 65535), direct)
        # Here, not when the VTEP is made: `config set` must refuse what no agent can run.
        if len(options.device) > 15:
            raise BackendConfigError(f"VNI {options.vni} makes the device name "
                                     f"{options.device} longer than 15 characters")
        return options

    @property
    def device(self) -> str:
        return f"flannel.{self.vni}"


class VxlanBackend(LeaseBackend):
    type = TYPE

    def __init__(self, options: VxlanOptions, uplink: Uplink, node_name: str) -> None:
        self.options = options
        self.uplink = uplink
        self.device = options.device
        self.mac = stable_mac(f"gingham-vtep/{node_name}/{options.vni}")
        self.index: int | None = None

    def mtu(self, uplink: Uplink) -> int:
        return uplink.mtu - OVERHEAD

    def lease_data(self) -> dict:
        return {"VNI": self.options.vni, "VtepMAC": self.mac}

    def setup(self, own: Lease) -> None:
        spec = VtepSpec(self.device, self.options.vni, self.options.port,
                        self.uplink.address.ip, self.uplink.index, self.mac,
                        self.mtu(self.uplink), own.subnet.network_address)
        with netns.iproute() as ipr:
            clear_earlier_tunnels(ipr, keep_vtep=self.device)  # e.g. another VNI's VTEP
            self.index = ensure_vtep(ipr, spec)

    def plan_lease(self, own: Lease, lease: Lease) -> BackendPlan:
        assert self.index is not None, "setup() first"
        refused = self.refused(lease)
        if refused is not None:
            return refused
        if self.options.direct_routing and lease.attrs.public_ip in self.uplink.address.network:
            return BackendPlan(routes={direct_route(lease, self.uplink)})
        data = lease.attrs.backend_data
        mac = str(data.get("VtepMAC", "")).lower()
        if not MAC.match(mac) or data.get("VNI", DEFAULT_VNI) != self.options.vni:
            return BackendPlan(problems=[f"vxlan: lease {lease.subnet} of "
                                         f"{lease.attrs.node_name} has no usable VtepMAC/VNI "
                                         f"({data}); not routed"])
        gateway = lease.subnet.network_address
        return BackendPlan(routes={RouteIntent(lease.subnet, gateway, self.index, onlink=True)},
                           neighbours={NeighIntent(gateway, mac)},
                           fdb={FdbIntent(mac, lease.attrs.public_ip)})

    def apply(self, plan: BackendPlan) -> list[str]:
        assert self.index is not None
        with rtmsg.rtnl() as rtnl:
            # Neighbour and FDB first: a route must never point at a peer not yet known.
            apply_neighbours(rtnl, self.index, plan.neighbours)
            apply_fdb(rtnl, self.index, plan.fdb)
            return program_routes(rtnl, plan.routes)

    def apply_changes(self, rtnl: Rtnl, added: BackendPlan, removed: BackendPlan) -> None:
        index = self.index
        assert index is not None
        # As in apply: a route never points at a peer the VTEP does not know yet. An entry
        # replaced under the same key (IP, MAC) is not removed after.
        kept_ips, kept_macs = {n.ip for n in added.neighbours}, {f.mac for f in added.fdb}
        send_changes(rtnl, [
            *(neigh_message(True, index, n) for n in sorted(added.neighbours)),
            *(fdb_message(True, index, f) for f in sorted(added.fdb)),
            *route_changes(added.routes, removed.routes),
            *(neigh_message(False, index, n) for n in sorted(removed.neighbours)
              if n.ip not in kept_ips),
            *(fdb_message(False, index, f) for f in sorted(removed.fdb)
              if f.mac not in kept_macs)])

    def teardown(self) -> None:
        with rtmsg.rtnl() as rtnl:
            apply_routes(rtnl, set())
        with netns.iproute() as ipr:
            remove_vteps(ipr)
