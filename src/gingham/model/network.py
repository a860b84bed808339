"""The cluster network config, in Flannel's net-conf.json shape:

    {"Network": "10.244.0.0/16", "SubnetLen": 24, "SubnetMin": "10.244.1.0",
     "SubnetMax": "10.244.255.0", "Backend": {"Type": "host-gw"}}

Defaults follow Flannel: SubnetLen 24 when the Network is /22 or larger, else Network + 2;
the first subnet is skipped (SubnetMin = Network + one subnet); SubnetMax is the last.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

KNOWN_BACKENDS = ("host-gw", "vxlan", "udp", "ipip")
DEFAULT_BACKEND = "vxlan"
MAX_SUBNET_LEN = 30


class NetworkConfigError(ValueError):
    pass


@dataclass(frozen=True)
class BackendConfig:
    type: str
    options: dict = field(default_factory=dict)  # every other key of "Backend", as given


@dataclass(frozen=True)
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend: BackendConfig

    def subnets(self) -> list[ipaddress.IPv4Network]:
        """Every subnet a node may lease, in order."""
        size = 1 << (32 - self.subnet_len)
        first, last = int(self.subnet_min), int(self.subnet_max)
        return [ipaddress.IPv4Network((addr, self.subnet_len))
                for addr in range(first, last + 1, size)]

    def to_json(self) -> dict:
        return {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min),
            "SubnetMax": str(self.subnet_max),
            "Backend": {"Type": self.backend.type, **self.backend.options},
        }


def whole_number(what: str, value: object, error: type[ValueError]) -> int:
    """`value` if it is a JSON integer, else `error` saying what it is instead. The type is
    judged before any range, so "out of range" is only ever said of a real number; true and
    false are not numbers (a bool is an int in Python)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        quoted = isinstance(value, str) and value.strip().lstrip("+-").isdigit()
        raise error(f"{what} {value!r} is not a number" +
                    (" (a string: write it without quotes)" if quoted else ""))
    if isinstance(value, float):
        raise error(f"{what} {value!r} is not an integer")
    return value


def _address(data: dict, key: str) -> ipaddress.IPv4Address | None:
    if key not in data:
        return None
    try:
        return ipaddress.IPv4Address(data[key])
    except ValueError as err:
        raise NetworkConfigError(f"{key} {data[key]!r} is not an IPv4 address") from err


def parse_network_config(raw: bytes | str | dict) -> NetworkConfig:
    if isinstance(raw, dict):
        data = raw
    else:
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise NetworkConfigError(f"network config is not JSON: {err}") from err
    if not isinstance(data, dict):
        raise NetworkConfigError("network config must be a JSON object")
    try:
        network = ipaddress.IPv4Network(data["Network"])
    except KeyError:
        raise NetworkConfigError("network config has no Network") from None
    except (ValueError, TypeError) as err:
        raise NetworkConfigError(f"Network {data['Network']!r} is not an IPv4 CIDR "
                                 f"({err})") from None

    subnet_len = data.get("SubnetLen")
    if subnet_len is None:
        subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
    subnet_len = whole_number("SubnetLen", subnet_len, NetworkConfigError)
    if subnet_len > MAX_SUBNET_LEN:
        raise NetworkConfigError(f"SubnetLen /{subnet_len} is over /{MAX_SUBNET_LEN}: "
                                 "no room for a gateway and pods")
    if subnet_len <= network.prefixlen:
        raise NetworkConfigError(f"SubnetLen /{subnet_len} does not split Network {network}")

    size = 1 << (32 - subnet_len)
    subnet_min = _address(data, "SubnetMin") or network.network_address + size
    subnet_max = _address(data, "SubnetMax") or network.broadcast_address + 1 - size
    for key, value in (("SubnetMin", subnet_min), ("SubnetMax", subnet_max)):
        if value not in network:
            raise NetworkConfigError(f"{key} {value} is outside Network {network}")
        if int(value) % size:
            raise NetworkConfigError(f"{key} {value} is not on a /{subnet_len} boundary")
    if subnet_min > subnet_max:
        raise NetworkConfigError(f"SubnetMin {subnet_min} is after SubnetMax {subnet_max}")
    if (int(subnet_max) - int(subnet_min)) // size + 1 < 2:
        raise NetworkConfigError(f"Network {network} with SubnetLen /{subnet_len} between "
                                 f"{subnet_min} and {subnet_max} holds fewer than two subnets")

    backend = data.get("Backend", {"Type": DEFAULT_BACKEND})
    if not isinstance(backend, dict):
        raise NetworkConfigError("Backend must be an object")
    kind = backend.get("Type", DEFAULT_BACKEND)
    if kind not in KNOWN_BACKENDS:
        raise NetworkConfigError(f"unknown backend type {kind!r} "
                                 f"(known: {', '.join(KNOWN_BACKENDS)})")
    options = {k: v for k, v in backend.items() if k != "Type"}
    return NetworkConfig(network, subnet_len, subnet_min, subnet_max,
                         BackendConfig(kind, options))
