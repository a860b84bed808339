"""Flannel's objects as kinds for the informers: the network config key and the leases
under subnets/ (Flannel's key layout)."""

from __future__ import annotations

from dataclasses import dataclass

from gingham.model.network import NetworkConfig, parse_network_config
from gingham.store.contract import KeyValue
from gingham.subnet.lease import Lease, LeaseAttrs, config_key, subnet_of_key, subnets_prefix

LEASES = "leases"
CONFIG = "config"


@dataclass(frozen=True)
class LeaseKind:
    root: str  # the network's key prefix, e.g. /coreos.com/network
    name: str = LEASES

    @property
    def prefix(self) -> str:
        return subnets_prefix(self.root)

    def decode(self, kv: KeyValue) -> Lease:
        return Lease(subnet_of_key(self.root, kv.key), LeaseAttrs.decode(kv.value),
                     kv.mod_revision, kv.lease, kv.create_revision)


@dataclass(frozen=True)
class ConfigKind:
    root: str
    name: str = CONFIG

    @property
    def prefix(self) -> str:
        return config_key(self.root)

    def decode(self, kv: KeyValue) -> NetworkConfig:
        if kv.key != self.prefix:
            raise ValueError(f"{kv.key} is not the config key {self.prefix}")
        try:
            return parse_network_config(kv.value)
        except ValueError as err:
            raise ValueError(f"{self.prefix}: {err}") from None
