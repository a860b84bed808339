"""calicoctl's resource verbs: `gingham apply|create|replace|delete -f FILE` and
`gingham get ippools|bgppeers|bgpconfigurations|networkpolicies [NAME]`, the namespaced
ones with kubectl's `-n NS` (default `default`) and `-A`."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import click
import yaml

from gingham.cli.cluster_cmd import OUTPUTS, get, open_chosen_store
from gingham.cli.store_opts import datastore_options
from gingham.cli.table import format_table
from gingham.resources.document import Resource, to_document
from gingham.resources.kinds import KINDS, ResourceKind, kind_named

FILE = click.option("-f", "--filename", "path", required=True,
                    type=click.Path(dir_okay=False, allow_dash=True),
                    help="YAML or JSON resources, several documents or a List; - for stdin.")
DEFAULT_ASN = 64512  # Calico's, when BGPConfiguration default sets none
PAST = {"apply": "applied", "create": "created", "replace": "replaced", "delete": "deleted"}


def _resources_of(path: str) -> list[Resource]:
    from gingham.cli.yamlfile import load_yaml_documents, source_name
    from gingham.resources.document import split_documents
    from gingham.resources.kinds import parse_resource

    return [parse_resource(raw) for raw in split_documents(load_yaml_documents(path),
                                                           source_name(path))]


def _resource_store(ctx: click.Context, values: dict):
    from gingham.resources.store import ResourceStore

    return ResourceStore(*open_chosen_store(ctx, values))


def _done(verb: str, resources: list[Resource]) -> None:
    kinds = Counter(r.kind for r in resources)
    what = f"'{next(iter(kinds))}' " if len(kinds) == 1 else ""
    click.echo(f"Successfully {PAST[verb]} {len(resources)} {what}resource(s)")


def _writer(verb: str):
    @click.command(verb)
    @FILE
    @datastore_options
    @click.pass_context
    def command(ctx: click.Context, path: str, **values) -> None:
        resources = _resources_of(path)
        _resource_store(ctx, values).write(verb, resources)
        _done(verb, resources)

    command.help = {
        "apply": "Create the resources in FILE, or replace them where they exist.",
        "create": "Create the resources in FILE; fails if any exists.",
        "replace": "Replace the resources in FILE; fails if any does not exist.",
    }[verb]
    return command


apply, create, replace = (_writer(v) for v in ("apply", "create", "replace"))


@click.command("delete")
@click.option("-f", "--filename", "path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Delete the resources this file names.")
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-n", "--namespace", default="default", show_default=True,
              help="The namespace of the NAMEs, for a namespaced KIND.")
@datastore_options
@click.pass_context
def delete(ctx: click.Context, path: str | None, kind: str | None, names: tuple[str, ...],
           namespace: str, **values) -> None:
    """Delete the resources in FILE, or KIND NAME... (e.g. `delete ippool pool2`)."""
    if (path is None) == (kind is None):
        raise click.UsageError("give either -f FILE or KIND NAME...")
    if path is not None:
        resources = _resources_of(path)
    else:
        assert kind is not None
        if not names:
            raise click.UsageError(f"name the {kind} to delete")
        found = kind_named(kind)
        resources = [Resource(found.kind, name, {}, namespace=namespace if found.namespaced
                              else "") for name in names]
    _resource_store(ctx, values).delete(resources)
    _done("delete", resources)


def selector_text(selector: dict[str, Any]) -> str:
    """A label selector as kubectl prints one (`app=web,tier in (a,b),!old`, by key), or
    `<none>` for the empty selector, which selects every pod."""
    parts = [(key, f"{key}={value}") for key, value in selector.get("matchLabels", {}).items()]
    for expression in selector.get("matchExpressions", []):
        key, values = expression["key"], ",".join(sorted(expression.get("values", [])))
        parts.append((key, {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                            "Exists": key, "DoesNotExist": f"!{key}"}[expression["operator"]]))
    return ",".join(text for _, text in sorted(parts, key=lambda part: part[0])) or "<none>"


def _table_rows(kind: ResourceKind, resources: list[Resource], wide: bool,
                namespaces: bool = False) -> list[tuple]:
    if kind.kind == "IPPool":
        head = ("NAME", "CIDR") + (("NAT", "IPIPMODE", "VXLANMODE", "DISABLED") if wide
                                   else ()) + ("SELECTOR",)
        rows = [(r.name, r.spec["cidr"])
                + ((str(r.spec["natOutgoing"]).lower(), r.spec["ipipMode"], r.spec["vxlanMode"],
                    str(r.spec["disabled"]).lower()) if wide else ())
                + (r.spec["nodeSelector"],) for r in resources]
    elif kind.kind == "BGPPeer":
        head = ("NAME", "PEERIP", "NODE", "ASN")
        rows = [(r.name, r.spec.get("peerIP") or r.spec.get("peerSelector", ""),
                 r.spec.get("node") or r.spec.get("nodeSelector") or "(global)",
                 str(r.spec.get("asNumber", ""))) for r in resources]
    elif kind.kind == "NetworkPolicy":
        head = ("NAME", "POD-SELECTOR") + (("POLICY-TYPES", "INGRESS-RULES", "EGRESS-RULES")
                                           if wide else ())
        rows = [(r.name, selector_text(r.spec["podSelector"]))
                + ((",".join(r.spec["policyTypes"]), str(len(r.spec.get("ingress", []))),
                    str(len(r.spec.get("egress", [])))) if wide else ()) for r in resources]
    else:
        head = ("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER")
        rows = [(r.name, r.spec["logSeverityScreen"],
                 str(r.spec["nodeToNodeMeshEnabled"]).lower(), str(r.spec.get("asNumber", "-")))
                for r in resources]
    if namespaces:  # -A: kubectl's first column
        head = ("NAMESPACE", *head)
        rows = [(r.namespace, *row) for r, row in zip(resources, rows, strict=True)]
    return [head, *rows]


def _show(kind: ResourceKind, resources: list[Resource], output: str, single: bool,
          rows: list[tuple] | None = None, namespaces: bool = False) -> None:
    if output in ("table", "wide"):
        click.echo(format_table(rows or _table_rows(kind, resources, output == "wide",
                                                    namespaces)))
        return
    docs = [to_document(r, kind.api_version) for r in resources]
    shown: dict[str, Any] = docs[0] if single else {
        "apiVersion": kind.api_version, "kind": f"{kind.kind}List", "items": docs}
    if output == "json":
        click.echo(json.dumps(shown, indent=2))
    else:
        click.echo(yaml.safe_dump(shown, sort_keys=False).rstrip())


def _getter(kind: ResourceKind):
    @click.argument("names", nargs=-1)
    @click.option("-o", "--output", type=OUTPUTS, default="table")
    @datastore_options
    @click.pass_context
    def command(ctx: click.Context, names: tuple[str, ...], output: str, namespace: str = "",
                all_namespaces: bool = False, **values) -> None:
        if names and all_namespaces:
            raise click.UsageError("a NAME is looked up in one namespace: give -n, not -A")
        store = _resource_store(ctx, values)
        if names:
            found = []
            for name in names:
                stored = store.get(kind, name, namespace)
                if stored is None:
                    missing = Resource(kind.kind, name, {}, namespace=namespace)
                    raise LookupError(f"{missing.title} does not exist")
                found.append(stored.resource)
        else:
            listed, problems = store.list(kind)
            found = [s.resource for s in listed
                     if all_namespaces or s.resource.namespace == namespace]
            for problem in problems:
                click.echo(f"warning: {problem}", err=True)
        _show(kind, found, output, single=len(names) == 1, namespaces=all_namespaces)

    if kind.namespaced:  # as kubectl: one namespace, `default` unless told, or all with -A
        command = click.option("-n", "--namespace", default="default", show_default=True,
                               help="Only this namespace.")(
            click.option("-A", "--all-namespaces", is_flag=True,
                         help="Every namespace (a NAMESPACE column first).")(command))
    return get.command(kind.plural, help=f"{kind.kind} resources, all or those named.")(
        command)


for _kind in KINDS.values():
    if _kind.record is None:  # get nodes|pods|namespaces show the records (their commands)
        _getter(_kind)


def show_calico_nodes(store, prefix: str, output: str) -> None:
    """`get nodes` of a Calico-mode cluster, as calicoctl's: NAME; -o wide adds the ASN (in
    parentheses when it is the cluster's, not the node's own) and the address."""
    from gingham.resources.store import ResourceStore

    resources = ResourceStore(store, prefix)
    listed, problems = resources.list(KINDS["Node"])
    nodes = [s.resource for s in listed]
    config = resources.get(KINDS["BGPConfiguration"], "default")
    default_asn = (config.resource.spec.get("asNumber") if config else None) or DEFAULT_ASN
    if output == "wide":
        rows = [("NAME", "ASN", "IPV4")] + [
            (n.name, str(n.spec["bgp"]["asNumber"]) if "asNumber" in n.spec["bgp"]
             else f"({default_asn})", n.spec["bgp"]["ipv4Address"]) for n in nodes]
    else:
        rows = [("NAME",)] + [(n.name,) for n in nodes]
    _show(KINDS["Node"], nodes, output, single=False, rows=rows)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
