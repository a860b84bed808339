"""Backends by name. Each backend module has one class; the lease's BackendType names it."""

from __future__ import annotations

from gingham.backends.base import Backend
from gingham.backends.hostgw import HostGwBackend
from gingham.dataplane.uplink import Uplink
from gingham.model.network import BackendConfig


class BackendUnavailable(ValueError):
    pass


def make_backend(config: BackendConfig, uplink: Uplink) -> Backend:
    if config.type == HostGwBackend.type:
        return HostGwBackend(uplink)
    raise BackendUnavailable(f"backend {config.type!r} is not implemented yet "
                             f"(available: {HostGwBackend.type})")
