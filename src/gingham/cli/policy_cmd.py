"""`gingham policy explain FROM TO PORT/PROTO`: whether NetworkPolicy lets a connection
through, and which policies and rules decide, as the pure evaluator sees the datastore."""

from __future__ import annotations

import json

import click

from gingham.cli.cluster_cmd import open_chosen_store
from gingham.cli.store_opts import datastore_options


@click.group()
def policy() -> None:
    """NetworkPolicy, as the cluster's policies decide it."""


def _port(text: str) -> tuple[int, str]:
    number, _, protocol = text.partition("/")
    protocol = (protocol or "TCP").upper()
    if not number.isdigit() or not 1 <= int(number) <= 65535 \
            or protocol not in ("TCP", "UDP", "SCTP"):
        raise click.BadParameter(f"{text!r} is not PORT/PROTO like 80/TCP (1-65535; TCP, UDP "
                                 "or SCTP)", param_hint="PORT/PROTO")
    return int(number), protocol


@policy.command("explain")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@click.argument("port", metavar="PORT/PROTO")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@datastore_options
@click.pass_context
def explain(ctx: click.Context, source: str, target: str, port: str, output: str,
            **values) -> None:
    """FROM and TO: a pod (NAMESPACE/NAME) or an address."""
    from gingham.policy.evaluate import allowed
    from gingham.policy.picture import read_picture

    number, protocol = _port(port)
    picture = read_picture(*open_chosen_store(ctx, values))
    ends = []
    for end in (source, target):
        if "/" in end:
            pod = picture.pod(end)
            if pod is None:
                raise click.ClickException(f"pod {end} is not in the datastore")
            if not pod.ip:
                raise click.ClickException(f"pod {end} has no address yet")
            ends.append(pod)
        else:
            ends.append(end)
    verdict = allowed(ends[0], ends[1], number, protocol, pods=picture.pods,
                      namespaces=picture.namespaces, policies=picture.policies,
                      node_ips=picture.node_ips)
    if output == "json":
        click.echo(json.dumps({"from": source, "to": target, "port": number,
                               "protocol": protocol, "allowed": verdict.allowed,
                               "reasons": list(verdict.reasons)}, indent=2))
    else:
        click.echo(f"{'allowed' if verdict.allowed else 'denied'}: {source} -> {target} "
                   f"{number}/{protocol}")
        for reason in verdict.reasons:
            click.echo(f"  {reason}")
    for problem in picture.problems:
        click.echo(f"warning: {problem}", err=True)
