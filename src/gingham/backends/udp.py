"""udp: Flannel's first backend. Pod packets travel as UDP payloads between agents (port
8285), through the TUN device `flannel0`; every packet crosses into userspace twice, so
it is the slowest backend, but it needs nothing from the kernel beyond TUN and works
across routers."""

from __future__ import annotations

from gingham.backends.options import check_known, int_option
from gingham.backends.userspace import Transport, UdpTransport, UserspaceBackend
from gingham.dataplane.uplink import Uplink
from gingham.model.network import BackendConfig

TYPE = "udp"
DEFAULT_PORT = 8285


def parse_port(config: BackendConfig) -> int:
    check_known(config, ("Port",))
    return int_option(config, "Port", DEFAULT_PORT, 1, 65535)


class UdpBackend(UserspaceBackend):
    type = TYPE
    device = "flannel0"
    overhead = 28  # outer IPv4 20 + UDP 8

    def __init__(self, config: BackendConfig, uplink: Uplink) -> None:
        super().__init__(uplink)
        self.port = parse_port(config)

    def transport(self) -> Transport:
        return UdpTransport(self.port)
