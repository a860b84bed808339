"""A Calico-mode node's BIRD 2 configuration, rendered from the datastore: who it peers with
(the node-to-node mesh, route reflectors, BGPPeer resources) and what it announces (its
blocks) — what calico-node's confd renders for BIRD 1, in BIRD 2's syntax (channels).

Pure: `plan_peers` decides the sessions, `render_bird_config` writes the text. The choices
follow confd's: a kernel protocol that learns, persists and restarts gracefully; a direct
protocol that leaves out pods' interfaces (next hops resolve through it); a BGP template
with graceful restart and confd's timers; a blackhole static route per affine block;
export to peers of pool routes only (a block, not its pods' /32s, and addresses this node
holds in other nodes' blocks; never a route through a tunnel device); into the kernel,
what confd's `calico_kernel_programming` does: a VXLAN pool's routes are left to the agent
(as to felix), an IPIP pool's learned routes go through the IPIP device (BIRD 2's
`onlink`, `ifname` and `gw` where Calico's BIRD 1 fork has `krt_tunnel`), across
subnets only for CrossSubnet; in the mesh, the side with the greater address is passive,
so two nodes do not race to connect. Protocol names are calicoctl's (`Mesh_192_168_50_12`,
`Node_…`, `Global_…`), so `node status` reads the same.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from gingham.ipam.block_ipam import Pool
from gingham.model import selector
from gingham.resources.kinds import seconds
from gingham.subnet.lease import NodeInfo

DEFAULT_ASN = 64512
DEFAULT_PORT = 179
MESH, NODE, GLOBAL = "Mesh", "Node", "Global"
PEER_TYPES = {MESH: "node-to-node mesh", NODE: "node specific", GLOBAL: "global"}
TUNNELS = ("calico.ipip", "vxlan.calico", "tunl0")
NOT_DIRECT = ('"cali*"', *(f'"{name}"' for name in TUNNELS))


@dataclass(frozen=True, order=True)
class Peer:
    kind: str  # Mesh, Node or Global: the protocol name's prefix and `node status` type
    address: ipaddress.IPv4Address
    asn: int
    passive: bool = False
    rr_client: bool = False  # this node reflects routes to it
    password: str = ""
    keepalive: int | None = None
    keep_next_hop: bool = False
    restart_time: int | None = None  # graceful restart time, s (BIRD's default 120)

    @property
    def protocol(self) -> str:
        return f"{self.kind}_{str(self.address).replace('.', '_')}"


@dataclass
class BgpSetup:
    """The datastore's BGP objects, as one node reads them."""

    mesh: bool = True
    asn: int = DEFAULT_ASN  # the cluster's (BGPConfiguration default)
    port: int = DEFAULT_PORT
    peers: list[dict] = field(default_factory=list)  # BGPPeer specs
    mesh_restart_time: int | None = None  # nodeMeshMaxRestartTime, s
    bfd: bool = False  # bfdEnabled (Gingham's): BFD on every session
    log_severity: str = "Info"  # logSeverityScreen: what BIRD writes to its log


# BIRD's log classes from each logSeverityScreen up (BIRD has no "Debug" class: Debug adds
# its protocols' debug messages, as calico-node's `debug all`).
LOG_CLASSES = {"Fatal": ("fatal", "bug"), "Error": ("error", "auth", "fatal", "bug")}
LOG_CLASSES["Warning"] = ("warning", *LOG_CLASSES["Error"])
LOG_CLASSES["Info"] = ("info", "remote", *LOG_CLASSES["Warning"])
LOG_CLASSES["Debug"] = ("debug", "trace", *LOG_CLASSES["Info"])


class PeerConflict(ValueError):
    """The datastore gives one peer address two AS numbers."""


def node_asn(node: NodeInfo, setup: BgpSetup) -> int:
    return node.asn if node.asn is not None else setup.asn


