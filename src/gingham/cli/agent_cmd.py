"""`gingham agent` and `gingham install-cni`."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import click

from gingham.agent import config as defaults


class Network(click.ParamType):
    name = "CIDR"

    def convert(self, value, param, ctx):
        try:
            return ipaddress.IPv4Network(value)
        except ValueError as err:
            self.fail(f"{value!r} is not an IPv4 CIDR ({err})", param, ctx)


class Address(click.ParamType):
    name = "IP"

    def convert(self, value, param, ctx):
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            self.fail(f"{value!r} is not an IPv4 address", param, ctx)


@click.command()
@click.option("--node-name", required=True, help="This node's name.")
@click.option("--subnet", "pod_subnet", type=Network(), required=True,
              help="This node's pod subnet, e.g. 10.244.1.0/24.")
@click.option("--cluster-cidr", type=Network(), default="10.244.0.0/16", show_default=True,
              help="The cluster's pod network.")
@click.option("--iface", help="Uplink interface (default: the default route's).")
@click.option("--public-ip", type=Address(), help="Node address (default: the uplink's).")
@click.option("--mtu", type=click.IntRange(576, 65535), help="Pod MTU (default: uplink's).")
@click.option("--bridge", default=defaults.DEFAULT_BRIDGE, show_default=True)
@click.option("--socket", "socket_path", type=click.Path(path_type=Path),
              default=str(defaults.DEFAULT_SOCKET), show_default=True)
@click.option("--state-dir", type=click.Path(path_type=Path),
              default=str(defaults.DEFAULT_STATE_DIR), show_default=True)
@click.option("--run-dir", type=click.Path(path_type=Path),
              default=str(defaults.DEFAULT_RUN_DIR), show_default=True,
              help="Where subnet.env is written.")
@click.option("--cni-conf-dir", type=click.Path(path_type=Path),
              help="Write the node's conflist here (e.g. /etc/cni/net.d).")
@click.option("--ip-masq/--no-ip-masq", default=True, show_default=True,
              help="Masquerade pod traffic leaving the cluster.")
def agent(**options) -> None:
    """Run the node agent: program the node, serve CNI calls."""
    from gingham.agent.config import AgentConfig
    from gingham.agent.main import run_agent

    run_agent(AgentConfig(**options))


@click.command("install-cni")
@click.option("--bin-dir", type=click.Path(path_type=Path), default="/opt/cni/bin",
              show_default=True)
@click.option("--conf-dir", type=click.Path(path_type=Path), default="/etc/cni/net.d",
              show_default=True)
@click.option("--socket", "socket_path", type=click.Path(path_type=Path),
              default=str(defaults.DEFAULT_SOCKET), show_default=True)
@click.option("--bridge", default=defaults.DEFAULT_BRIDGE, show_default=True)
@click.option("--mtu", type=click.IntRange(576, 65535), default=1500, show_default=True)
def install_cni(bin_dir: Path, conf_dir: Path, socket_path: Path, bridge: str, mtu: int) -> None:
    """Install the plugin executables and a conflist on this host."""
    from gingham.cni.install import install_plugins
    from gingham.model.files import render_conflist, write_atomically

    for path in install_plugins(bin_dir):
        click.echo(f"installed {path}")
    conflist = conf_dir / defaults.CONFLIST_NAME
    write_atomically(conflist, json.dumps(
        render_conflist(defaults.DEFAULT_NETWORK_NAME, bridge, mtu, socket_path), indent=2))
    click.echo(f"wrote {conflist}")
