"""The node's own dataplane, reconciled at agent start: bridge, forwarding, masquerade,
subnet.env and the CNI conflist. Every step compares before it changes, so a restart on a
node full of pods touches nothing that is already right."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from gingham.agent.config import CONFLIST_NAME, AgentConfig
from gingham.dataplane import masquerade, netns, sysctl
from gingham.dataplane.bridge import ensure_bridge
from gingham.dataplane.uplink import Uplink, find_uplink
from gingham.model.files import render_conflist, render_subnet_env, write_atomically

log = logging.getLogger("gingham.agent.node")


@dataclass(frozen=True)
class NodeFacts:
    uplink: Uplink
    mtu: int


def reconcile_node(config: AgentConfig) -> NodeFacts:
    with netns.iproute() as ipr:
        uplink = find_uplink(ipr, config.iface)
        mtu = config.mtu or uplink.mtu
        ensure_bridge(ipr, config.bridge, config.gateway, mtu)
    if sysctl.ensure("net.ipv4.ip_forward", "1"):
        log.info("enabled IPv4 forwarding")
    public_ip = config.public_ip or uplink.address.ip
    masquerade.apply([config.cluster_cidr], [public_ip], enabled=config.ip_masq)
    write_atomically(
        config.subnet_env,
        render_subnet_env(config.cluster_cidr, config.gateway, mtu, config.ip_masq),
    )
    if config.cni_conf_dir is not None:
        conflist = render_conflist(config.network_name, config.bridge, mtu, config.socket_path)
        write_atomically(config.cni_conf_dir / CONFLIST_NAME, json.dumps(conflist, indent=2))
    log.info("node %s: subnet %s on %s, uplink %s (%s), mtu %d", config.node_name,
             config.pod_subnet, config.bridge, uplink.name, public_ip, mtu)
    return NodeFacts(uplink=uplink, mtu=mtu)
