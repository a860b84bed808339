"""The network configuration a CNI plugin receives on stdin, parsed and validated.

Every problem becomes a CniError with code 7 (invalid config), 6 (not JSON) or 1 (version).
Unknown keys are ignored, as the spec asks of plugins.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field

from gingham.cni.result import Result, Route
from gingham.cni.spec import (
    DECODING_FAILURE,
    INVALID_CONFIG,
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    CniError,
    check_version,
)

IPAM_TYPE = "gingham-ipam"
# The spec's rule for network names. It also keeps owner marks ("gingham NAME CID IFNAME")
# and reservation files (one field per line) unambiguous, which GC relies on.
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MIN_MTU = 576
MAX_MTU = 65535


def invalid(msg: str, details: str = "") -> CniError:
    return CniError(INVALID_CONFIG, msg, details)


@dataclass(frozen=True)
class RangeSpec:
    """One host-local style range; unset fields default from the subnet."""

    subnet: ipaddress.IPv4Network
    range_start: ipaddress.IPv4Address | None = None
    range_end: ipaddress.IPv4Address | None = None
    gateway: ipaddress.IPv4Address | None = None


@dataclass
class IpamConf:
    type: str
    ranges: list[RangeSpec] = field(default_factory=list)  # empty: the node's pod subnet
    routes: list[Route] = field(default_factory=list)


@dataclass
class NetConf:
    cni_version: str
    name: str
    type: str
    raw: dict
    bridge: str = "cni0"
    mtu: int | None = None
    hairpin: bool = True
    ipam: IpamConf | None = None
    dns: dict = field(default_factory=dict)
    prev_result: Result | None = None
    valid_attachments: list[tuple[str, str]] | None = None


def decode(stdin: bytes) -> dict:
    try:
        data = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as err:
        raise CniError(DECODING_FAILURE, "network config is not valid JSON", str(err)) from err
    if not isinstance(data, dict):
        raise CniError(DECODING_FAILURE, "network config must be a JSON object")
    return data


def _string(data: dict, key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise invalid(f"'{key}' must be a non-empty string")
    return value


def _address(value: object, key: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)  # type: ignore[arg-type]
    except ValueError as err:
        raise invalid(f"'{key}' is not an IPv4 address", str(value)) from err


def _range(data: object) -> RangeSpec:
    if not isinstance(data, dict):
        raise invalid("each IPAM range must be an object")
    try:
        subnet = ipaddress.IPv4Network(data.get("subnet"), strict=False)  # type: ignore[arg-type]
    except ValueError as err:
        raise invalid("IPAM range 'subnet' is not an IPv4 CIDR", str(data.get("subnet"))) from err
    if subnet.prefixlen > 30:
        raise invalid("IPAM subnet leaves no room for pods", f"{subnet} (need /30 or larger)")
    spec = RangeSpec(
        subnet,
        *(
            _address(data[key], key) if data.get(key) else None
            for key in ("rangeStart", "rangeEnd", "gateway")
        ),
    )
    for key, value in (("rangeStart", spec.range_start), ("rangeEnd", spec.range_end),
                       ("gateway", spec.gateway)):
        if value is not None and value not in subnet:
            raise invalid(f"IPAM '{key}' is outside its subnet", f"{value} not in {subnet}")
    if spec.range_start and spec.range_end and spec.range_start > spec.range_end:
        raise invalid("IPAM rangeStart is after rangeEnd")
    return spec


def _routes(data: object) -> list[Route]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise invalid("'routes' must be a list")
    try:
        return [
            Route(ipaddress.IPv4Network(r["dst"]),
                  ipaddress.IPv4Address(r["gw"]) if r.get("gw") else None)
            for r in data
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise invalid("a route is malformed", str(err)) from err


def parse_ipam(data: object) -> IpamConf:
    if not isinstance(data, dict):
        raise invalid("'ipam' must be an object")
    conf = IpamConf(type=_string(data, "type"), routes=_routes(data.get("routes")))
    if conf.type != IPAM_TYPE:
        return conf  # delegated: its own plugin validates the rest
    if "ranges" in data:
        sets = data["ranges"]
        if not isinstance(sets, list) or len(sets) != 1 or not isinstance(sets[0], list):
            raise invalid("'ranges' must hold exactly one range set (a list of ranges)")
        conf.ranges = [_range(r) for r in sets[0]]
        if not conf.ranges:
            raise invalid("the IPAM range set is empty")
    elif "subnet" in data:
        conf.ranges = [_range(data)]
    return conf


def parse(stdin: bytes, *, ipam_only: bool = False) -> NetConf:
    """Parse what a plugin got on stdin. With ipam_only, the config of the IPAM plugin."""
    data = decode(stdin)
    conf = NetConf(
        cni_version=check_version(data.get("cniVersion")),
        name=_string(data, "name"),
        type=_string(data, "type"),
        raw=data,
    )
    if not NETWORK_NAME.fullmatch(conf.name):
        raise invalid("'name' may hold only letters, digits, '_', '.' and '-'", conf.name)
    if ipam_only:
        conf.ipam = parse_ipam(data.get("ipam"))
    else:
        conf.bridge = _string(data, "bridge", "cni0")
        if len(conf.bridge) > 15:
            raise invalid("'bridge' is longer than 15 characters", conf.bridge)
        if "mtu" in data:
            mtu = data["mtu"]
            if not isinstance(mtu, int) or isinstance(mtu, bool) or not MIN_MTU <= mtu <= MAX_MTU:
                raise invalid(f"'mtu' must be an integer from {MIN_MTU} to {MAX_MTU}", str(mtu))
            conf.mtu = mtu
        hairpin = data.get("hairpinMode", True)
        if not isinstance(hairpin, bool):
            raise invalid("'hairpinMode' must be true or false")
        conf.hairpin = hairpin
        conf.ipam = parse_ipam(data["ipam"]) if "ipam" in data else None
    dns = data.get("dns", {})
    if not isinstance(dns, dict):
        raise invalid("'dns' must be an object")
    conf.dns = dns
    if data.get("prevResult") is not None:
        conf.prev_result = Result.from_json(data["prevResult"])
    if "cni.dev/valid-attachments" in data:
        conf.valid_attachments = _attachments(data["cni.dev/valid-attachments"])
    return conf


def reply_version(stdin: bytes) -> str:
    """The cniVersion to answer in, even for a config that failed to parse: its own if
    Gingham speaks it, else the latest."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return LATEST_VERSION
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def _attachments(data: object) -> list[tuple[str, str]]:
    if not isinstance(data, list):
        raise invalid("'cni.dev/valid-attachments' must be a list")
    try:
        return [(str(a["containerID"]), str(a["ifname"])) for a in data]
    except (KeyError, TypeError) as err:
        raise invalid("a valid attachment needs containerID and ifname", str(err)) from err
