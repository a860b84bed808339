"""`gingham ipam show|check|release|configure`: calicoctl's view of block IPAM."""

from __future__ import annotations

import ipaddress

import click

from gingham.cli.cluster_cmd import open_chosen_store
from gingham.cli.store_opts import datastore_options
from gingham.cli.table import format_table


def _open(ctx: click.Context, values: dict):
    from gingham.ipam.block_ipam import BlockIpam

    return BlockIpam(*open_chosen_store(ctx, values))


def _share(part: int, whole: int) -> str:
    return f"{part} ({round(100 * part / whole) if whole else 0}%)"


@click.group()
def ipam() -> None:
    """Calico-mode address management: pools cut into blocks that nodes claim."""


@ipam.command("show")
@click.option("--show-blocks", is_flag=True, help="A row for every block too.")
@datastore_options
@click.pass_context
def show(ctx: click.Context, show_blocks: bool, **values) -> None:
    """Addresses in use and free, per IP pool (and per block)."""
    store = _open(ctx, values)
    blocks, problems = store.blocks()
    rows = [("GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE")]
    for pool in store.pools():
        mine = [s.block for cidr, s in sorted(blocks.items()) if cidr.subnet_of(pool.cidr)]
        used = sum(len(b.allocations) - b.free_count() for b in mine)
        total = pool.cidr.num_addresses
        rows.append(("IP Pool", str(pool.cidr), str(total), _share(used, total),
                     _share(total - used, total)))
        if show_blocks:
            for b in mine:
                size, free = len(b.allocations), b.free_count()
                rows.append(("Block", str(b.cidr), str(size), _share(size - free, size),
                             _share(free, size)))
    click.echo(format_table(rows))
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)


@ipam.command("check")
@datastore_options
@click.pass_context
def check(ctx: click.Context, **values) -> None:
    """Report blocks of vanished nodes or outside every pool, addresses of vanished pods
    (or of a pod's earlier container), and handles without addresses; exits 1 if there is
    any."""
    from gingham.subnet.registry import SubnetRegistry
    from gingham.workloads.store import WorkloadStore

    store = _open(ctx, values)
    nodes, _ = SubnetRegistry(store.store, store.prefix).nodes()
    pods, _ = WorkloadStore(store.store, store.prefix).pods()
    problems = store.check({n.name for n in nodes},
                           {(p.namespace, p.name): p.container_id for p in pods})
    for problem in problems:
        click.echo(problem)
    click.echo(f"Found {len(problems)} problem(s).")
    if problems:
        ctx.exit(1)


@ipam.command("release")
@click.option("--ip", "address", required=True, help="The address to free, whoever holds it.")
@datastore_options
@click.pass_context
def release(ctx: click.Context, address: str, **values) -> None:
    """Free one address (e.g. one `ipam check` found held for a pod that is gone)."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise click.BadParameter(f"{address!r} is not an IPv4 address", param_hint="--ip") from None
    handle = _open(ctx, values).release_address(ip)
    if handle is None:
        raise LookupError(f"IP address {ip} is not assigned")
    click.echo(f"Successfully released IP address {ip} (held by {handle})")


@ipam.command("configure")
@click.option("--strictaffinity", type=click.BOOL, required=True,
              help="true: nodes never borrow addresses from other nodes' blocks.")
@datastore_options
@click.pass_context
def configure(ctx: click.Context, strictaffinity: bool, **values) -> None:
    """Set IPAM options."""
    _open(ctx, values).set_strict_affinity(strictaffinity)
    click.echo(f"Successfully set StrictAffinity to: {str(strictaffinity).lower()}")
