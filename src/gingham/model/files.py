"""Renderers for the files the agent writes on a node: subnet.env and the CNI conflist."""

from __future__ import annotations

import ipaddress
from pathlib import Path

# Debian's reference plugins (containernetworking-plugins 1.1) speak at most 1.0.0, and
# every plugin of a conflist must accept its version.
CONFLIST_VERSION = "1.0.0"


def render_subnet_env(
    network: ipaddress.IPv4Network, gateway: ipaddress.IPv4Interface, mtu: int, ipmasq: bool
) -> str:
    """Flannel's /run/flannel/subnet.env, same keys and meanings."""
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={gateway}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
    )


def parse_subnet_env(text: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Interface, int]:
    """Network, gateway/subnet and MTU back from a subnet.env; ValueError if it is not one."""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        return (ipaddress.IPv4Network(values["FLANNEL_NETWORK"]),
                ipaddress.IPv4Interface(values["FLANNEL_SUBNET"]),
                int(values["FLANNEL_MTU"]))
    except KeyError as err:
        raise ValueError(f"subnet.env has no {err.args[0]}") from None


def render_conflist(name: str, bridge: str | None, mtu: int, agent_socket: Path) -> dict:
    """gingham as the main plugin, chained with portmap and bandwidth as Flannel does (and
    Calico: there with no bridge, `bridge` None)."""
    bridged = {"bridge": bridge, "mtu": mtu, "hairpinMode": True} if bridge else {"mtu": mtu}
    return {
        "cniVersion": CONFLIST_VERSION,
        "name": name,
        "plugins": [
            {
                "type": "gingham",
                **bridged,
                "agentSocket": str(agent_socket),
                "ipam": {"type": "gingham-ipam"},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
