"""Where a lab keeps its files, and its record of what exists (JSON, under an flock).

The record is written before each thing is made, so `lab down` can undo a half-built `up`.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

LABS_ROOT = Path(os.environ.get("GINGHAM_LAB_ROOT", "/run/gingham/labs"))


@dataclass
class PodRecord:
    namespace: str
    name: str
    node: str
    netns: str
    container_id: str
    ifname: str
    ip: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class LabRecord:
    name: str
    plan: dict
    supervisors: dict[str, int] = field(default_factory=dict)  # node -> its agent's supervisor
    datastore: dict = field(default_factory=dict)  # kind, path or endpoints+netns+pid
    pods: dict[str, PodRecord] = field(default_factory=dict)  # "ns/pod" -> record

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabRecord:
        data = json.loads(text)
        # Labs made before agents were supervised recorded agent PIDs; `down` still finds
        # those agents, in the lab's namespaces.
        data.pop("agents", None)
        data["pods"] = {k: PodRecord(**v) for k, v in data.get("pods", {}).items()}
        return cls(**data)


class LabFiles:
    """The paths of one lab's files."""

    def __init__(self, lab: str, root: Path = LABS_ROOT) -> None:
        self.lab = lab
        self.dir = root / lab

    @property
    def record_path(self) -> Path:
        return self.dir / "lab.json"

    @property
    def bin_dir(self) -> Path:
        return self.dir / "bin"

    def node_dir(self, node: str) -> Path:
        return self.dir / "nodes" / node

    def agent_socket(self, node: str) -> Path:
        return self.node_dir(node) / "agent.sock"

    def agent_log(self, node: str) -> Path:
        return self.node_dir(node) / "agent.log"

    def supervisor_state(self, node: str) -> Path:
        return self.node_dir(node) / "supervisor.json"

    def conf_dir(self, node: str) -> Path:
        return self.node_dir(node) / "net.d"

    def cache_dir(self, node: str) -> Path:
        return self.node_dir(node) / "cni-cache"

    def exists(self) -> bool:
        return self.record_path.exists()

    def load(self) -> LabRecord:
        try:
            return LabRecord.from_json(self.record_path.read_text())
        except FileNotFoundError:
            raise LookupError(f"no lab named {self.lab!r} (run `gingham lab up`)") from None

    def create(self, record: LabRecord) -> None:
        """Write the first record; FileExistsError if the lab has one. A hard link is atomic and
        exclusive, so of two concurrent `lab up --name X` exactly one wins."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".lab.json.{os.getpid()}"
        tmp.write_text(record.to_json())
        try:
            os.link(tmp, self.record_path)
        finally:
            tmp.unlink()

    def save(self, record: LabRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(record.to_json())
        tmp.replace(self.record_path)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise read-modify-write of the record between concurrent CLI calls."""
        if not self.dir.is_dir():
            # Making the directory here would leave a lock file behind for a lab that
            # never existed (e.g. a typo in `--name`).
            raise LookupError(f"no lab named {self.lab!r} (run `gingham lab up`)")
        fd = os.open(self.dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
