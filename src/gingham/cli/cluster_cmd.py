"""`gingham get nodes|subnets` and `gingham config show|set`: reading and writing the
cluster's state in the datastore chosen by --lab or the datastore options."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from gingham.cli.store_opts import datastore_options, store_options
from gingham.cli.table import format_table

OUTPUTS = click.Choice(["table", "wide", "yaml", "json"])


def open_registry(ctx: click.Context, values: dict):
    """The registry of the datastore the user chose; enters a lab's namespace if needed."""
    from gingham.subnet.registry import SubnetRegistry

    return SubnetRegistry(*open_chosen_store(ctx, values))


def open_chosen_store(ctx: click.Context, values: dict):
    """(store, key prefix) of the datastore the user chose (--lab or the datastore options,
    popped from `values`); enters a lab's namespace if needed."""
    from gingham.store.factory import open_store

    prefix = values.pop("prefix")
    options = store_options(values)
    lab = ctx.find_root().params.get("lab")
    if lab is not None:
        if options is not None:
            raise click.UsageError("give either --lab or datastore options, not both")
        from gingham.lab.access import enter_lab_datastore

        options = enter_lab_datastore(lab)
    if options is None:
        raise click.UsageError("choose a datastore: --lab NAME, or --datastore/--endpoints "
                               "(or GINGHAM_DATASTORE/GINGHAM_ENDPOINTS)")
    return open_store(options), prefix


def emit(rows: list[dict], output: str, columns: list[str], wide: list[str],
         cell=str) -> None:
    """Rows as JSON, YAML or a table (`cell` turns a value into its table text)."""
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump(rows, sort_keys=False).rstrip())
    else:
        cols = columns + (wide if output == "wide" else [])
        click.echo(format_table([tuple(c.upper() for c in cols)] +
                                [tuple(cell(r.get(c, "")) for c in cols) for r in rows]))


class _KindNames(click.Group):
    """A group whose commands are resource kinds' plurals, also found by the kinds' other
    names (`get netpol`, `get pool`), as kubectl and calicoctl take them."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from gingham.resources.kinds import ResourceError, kind_named

        command = super().get_command(ctx, cmd_name)
        if command is None:
            try:
                command = super().get_command(ctx, kind_named(cmd_name).plural)
            except ResourceError:
                return None
        return command


@click.group(cls=_KindNames)
def get() -> None:
    """Show cluster objects."""


@get.command("nodes")
@datastore_options
@click.option("-o", "--output", type=OUTPUTS, default="table")
@click.pass_context
def get_nodes(ctx: click.Context, output: str, **values) -> None:
    """Registered nodes: with their address, subnet and labels (Flannel mode); as Calico's
    Node resources, the ASN and address in -o wide (Calico mode)."""
    registry = open_registry(ctx, values)
    if cluster_mode(registry.store, registry.prefix) == "calico":
        from gingham.cli.resource_cmd import show_calico_nodes

        show_calico_nodes(registry.store, registry.prefix, output)
        return
    nodes, problems = registry.nodes()
    subnets = {lease.attrs.node_name: lease for lease in registry.leases().leases}
    rows = [{"name": n.name, "publicIP": str(n.public_ip),
             "subnet": str(subnets[n.name].subnet) if n.name in subnets else "-",
             "backend": subnets[n.name].attrs.backend_type if n.name in subnets else "-",
             "labels": ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-"}
            for n in nodes]
    emit(rows, output, ["name", "publicIP", "subnet"], ["backend", "labels"])
    _warn(problems)


@get.command("subnets")
@datastore_options
@click.option("-o", "--output", type=OUTPUTS, default="table")
@click.pass_context
def get_subnets(ctx: click.Context, output: str, **values) -> None:
    """Subnet leases: which node holds which subnet."""
    listing = open_registry(ctx, values).leases()
    rows = [{"subnet": str(lease.subnet), "node": lease.attrs.node_name,
             "publicIP": str(lease.attrs.public_ip), "backend": lease.attrs.backend_type,
             "backendData": json.dumps(lease.attrs.backend_data, sort_keys=True),
             "revision": lease.mod_revision}
            for lease in listing.leases]
    emit(rows, output, ["subnet", "node", "publicIP"], ["backend", "backendData", "revision"])
    _warn(listing.problems)


def cluster_mode(store, prefix: str) -> str:
    from gingham.calico.kinds import cluster_key, decode_mode

    kv = store.get(cluster_key(prefix))
    return decode_mode(kv.value if kv else None)


def _warn(problems: list[str]) -> None:
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)


@click.group()
def config() -> None:
    """The cluster network config (Flannel's net-conf.json)."""


@config.command("show")
@datastore_options
@click.pass_context
def config_show(ctx: click.Context, **values) -> None:
    click.echo(json.dumps(open_registry(ctx, values).get_config().to_json(), indent=2))


@config.command("set")
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False, exists=True,
                                                       allow_dash=True), required=True)
@click.option("--replace", is_flag=True,
              help="Take the file as it is: without \"Backend\" that is the default backend "
                   "(vxlan). Without --replace a file with no \"Backend\" keeps the stored one.")
@datastore_options
@click.pass_context
def config_set(ctx: click.Context, path: str, replace: bool, **values) -> None:
    """Validate net-conf.json against the live leases and store it."""
    from gingham.backends.registry import check_options
    from gingham.subnet.config_change import change_config

    raw = click.get_text_stream("stdin").read() if path == "-" else Path(path).read_text()
    network = change_config(open_registry(ctx, values), raw, replace, check_options)
    click.echo(json.dumps(network.to_json(), indent=2))
