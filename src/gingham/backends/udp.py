"""udp: Flannel's first backend. Pod packets travel as UDP payloads between agents (port
8285), through the TUN device `flannel0`; every packet crosses into userspace twice, so
it is the slowest backend, but it needs nothing from the kernel beyond TUN and works
across routers."""

from __future__ import annotations

from gingham.backends.userspace import Transport, UdpTransport, UserspaceBackend
from gingham.backends.vxlan import BackendConfigError
from gingham.dataplane.uplink import Uplink
from gingham.model.network import BackendConfig

TYPE = "udp"
DEFAULT_PORT = 8285


def parse_port(config: BackendConfig) -> int:
    unknown = set(config.options) - {"Port"}
    if unknown:
        raise BackendConfigError(f"unknown udp option(s): {', '.join(sorted(unknown))}")
    port = config.options.get("Port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise BackendConfigError(f"udp Port {port!r} is out of range (1-65535)")
    return port


class UdpBackend(UserspaceBackend):
    type = TYPE
    device = "flannel0"
    overhead = 28  # outer IPv4 20 + UDP 8

    def __init__(self, config: BackendConfig, uplink: Uplink, subnet_len: int) -> None:
        super().__init__(uplink, subnet_len)
        self.port = parse_port(config)

    def transport(self) -> Transport:
        return UdpTransport(self.port)
