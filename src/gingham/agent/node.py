"""The node's own dataplane: bridge, forwarding, masquerade, subnet.env and the CNI conflist.
Every step compares before it changes, so a restart on a node full of pods touches nothing
that is already right."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from pathlib import Path

from gingham.agent.config import CONFLIST_NAME, AgentConfig
from gingham.agent.lease_picture import LeasePicture
from gingham.dataplane import masquerade, netns, nft, sysctl
from gingham.dataplane.bridge import ensure_bridge
from gingham.dataplane.uplink import Uplink, find_uplink
from gingham.model.files import render_conflist, render_subnet_env, write_atomically
from gingham.subnet.kinds import LEASES

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
    """The masquerade table's node set (pod traffic to a node is never masqueraded), as a
    manager of the reconcile loop: fed by the lease picture, it writes only the addresses
    that came or went, and lists the table (masquerade.apply) only on a full resync or
    when a change did not apply."""

    name = "masquerade-nodes"
    kinds = (LEASES,)  # told of listings; the changes it reads from the routes' picture

    def __init__(self, config: AgentConfig, own: ipaddress.IPv4Address,
                 picture: LeasePicture, held: Callable[[], set[ipaddress.IPv4Address]],
                 current: set[ipaddress.IPv4Address]) -> None:
        self.config = config
        self.own = own
        self.picture = picture
        self.held = held
        # What the table holds (on a restart, the other nodes already): kept until the
        # first full apply says otherwise, else pod traffic to them would be NATed.
        self.current = current | {own}
        self.full = True
        self._held: set[ipaddress.IPv4Address] = set()

    def on_snapshot(self, kind: str, objects: dict[str, object]) -> None:
        self.full = True

    def on_update(self, kind: str, key: str, obj: object | None) -> None:
        pass

    def resync(self) -> None:
        self.full = True

    def dirty(self) -> bool:
        return self.picture.listed and (self.full or self.picture.has_node_changes()
                                        or self.held() != self._held)

    def apply(self) -> list[str]:
        if not self.config.ip_masq:  # no table to keep
            self.picture.take_node_changes()
            self.full, self._held = False, self.held()
            return []
        if not self.full and self.held() == self._held:
            added, removed = set(), set()
            for address, present in self.picture.take_node_changes().items():
                if address != self.own:
                    (added if present else removed).add(address)
            try:
                masquerade.change_nodes(added - self.current, removed & self.current)
                self.current = (self.current | added) - removed
                return []
            except nft.NftError as err:
                log.warning("changing the masquerade node set failed (%s); reconciling", err)
        self._held = self.held()
        self.picture.take_node_changes()
        wanted = set(self.picture.node_ips) | self._held | {self.own}
        assert self.config.cluster_cidr is not None
        masquerade.apply([self.config.cluster_cidr], wanted, enabled=True)
        self.current, self.full = wanted, False
        return []
