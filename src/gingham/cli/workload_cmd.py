"""`gingham get pods|namespaces` and `gingham label pods|namespaces|nodes NAME k=v k-`."""

from __future__ import annotations

from dataclasses import asdict

import click

from gingham.cli.cluster_cmd import OUTPUTS, emit, get, open_chosen_store
from gingham.cli.store_opts import datastore_options


def _workloads(ctx: click.Context, values: dict):
    from gingham.workloads.store import WorkloadStore

    return WorkloadStore(*open_chosen_store(ctx, values))


def _cell(value) -> str:
    """kubectl's way: labels as k=v,k=v, lists joined, <none> for nothing."""
    if isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    elif isinstance(value, list):
        value = ",".join(value)
    return str(value or "<none>")


@get.command("pods")
@click.option("-n", "--namespace", help="Only this namespace (default: all).")
@click.option("-o", "--output", type=OUTPUTS, default="table")
@datastore_options
@click.pass_context
def get_pods(ctx: click.Context, namespace: str | None, output: str, **values) -> None:
    """Pods with their IP and node (wide: labels and named ports)."""
    pods, problems = _workloads(ctx, values).pods(namespace)
    rows = [{"namespace": p.namespace, "name": p.name, "ip": p.ip, "node": p.node,
             "labels": p.labels, "ports": [str(port) for port in p.ports]} for p in pods]
    emit(rows, output, ["namespace", "name", "ip", "node"], ["labels", "ports"], _cell)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)


@get.command("namespaces")
@click.option("-o", "--output", type=OUTPUTS, default="table")
@datastore_options
@click.pass_context
def get_namespaces(ctx: click.Context, output: str, **values) -> None:
    """Namespaces and their labels."""
    namespaces, problems = _workloads(ctx, values).namespaces()
    emit([asdict(n) for n in namespaces], output, ["name", "labels"], [], _cell)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)


@click.command("label")
@click.argument("kind", type=click.Choice(["pods", "pod", "namespaces", "namespace", "ns",
                                           "nodes", "node"]))
@click.argument("name")
@click.argument("labels", nargs=-1, required=True)
@click.option("-n", "--namespace", default="default", show_default=True,
              help="The pod's namespace.")
@datastore_options
@click.pass_context
def label(ctx: click.Context, kind: str, name: str, labels: tuple[str, ...], namespace: str,
          **values) -> None:
    """Set (KEY=VALUE) or remove (KEY-) labels of a pod, namespace or node."""
    from gingham.workloads.records import edited, label_edits

    edits = label_edits(labels)
    store, prefix = open_chosen_store(ctx, values)
    if kind.startswith("node"):
        from gingham.subnet.registry import SubnetRegistry

        SubnetRegistry(store, prefix).label_node(name, lambda old: edited(old, edits))
        click.echo(f"node/{name} labeled")
        return
    from gingham.workloads.store import WorkloadStore

    workloads = WorkloadStore(store, prefix)
    if kind.startswith("pod"):
        workloads.label_pod(namespace, name, lambda old: edited(old, edits))
        click.echo(f"pod/{name} labeled")
    else:
        workloads.label_namespace(name, lambda old: edited(old, edits))
        click.echo(f"namespace/{name} labeled")
