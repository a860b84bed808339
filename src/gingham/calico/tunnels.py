"""The devices a Calico-mode node's encapsulated routes go through, each made when a pool
wants it and removed, with everything of it, when none does:

- `vxlan.calico` (VNI 4096, port 4789), its tunnel address published with its MAC in the
  node record, so the other nodes can program their neighbour and FDB entries;
- IPIP through the kernel's `tunl0` where the kernel has IPIP, else the userspace path:
  the TUN device `calico.ipip` and the engine that sends genuine IPIP from a raw socket
  (backends/tunnel_engine.py), told where each block's packets go.

Each takes a tunnel address from the node's own block (IPAM handles
`vxlan-tunnel-addr-<node>` / `ipip-tunnel-addr-<node>`, as calico-node does).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable, Mapping

from gingham.backends.ipip import kernel_has_ipip
from gingham.backends.tunnel_engine import IpipTransport, TunnelEngine
from gingham.calico.route_plan import VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI
from gingham.dataplane import netns, tunl0
from gingham.dataplane.bridge import link_index
from gingham.dataplane.tun import open_tun
from gingham.dataplane.uplink import Uplink
from gingham.dataplane.vxlan import VtepSpec, ensure_vtep, stable_mac
from gingham.ipam.block_ipam import BlockIpam
from gingham.ipam.blocks import Block
from gingham.subnet.lease import NodeInfo
from gingham.subnet.registry import SubnetRegistry

log = logging.getLogger("gingham.calico.tunnels")
VXLAN_OVERHEAD, IPIP_OVERHEAD = 50, 20
IPIP_TUN = "calico.ipip"

Blocks = Mapping[ipaddress.IPv4Network, Block]


@functools.cache
def ipip_device() -> str:
    """The device IPIP routes go through on this node (the kernel's modules stay put)."""
    return tunl0.TUNL0 if kernel_has_ipip() else IPIP_TUN


class TunnelAddress:
    """The node's address for one tunnel, held in IPAM under its own handle. Once taken it
    is remembered: the blocks the manager holds show it only after the informer has
    delivered the write, and taking it again meanwhile would take a second one."""

    def __init__(self, ipam: BlockIpam, node: str, handle: str,
                 labels: Callable[[], Mapping[str, str]]) -> None:
        self.ipam, self.node, self.handle, self.labels = ipam, node, handle, labels
        self.current: ipaddress.IPv4Address | None = None

    def held(self, blocks: Blocks) -> ipaddress.IPv4Address | None:
        return next((address for block in blocks.values()
                     for address, attrs in block.holders()
                     if attrs.get("handle") == self.handle), None)

    def take(self, blocks: Blocks) -> ipaddress.IPv4Address:
        if self.current is None:
            self.current = self.held(blocks) or self.ipam.assign(self.node, self.labels(), {
                "handle": self.handle, "namespace": "", "pod": "", "node": self.node}).address
        return self.current

    def give_back(self, blocks: Blocks) -> None:
        if self.current is not None or self.held(blocks) is not None:
            self.ipam.release(self.handle)  # every address of the handle
        self.current = None


class VxlanTunnel:
    def __init__(self, node: str, uplink: Uplink, ipam: BlockIpam,
                 labels: Callable[[], Mapping[str, str]]) -> None:
        self.node, self.uplink = node, uplink
        self.address = TunnelAddress(ipam, node, f"vxlan-tunnel-addr-{node}", labels)
        self.registry = SubnetRegistry(ipam.store, ipam.prefix)
        self.mac = stable_mac(f"calico-vxlan/{node}")

    def up(self, blocks: Blocks, me: NodeInfo | None) -> int:
        address = self.address.take(blocks)
        spec = VtepSpec(VXLAN_DEVICE, VXLAN_VNI, VXLAN_PORT, self.uplink.address.ip,
                        self.uplink.index, self.mac, self.uplink.mtu - VXLAN_OVERHEAD, address)
        with netns.iproute() as ipr:
            index = ensure_vtep(ipr, spec)
        self.publish(blocks, me)
        return index

    def publish(self, blocks: Blocks, me: NodeInfo | None) -> None:
        """The node record names this node's endpoint (again, if something removed it,
        e.g. a restarted agent's first node record)."""
        address = str(self.address.take(blocks))
        if me is None or (me.vxlan_address, me.vxlan_mac) != (address, self.mac):
            self.registry.publish_vxlan(self.node, address, self.mac)
            log.info("VXLAN tunnel endpoint %s (%s) on %s", address, self.mac, VXLAN_DEVICE)

    def down(self, blocks: Blocks, me: NodeInfo | None) -> None:
        with netns.iproute() as ipr:
            index = link_index(ipr, VXLAN_DEVICE)
            if index is not None:
                ipr.link("del", index=index)
                log.info("no pool uses VXLAN: removed %s", VXLAN_DEVICE)
        self.address.give_back(blocks)
        if me is not None and me.vxlan_address:
            self.registry.publish_vxlan(self.node, "", "")


class IpipTunnel:
    def __init__(self, node: str, uplink: Uplink, ipam: BlockIpam,
                 labels: Callable[[], Mapping[str, str]]) -> None:
        self.uplink = uplink
        self.address = TunnelAddress(ipam, node, f"ipip-tunnel-addr-{node}", labels)
        self.engine: TunnelEngine | None = None  # the userspace path's, while it runs

    @property
    def mtu(self) -> int:
        return self.uplink.mtu - IPIP_OVERHEAD

    def up(self, blocks: Blocks) -> int:
        address = self.address.take(blocks)
        with netns.iproute() as ipr:
            if kernel_has_ipip():
                return tunl0.claim(ipr, address, self.mtu)
            if self.engine is None:
                transport = IpipTransport(self.uplink.mtu)
                self.engine = TunnelEngine(open_tun(IPIP_TUN), transport)
                self.engine.start()
                log.info("IPIP through the userspace path (%s): this kernel has none", IPIP_TUN)
            index = link_index(ipr, IPIP_TUN)
            assert index is not None
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}
            if str(address) not in have:
                ipr.addr("add", index=index, address=str(address), prefixlen=32)
            ipr.link("set", index=index, mtu=self.mtu, state="up")
            return index

    def steer(self, peers: dict[ipaddress.IPv4Network, ipaddress.IPv4Address]) -> None:
        """Tell the userspace engine which node each network's packets go to (before the
        routes send any there); the kernel's tunl0 takes it from the routes."""
        if self.engine is not None:
            self.engine.update(peers)

    def down(self, blocks: Blocks) -> None:
        if self.engine is not None:
            self.engine.stop()  # closing the TUN fd removes the device, and its routes
            self.engine = None
        else:
            with netns.iproute() as ipr:
                tunl0.release(ipr)
        self.address.give_back(blocks)
