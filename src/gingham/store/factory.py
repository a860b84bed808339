"""Opening the datastore a user selected: embedded (a SQLite file) or etcd."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gingham.store.contract import Store
from gingham.store.etcd import EtcdStore, TlsFiles
from gingham.store.sqlite import EmbeddedStore

KINDS = ("embedded", "etcd")
DEFAULT_EMBEDDED_PATH = Path("/var/lib/gingham/store.db")


@dataclass(frozen=True)
class StoreOptions:
    kind: str = "embedded"
    path: Path = DEFAULT_EMBEDDED_PATH
    endpoints: tuple[str, ...] = ()
    tls: TlsFiles = field(default_factory=TlsFiles)

    def describe(self) -> str:
        return f"etcd {','.join(self.endpoints)}" if self.kind == "etcd" \
            else f"embedded {self.path}"


def open_store(options: StoreOptions, timeout: float | None = None) -> Store:
    """`timeout`: how long a request may wait (default: the store's own), for a caller that
    must not hang on a store that does not answer."""
    waits = {} if timeout is None else {"timeout": timeout}
    if options.kind == "embedded":
        return EmbeddedStore(options.path, **waits)
    if options.kind == "etcd":
        if not options.endpoints:
            raise ValueError("--datastore etcd needs --endpoints URL[,URL]")
        return EtcdStore(list(options.endpoints), options.tls, **waits)
    raise ValueError(f"unknown datastore {options.kind!r} (known: {', '.join(KINDS)})")
