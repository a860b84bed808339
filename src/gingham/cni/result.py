"""The CNI ADD result, and its rendering for each supported spec version.

Internally Gingham keeps the 1.x shape; 0.4.0 differs only in the `version` key of each IP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from gingham.cni.spec import INVALID_CONFIG, CniError, version_tuple


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0

    def to_json(self) -> dict:
        out: dict = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if self.mtu:
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        return out


@dataclass
class IPConfig:
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None = None
    interface: int | None = None

    def to_json(self, version: str) -> dict:
        out: dict = {"address": str(self.address)}
        if version_tuple(version) < (1, 0, 0):
            out["version"] = "4"
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        if self.interface is not None:
            out["interface"] = self.interface
        return out


@dataclass
class Route:
    dst: ipaddress.IPv4Network
    gw: ipaddress.IPv4Address | None = None

    def to_json(self) -> dict:
        out: dict = {"dst": str(self.dst)}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        return out


@dataclass
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict = field(default_factory=dict)

    def to_json(self, version: str) -> dict:
        return {
            "cniVersion": version,
            "interfaces": [i.to_json() for i in self.interfaces],
            "ips": [ip.to_json(version) for ip in self.ips],
            "routes": [r.to_json() for r in self.routes],
            "dns": self.dns,
        }

    @classmethod
    def from_json(cls, data: object) -> Result:
        """Parse a result of any supported version (e.g. a chained plugin's prevResult)."""
        if not isinstance(data, dict):
            raise CniError(INVALID_CONFIG, "prevResult must be an object")
        try:
            return cls(
                interfaces=[
                    Interface(i["name"], i.get("mac", ""), i.get("sandbox", ""), i.get("mtu", 0))
                    for i in data.get("interfaces") or []
                ],
                ips=[
                    IPConfig(
                        ipaddress.IPv4Interface(ip["address"]),
                        ipaddress.IPv4Address(ip["gateway"]) if ip.get("gateway") else None,
                        ip.get("interface"),
                    )
                    for ip in data.get("ips") or []
                ],
                routes=[
                    Route(
                        ipaddress.IPv4Network(r["dst"]),
                        ipaddress.IPv4Address(r["gw"]) if r.get("gw") else None,
                    )
                    for r in data.get("routes") or []
                ],
                dns=data.get("dns") or {},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CniError(INVALID_CONFIG, "prevResult is malformed", str(err)) from err

    def extended_by(self, other: Result) -> Result:
        """This (previous) result followed by `other`, with other's interface indices shifted."""
        shift = len(self.interfaces)
        ips = [
            IPConfig(ip.address, ip.gateway, None if ip.interface is None else ip.interface + shift)
            for ip in other.ips
        ]
        return Result(
            interfaces=self.interfaces + other.interfaces,
            ips=self.ips + ips,
            routes=self.routes + other.routes,
            dns=other.dns or self.dns,
        )
