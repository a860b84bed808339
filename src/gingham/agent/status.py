"""The agent's own account of itself, in <run-dir>/status.json, for `lab status`/`lab check`
and for operators: datastore state, the lease, and every problem it is living with."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gingham.model.files import write_atomically


@dataclass
class AgentStatus:
    node: str
    backend: str = ""
    datastore: str = "connecting"
    subnet: str = ""
    public_ip: str = ""
    routes: int = 0
    peers: int = -1  # other nodes' leases in the last applied picture; -1: not synced yet
    problems: list[str] = field(default_factory=list)
    updated: float = 0.0


class StatusFile:
    def __init__(self, path: Path, status: AgentStatus) -> None:
        self.path = path
        self.status = status
        self._lock = threading.Lock()

    def update(self, **changes) -> None:
        with self._lock:
            before = asdict(self.status)
            for key, value in changes.items():
                setattr(self.status, key, value)
            if asdict(self.status) != before or not self.path.exists():
                self.status.updated = time.time()
                write_atomically(self.path, json.dumps(asdict(self.status), indent=2))


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