def plan_peers(me: NodeInfo, nodes: Mapping[str, NodeInfo], setup: BgpSetup) -> list[Peer]:
    """Every BGP session `me` holds, once per address (a mesh session wins over the same
    node named again by a BGPPeer); PeerConflict when two give an address different AS
    numbers."""
    found: dict[ipaddress.IPv4Address, Peer] = {}
    others = [n for name, n in sorted(nodes.items()) if name != me.name]
    if setup.mesh:
        for node in others:
            found[node.public_ip] = Peer(MESH, node.public_ip, node_asn(node, setup),
                                         passive=int(me.public_ip) > int(node.public_ip),
                                         restart_time=setup.mesh_restart_time)
    for spec in setup.peers:
        options = {"password": spec.get("password", ""),
                   "keepalive": seconds(spec["keepaliveTime"]) if "keepaliveTime" in spec
                   else None,
                   "keep_next_hop": spec.get("keepOriginalNextHop", False)}
        if "peerIP" in spec:
            if _applies_to(spec, me):
                address = ipaddress.IPv4Address(spec["peerIP"])
                kind = GLOBAL if "node" not in spec and "nodeSelector" not in spec else NODE
                known = found.setdefault(address, Peer(kind, address, spec["asNumber"],
                                                       **options))
                if known.asn != spec["asNumber"]:
                    raise PeerConflict(f"peer {address} is AS {known.asn} for one "
                                       f"{'BGPPeer' if known.kind != MESH else 'mesh node'} "
                                       f"and AS {spec['asNumber']} for a BGPPeer")
            continue
        # Peering between nodes is mutual: `me` peers the nodes its selector picks, and
        # the nodes whose BGPPeer picks `me` (a route reflector and its clients).
        chosen = selector.parse(spec["peerSelector"])
        picks_me = chosen.matches(me.labels)
        for other in others:
            if other.public_ip in found:
                continue
            if (_applies_to(spec, me) and chosen.matches(other.labels)) or (
                    picks_me and _applies_to(spec, other)):
                found[other.public_ip] = Peer(
                    NODE, other.public_ip, spec.get("asNumber", node_asn(other, setup)),
                    passive=int(me.public_ip) > int(other.public_ip),
                    rr_client=bool(me.rr_cluster_id)
                    and other.rr_cluster_id != me.rr_cluster_id, **options)
    return sorted(found.values(), key=lambda p: int(p.address))


def _applies_to(spec: dict, me: NodeInfo) -> bool:
    if "node" in spec:
        return spec["node"] == me.name
    if spec.get("nodeSelector"):
        return selector.parse(spec["nodeSelector"]).matches(me.labels)
    return True  # global


