"""Leases and nodes as data, their keys and values: no I/O.

Key layout (prefix default /gingham/network, as Flannel's /coreos.com/network):
  <prefix>/config                    net-conf.json
  <prefix>/subnets/10.244.3.0-24     {"PublicIP", "BackendType", "BackendData", "NodeName"}
  <prefix>/nodes/<name>              {"name", "publicIP", "labels"}
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field

DEFAULT_PREFIX = "/gingham/network"
SUBNET_KEY = re.compile(r"^(\d+\.\d+\.\d+\.\d+)-(\d+)$")
NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,61}[a-z0-9])?$")


class LeaseDataError(ValueError):
    """A value under the prefix that does not parse: reported, never acted on."""


def config_key(prefix: str) -> str:
    return f"{prefix}/config"


def subnets_prefix(prefix: str) -> str:
    return f"{prefix}/subnets/"


def nodes_prefix(prefix: str) -> str:
    return f"{prefix}/nodes/"


def subnet_key(prefix: str, subnet: ipaddress.IPv4Network) -> str:
    return f"{subnets_prefix(prefix)}{subnet.network_address}-{subnet.prefixlen}"


def subnet_of_key(prefix: str, key: str) -> ipaddress.IPv4Network:
    found = SUBNET_KEY.match(key.removeprefix(subnets_prefix(prefix)))
    if not found:
        raise LeaseDataError(f"{key} is not a subnet key")
    try:
        return ipaddress.IPv4Network(f"{found.group(1)}/{found.group(2)}")
    except ValueError as err:
        raise LeaseDataError(f"{key}: {err}") from None


def check_node_name(name: str) -> str:
    if not NODE_NAME.match(name):
        raise ValueError(f"node name {name!r} must be a lowercase DNS label")
    return name


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: ipaddress.IPv4Address
    backend_type: str
    node_name: str
    backend_data: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"PublicIP": str(self.public_ip), "BackendType": self.backend_type,
                           "BackendData": self.backend_data, "NodeName": self.node_name},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> LeaseAttrs:
        try:
            data = json.loads(raw)
            return cls(ipaddress.IPv4Address(data["PublicIP"]), str(data["BackendType"]),
                       str(data.get("NodeName", "")), dict(data.get("BackendData") or {}))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise LeaseDataError(f"lease value does not parse: {err}") from None


@dataclass(frozen=True)
class Lease:
    subnet: ipaddress.IPv4Network
    attrs: LeaseAttrs
    mod_revision: int = 0
    store_lease: int = 0  # the datastore lease that keeps it alive
    create_revision: int = 0  # which of two overlapping leases came first

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.subnet.network_address + 1}/"
                                       f"{self.subnet.prefixlen}")


@dataclass(frozen=True)
class NodeInfo:
    name: str
    public_ip: ipaddress.IPv4Address
    labels: dict[str, str] = field(default_factory=dict)
    # Calico mode's VXLAN tunnel endpoint, as calico-node publishes it in its Node resource
    # (ipv4VXLANTunnelAddr, vxlanTunnelMACAddr); empty when the node has none.
    vxlan_address: str = ""
    vxlan_mac: str = ""
    # Calico's spec.bgp: the address with its prefix length, the node's own AS number
    # (None: the cluster's) and, for a route reflector, its cluster ID.
    ipv4_address: str = ""
    asn: int | None = None
    rr_cluster_id: str = ""

    OPTIONAL = (("vxlan_address", "ipv4VXLANTunnelAddr"), ("vxlan_mac", "vxlanTunnelMACAddr"),
                ("ipv4_address", "ipv4Address"), ("asn", "asNumber"),
                ("rr_cluster_id", "routeReflectorClusterID"))

    def encode(self) -> bytes:
        data: dict = {"name": self.name, "publicIP": str(self.public_ip), "labels": self.labels}
        data |= {key: getattr(self, attr) for attr, key in self.OPTIONAL if getattr(self, attr)}
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> NodeInfo:
        try:
            data = json.loads(raw)
            asn = data.get("asNumber")
            return cls(str(data["name"]), ipaddress.IPv4Address(data["publicIP"]),
                       {str(k): str(v) for k, v in (data.get("labels") or {}).items()},
                       str(data.get("ipv4VXLANTunnelAddr", "")),
                       str(data.get("vxlanTunnelMACAddr", "")),
                       str(data.get("ipv4Address", "")), None if asn is None else int(asn),
                       str(data.get("routeReflectorClusterID", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise LeaseDataError(f"node value does not parse: {err}") from None

