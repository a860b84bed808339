"""Backends by name. Each backend module has one class; the lease's BackendType names it."""

from __future__ import annotations

from gingham.backends.base import Backend
from gingham.backends.hostgw import HostGwBackend
from gingham.backends.vxlan import VxlanBackend, VxlanOptions
from gingham.dataplane.uplink import Uplink
from gingham.model.network import BackendConfig

AVAILABLE = (HostGwBackend.type, VxlanBackend.type)


class BackendUnavailable(ValueError):
    pass


def check_options(config: BackendConfig) -> None:
    """Refuse a backend config no agent could run (raises ValueError); no kernel needed."""
    if config.type == VxlanBackend.type:
        VxlanOptions.parse(config)


def make_backend(config: BackendConfig, uplink: Uplink, node_name: str) -> Backend:
    if config.type == HostGwBackend.type:
        return HostGwBackend(uplink)
    if config.type == VxlanBackend.type:
        return VxlanBackend(VxlanOptions.parse(config), uplink, node_name)
    raise BackendUnavailable(f"backend {config.type!r} is not implemented yet "
                             f"(available: {', '.join(AVAILABLE)})")
