"""Datastore selection shared by every command that reads or writes the cluster:
--datastore/--store-path/--endpoints/--etcd-*/--prefix, each also from an environment
variable (GINGHAM_DATASTORE, GINGHAM_ENDPOINTS, ...), or the global --lab NAME."""

from __future__ import annotations

from pathlib import Path

import click

from gingham.store.etcd import TlsFiles
from gingham.store.factory import DEFAULT_EMBEDDED_PATH, KINDS, StoreOptions
from gingham.subnet.lease import DEFAULT_PREFIX

OPTIONS = [
    click.option("--datastore", type=click.Choice(KINDS), envvar="GINGHAM_DATASTORE",
                 help="embedded (a SQLite file on this host) or etcd."),
    click.option("--store-path", type=click.Path(path_type=Path), envvar="GINGHAM_STORE_PATH",
                 default=str(DEFAULT_EMBEDDED_PATH), show_default=True,
                 help="The embedded store's file."),
    click.option("--endpoints", envvar="GINGHAM_ENDPOINTS",
                 help="etcd client URLs, comma-separated."),
    click.option("--etcd-cafile", type=click.Path(dir_okay=False), envvar="GINGHAM_ETCD_CAFILE"),
    click.option("--etcd-certfile", type=click.Path(dir_okay=False),
                 envvar="GINGHAM_ETCD_CERTFILE"),
    click.option("--etcd-keyfile", type=click.Path(dir_okay=False),
                 envvar="GINGHAM_ETCD_KEYFILE"),
    click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
                 envvar="GINGHAM_PREFIX", help="Key prefix of the network in the datastore."),
]
NAMES = ("datastore", "store_path", "endpoints", "etcd_cafile", "etcd_certfile", "etcd_keyfile")


def datastore_options(f):
    for option in reversed(OPTIONS):
        f = option(f)
    return f


def store_options(values: dict) -> StoreOptions | None:
    """StoreOptions from the parsed flags (popped from `values`); None if none chosen."""
    picked = {name: values.pop(name, None) for name in NAMES}
    if picked["datastore"] is None:
        if picked["endpoints"]:
            picked["datastore"] = "etcd"
        else:
            return None
    endpoints = tuple(e for e in (picked["endpoints"] or "").split(",") if e)
    return StoreOptions(
        kind=picked["datastore"],
        path=Path(picked["store_path"] or DEFAULT_EMBEDDED_PATH),
        endpoints=endpoints,
        tls=TlsFiles(picked["etcd_cafile"], picked["etcd_certfile"], picked["etcd_keyfile"]),
    )
