"""Backends by name. Each backend module has one class; the lease's BackendType names it."""

from __future__ import annotations

from gingham.backends import ipip, udp
from gingham.backends.base import Backend
from gingham.backends.hostgw import HostGwBackend
from gingham.backends.options import check_known
from gingham.backends.vxlan import VxlanBackend, VxlanOptions
from gingham.dataplane.tun import TunError, check_tun
from gingham.dataplane.uplink import Uplink
from gingham.model.network import BackendConfig

AVAILABLE = (HostGwBackend.type, VxlanBackend.type, udp.TYPE, ipip.TYPE)


class BackendUnavailable(ValueError):
    pass


def check_options(config: BackendConfig) -> None:
    """Refuse a backend config no agent could run (raises ValueError); no kernel needed.
    `config set` runs it, and make_backend too: an agent judges a config stored past it
    (or before this check existed) the same way."""
    if config.type in (HostGwBackend.type, ipip.TYPE):
        check_known(config, ())  # routes, or a tunnel, with nothing to tune
    elif config.type == VxlanBackend.type:
        VxlanOptions.parse(config)
    elif config.type == udp.TYPE:
        udp.parse_port(config)


def make_backend(config: BackendConfig, uplink: Uplink, node_name: str) -> Backend:
    check_options(config)
    if config.type == HostGwBackend.type:
        return HostGwBackend(uplink)
    if config.type == VxlanBackend.type:
        return VxlanBackend(VxlanOptions.parse(config), uplink, node_name)
    if config.type == udp.TYPE:
        _need_tun()
        return udp.UdpBackend(config, uplink)
    if config.type == ipip.TYPE:
        if ipip.kernel_has_ipip():
            return ipip.KernelIpipBackend(uplink)
        _need_tun()
        return ipip.UserspaceIpipBackend(uplink)
    raise BackendUnavailable(f"backend {config.type!r} is not implemented yet "
                             f"(available: {', '.join(AVAILABLE)})")


def _need_tun() -> None:
    try:
        check_tun()
    except TunError as err:
        raise BackendUnavailable(str(err)) from None