def render_bird_config(me: NodeInfo, setup: BgpSetup, peers: list[Peer], pools: list[Pool],
                       own_blocks: list[ipaddress.IPv4Network], ipip_device: str) -> str:
    """`pools`: the enabled ones; `own_blocks`: this node's blocks in them."""
    asn = node_asn(me, setup)
    port = f" port {setup.port}" if setup.port != DEFAULT_PORT else ""  # listenPort
    lines = [
        f"# BIRD 2 configuration of node {me.name}, rendered by the gingham agent from the",
        "# datastore; it is rewritten on every change, so edit the datastore instead.",
        f"router id {me.public_ip};",
        f"log stderr {{ {', '.join(LOG_CLASSES[setup.log_severity])} }};  # logSeverityScreen "
        f"{setup.log_severity}",
        f"debug protocols {'all' if setup.log_severity == 'Debug' else '{ states }'};",
        "# A restarted BIRD (-R) holds the kernel's routes until its peers resend theirs,",
        "# but not for ever: one that stays away must not freeze the node's routes.",
        "graceful restart wait 20;",
        "",
        "filter gingham_kernel {",
        "  if source = RTS_DEVICE then reject;",
        *_kernel_rules(me, pools, ipip_device),
        "  accept;",
        "}",
        "",
        "filter gingham_export {",
        "  # the agent's routes through tunnels, which BIRD learns from the kernel",
        "  if defined(ifname) && (" + " || ".join(f'ifname = "{name}"' for name in TUNNELS)
        + ") then reject;",
        *(f"  if net = {block} then accept;" for block in own_blocks),
        *(f"  if net ~ {block} then reject;  # this node's pods: the block covers them"
          for block in own_blocks),
        *(f"  if net ~ {pool.cidr} then accept;" for pool in pools),
        "  reject;",
        "}",
        "",
        "protocol device { scan time 2; }",
        "",
        "# Connected routes, for resolving BGP next hops; not pods' or tunnels' interfaces.",
        "protocol direct {",
        "  ipv4;",
        f"  interface {', '.join('-' + n for n in NOT_DIRECT)}, \"*\";",
        "}",
        "",
        "protocol kernel {",
        "  learn;            # routes others put in the kernel (the pods' own /32s)",
        "  persist;          # routes stay in the kernel when BIRD stops",
        "  scan time 2;",
        "  graceful restart;",
        "  merge paths on;",
        "  metric 0;         # `ip route` shows `proto bird`, as on a Calico node",
        "  ipv4 { import all; export filter gingham_kernel; };",
        "}",
        "",
        "# Each affine block as a blackhole: announced to peers, an unheld address dropped.",
        "protocol static gingham_blocks {",
        "  ipv4;",
        *(f"  route {block} blackhole;" for block in own_blocks),
        "}",
        "",
        "template bgp gingham_peer {",
        f"  local {me.public_ip}{port} as {asn};",
        "  graceful restart;",
        *(["  bfd on;"] if setup.bfd else []),
        "  connect delay time 2;",
        "  connect retry time 5;",
        "  error wait time 5, 30;",
        "  ipv4 { import all; export filter gingham_export; gateway recursive; };",
        "}",
    ]
    if setup.bfd:
        # 100 ms x 3: a peer that vanishes is down within 0.3 s, its routes withdrawn.
        lines += ["", "protocol bfd {",
                  '  interface "*" { min rx interval 100 ms; min tx interval 100 ms; '
                  "multiplier 3; };", "}"]
    for peer in peers:
        lines += ["", f"protocol bgp {peer.protocol} from gingham_peer {{",
                  f"  description \"{PEER_TYPES[peer.kind]}\";",
                  # nodes listen where this one does; other speakers on 179
                  f"  neighbor {peer.address}{port if peer.kind != GLOBAL else ''} "
                  f"as {peer.asn};"]
        if peer.passive:
            lines.append("  passive on;")
        if peer.rr_client:
            lines += ["  rr client;", f"  rr cluster id {me.rr_cluster_id};"]
        if peer.password:
            lines.append(f"  password \"{peer.password}\";")
        if peer.keepalive is not None:
            lines.append(f"  keepalive time {peer.keepalive};")
        if peer.restart_time is not None:
            lines.append(f"  graceful restart time {peer.restart_time};")
        if peer.keep_next_hop:
            lines.append("  ipv4 { next hop keep; };")
        lines.append("}")
    return "\n".join(lines) + "\n"


def _kernel_rules(me: NodeInfo, pools: list[Pool], ipip_device: str) -> list[str]:
    subnet = ipaddress.IPv4Interface(me.ipv4_address).network if me.ipv4_address else None
    tunnel = (f'{{ onlink = true; ifname = "{ipip_device}"; gw = bgp_next_hop; }}')
    rules = []
    for pool in pools:
        ipip, vxlan = pool.spec["ipipMode"], pool.spec["vxlanMode"]
        if vxlan != "Never":
            rules.append(f"  if net ~ {pool.cidr} then reject;  # {pool.name}: VXLAN, the "
                         "agent's routes")
        elif ipip == "Always" or (ipip == "CrossSubnet" and subnet is None):
            rules.append(f"  if net ~ {pool.cidr} then {{  # {pool.name}: IPIP")
            rules += [f"    if source = RTS_BGP then {tunnel}", "    accept;", "  }"]
        elif ipip == "CrossSubnet":
            rules.append(f"  if net ~ {pool.cidr} then {{  # {pool.name}: IPIP across subnets")
            rules += [f"    if source = RTS_BGP && !(bgp_next_hop ~ {subnet}) then {tunnel}",
                      "    accept;", "  }"]
    return rules
