"""`gingham node status`: a Calico-mode node's process and BGP sessions, as calicoctl."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import click

from gingham.agent.config import DEFAULT_RUN_DIR, DEFAULT_SOCKET


@click.group()
def node() -> None:
    """This node, as calicoctl's `node` commands see it."""


@node.command("status")
@click.option("--node", "name", help="With --lab: which lab node.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=str(DEFAULT_RUN_DIR),
              show_default=True, help="On a host: the agent's run directory.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path),
              default=str(DEFAULT_SOCKET), show_default=True,
              help="On a host: the agent's CNI socket (answering: it runs).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def status(ctx: click.Context, name: str | None, run_dir: Path, socket_path: Path,
           output: str) -> None:
    """Whether the Calico process runs, and the node's BGP peers from BIRD."""
    from gingham.calico.node_status import read_peers, render_status

    lab = ctx.find_root().params.get("lab")
    if lab is not None:
        from gingham.lab import cluster
        from gingham.lab.state import LabFiles

        if name is None:
            raise click.UsageError("with --lab, name the node: --node NAME")
        files = LabFiles(lab)
        record = files.load()
        cluster.plan_of(record).node(name)  # a clear error for a node the lab lacks
        report = next(n for n in cluster.node_reports(files, record) if n["name"] == name)
        running = report["agent"] == "running"
        run_dir = files.node_dir(name) / "run"
    else:
        running = _answers(socket_path)
    peers = read_peers(run_dir / "bird.ctl")
    if output == "json":
        rows = None if peers is None else [
            {"peerAddress": p.peer_address, "peerType": p.peer_type, "state": p.state,
             "since": p.since, "info": p.info} for p in peers]
        click.echo(json.dumps({"running": running, "ipv4Peers": rows, "ipv6Peers": []},
                              indent=2))
    else:
        click.echo(render_status(running, peers))


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
