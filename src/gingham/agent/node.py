"""The node's own dataplane: bridge, forwarding, masquerade, subnet.env and the CNI conflist.
Every step compares before it changes, so a restart on a node full of pods touches nothing
that is already right."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path

from gingham.agent.config import CONFLIST_NAME, AgentConfig
from gingham.dataplane import masquerade, netns, sysctl
from gingham.dataplane.bridge import ensure_bridge
from gingham.dataplane.uplink import Uplink, find_uplink
from gingham.model.files import render_conflist, render_subnet_env, write_atomically

log = logging.getLogger("gingham.agent.node")


def detect_uplink(config: AgentConfig) -> Uplink:
    with netns.iproute() as ipr:
        return find_uplink(ipr, config.iface)


def reconcile_node(config: AgentConfig, mtu: int,
                   node_ips: set[ipaddress.IPv4Address]) -> None:
    """Program the node for `config.pod_subnet` inside `config.cluster_cidr`."""
    assert config.pod_subnet is not None and config.cluster_cidr is not None
    with netns.iproute() as ipr:
        ensure_bridge(ipr, config.bridge, config.gateway, mtu)
    if sysctl.ensure("net.ipv4.ip_forward", "1"):
        log.info("enabled IPv4 forwarding")
    if masquerade.apply([config.cluster_cidr], node_ips, enabled=config.ip_masq):
        log.info("masquerade table updated (ip-masq %s)", "on" if config.ip_masq else "off")
    _write_if_changed(config.subnet_env, render_subnet_env(config.cluster_cidr, config.gateway,
                                                           mtu, config.ip_masq))
    if config.cni_conf_dir is not None:
        conflist = render_conflist(config.network_name, config.bridge, mtu, config.socket_path)
        _write_if_changed(config.cni_conf_dir / CONFLIST_NAME, json.dumps(conflist, indent=2))
    log.info("node %s: pods %s on %s, mtu %d", config.node_name, config.pod_subnet,
             config.bridge, mtu)


def _write_if_changed(path: Path, text: str) -> None:
    """A runtime watching the CNI config directory reloads on every write: write changes only."""
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    write_atomically(path, text)


class MasqueradeNodes:
    """The masquerade table's node set: the kernel is asked only when the set changes, and
    then only the changed elements are written."""

    def __init__(self, config: AgentConfig, own: ipaddress.IPv4Address) -> None:
        self.config = config
        self.own = own
        self.current: set[ipaddress.IPv4Address] = {own}

    def update(self, node_ips: set[ipaddress.IPv4Address]) -> None:
        wanted = node_ips | {self.own}
        if wanted != self.current:
            assert self.config.cluster_cidr is not None
            masquerade.apply([self.config.cluster_cidr], wanted, enabled=self.config.ip_masq)
            self.current = wanted
