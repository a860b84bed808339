"""`gingham agent` and `gingham install-cni`."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import click

from gingham.agent import config as defaults
from gingham.cli.store_opts import datastore_options, store_options
from gingham.cli.yamlfile import YamlFileError, load_yaml


class Network(click.ParamType):
    name = "CIDR"

    def convert(self, value, param, ctx):
        if isinstance(value, ipaddress.IPv4Network):
            return value
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


def parse_label(value: str) -> tuple[str, str]:
    key, eq, val = value.partition("=")
    if not eq or not key:
        raise click.BadParameter(f"label {value!r} is not KEY=VALUE")
    return key, val


def load_config_file(ctx: click.Context, param, path: str | None) -> None:
    """--config FILE: YAML or JSON with the flags' names as keys (dashes or underscores);
    flags given on the command line still win."""
    if path is None:
        return
    try:
        data = load_yaml(path)
    except YamlFileError as err:
        raise click.BadParameter(str(err)) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names to values")
    # keys are the flags' names: `subnet` for --subnet, whatever the parameter is called
    known = {opt.lstrip("-").replace("-", "_"): param.name
             for param in ctx.command.params for opt in param.opts if opt.startswith("--")}
    values = {}
    for key, value in data.items():
        name = known.get(str(key).replace("-", "_"))
        if name is None:
            raise click.BadParameter(f"{path}: unknown key {key!r}")
        values[name] = ",".join(value) if name == "endpoints" and isinstance(value, list) \
            else value
    ctx.default_map = {**(ctx.default_map or {}), **values}


@click.command()
@click.option("--config", type=click.Path(dir_okay=False, exists=True), is_eager=True,
              expose_value=False, callback=load_config_file,
              help="YAML/JSON file with any of these options.")
@click.option("--node-name", required=True, help="This node's name.")
@click.option("--mode", type=click.Choice(["flannel", "calico"]), default="flannel",
              show_default=True, help="The cluster mode (the datastore's must match).")
@click.option("--bgp/--no-bgp", default=False, show_default=True,
              help="Calico mode: run BIRD, which announces this node's blocks and learns "
                   "the others' (else routes come from the datastore).")
@click.option("--log-denied/--no-log-denied", default=False, show_default=True,
              help="Log the packets NetworkPolicy drops (NFLOG) to <run-dir>/flows.jsonl.")
@click.option("--subnet", "pod_subnet", type=Network(),
              help="Static pod subnet (no datastore), e.g. 10.244.1.0/24.")
@click.option("--cluster-cidr", type=Network(),
              help="Static mode: the cluster's pod network (default 10.244.0.0/16). Calico "
                   "mode: the default IP pool made when the cluster has none.")
@datastore_options
@click.option("--prefer-subnet", type=Network(),
              help="Lease this subnet if it is free and the node holds none yet.")
@click.option("--label", "labels", multiple=True, help="K=V node label, repeatable.")
@click.option("--lease-ttl", type=click.IntRange(10), default=defaults.DEFAULT_TTL,
              show_default=True, help="Subnet lease TTL, seconds.")
@click.option("--lease-renew-margin", type=click.IntRange(1),
              default=defaults.DEFAULT_RENEW_MARGIN, show_default=True,
              help="Renew this many seconds before the lease runs out.")
@click.option("--iface", help="Uplink interface (default: the default route's).")
@click.option("--public-ip", type=Address(), help="Node address (default: the uplink's).")
@click.option("--mtu", type=click.IntRange(576, 65535), help="Pod MTU (default: backend's).")
@click.option("--bridge", default=defaults.DEFAULT_BRIDGE, show_default=True)
@click.option("--socket", "socket_path", type=click.Path(path_type=Path),
              default=str(defaults.DEFAULT_SOCKET), show_default=True)
@click.option("--state-dir", type=click.Path(path_type=Path),
              default=str(defaults.DEFAULT_STATE_DIR), show_default=True)
@click.option("--run-dir", type=click.Path(path_type=Path),
              default=str(defaults.DEFAULT_RUN_DIR), show_default=True,
              help="Where subnet.env and status.json are written.")
@click.option("--cni-conf-dir", type=click.Path(path_type=Path),
              help="Write the node's conflist here (e.g. /etc/cni/net.d).")
@click.option("--ip-masq/--no-ip-masq", default=True, show_default=True,
              help="Masquerade pod traffic leaving the cluster.")
def agent(**options) -> None:
    """Run the node agent: join the cluster, program the node, serve CNI calls."""
    from gingham.agent.config import AgentConfig
    from gingham.agent.main import run_agent

    options["store"] = store_options(options)
    options["labels"] = dict(parse_label(v) for v in options["labels"])
    if options["store"] is not None and options["pod_subnet"] is not None:
        raise click.UsageError("--subnet is for static mode; with a datastore the subnet is "
                               "leased")
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
