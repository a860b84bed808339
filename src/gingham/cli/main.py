"""`gingham`: the root command group. Every failure is one line on stderr and exit 1."""

from __future__ import annotations

import logging
import os
import select
import sys
from typing import NoReturn

import click

from gingham.cli.agent_cmd import agent, install_cni
from gingham.cli.cluster_cmd import config, get
from gingham.cli.ipam_cmd import ipam
from gingham.cli.lab_cmd import lab
from gingham.cli.node_cmd import node
from gingham.cli.policy_cmd import policy
from gingham.cli.resource_cmd import apply, create, delete, replace
from gingham.cli.workload_cmd import label

log = logging.getLogger("gingham.cli")
# Errors whose message already says what went wrong; others get their type named too.
SELF_EXPLAINING: tuple[type[Exception], ...] = (ValueError, LookupError, RuntimeError, OSError)
STDOUT = 1


def _stdout_closed() -> bool:
    """Whether whoever reads our stdout has gone (`gingham lab status | head -1`): a pipe
    whose reader closed polls as POLLERR. Only then is a BrokenPipeError about our output
    and not, say, a socket of the command's, which must still be reported."""
    poller = select.poll()
    poller.register(STDOUT, 0)  # POLLERR and POLLHUP are reported whatever the mask
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _end_quietly() -> NoReturn:
    """Exit 1 with nothing said (as Click does for a closed pipe in its own output). Stdout
    points at /dev/null first, so the interpreter's final flush of what is still buffered
    cannot fail again. SIGPIPE stays ignored: `gingham agent` writes to sockets."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), STDOUT)
    sys.exit(1)


class Gingham(click.Group):
    """Every failure is one line and exit 1; --verbose adds the traceback for bug reports."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as err:
            if isinstance(err, BrokenPipeError) and _stdout_closed():
                _end_quietly()
            log.debug("traceback", exc_info=True)
            what = str(err) if isinstance(err, SELF_EXPLAINING) else f"{type(err).__name__}: {err}"
            click.echo(f"gingham: error: {what}", err=True)
            sys.exit(1)


@click.group(cls=Gingham, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail to stderr.")
@click.option("--lab", help="Use this lab's datastore (for get/config).")
def cli(verbose: bool, lab: str | None) -> None:
    """Gingham: a Kubernetes pod network, and a lab to run it in."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


cli.add_command(agent)
cli.add_command(install_cni)
cli.add_command(lab)
cli.add_command(get)
cli.add_command(config)
cli.add_command(ipam)
cli.add_command(label)
cli.add_command(node)
cli.add_command(policy)
for _verb in (apply, create, replace, delete):
    cli.add_command(_verb)


def main() -> None:
    cli(prog_name="gingham")


if __name__ == "__main__":
    main()
