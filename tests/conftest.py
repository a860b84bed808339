"""Markers by folder (unit / integration / conformance) and the fixtures that own labs.

Every lab a test makes gets a unique name and is torn down even when the test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from gingham.lab import cluster, procs
from gingham.lab.plan import LabPlan, netns_name
from gingham.lab.state import LabFiles

ROOT = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        kind = Path(item.fspath).relative_to(ROOT).parts[0]
        if kind in ("unit", "integration", "conformance"):
            item.add_marker(getattr(pytest.mark, kind))
            if kind != "unit" and os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root (real namespaces)"))


def unique_lab_name() -> str:
    return "t" + secrets.token_hex(3)


@dataclass
class Lab:
    """A running lab and short-hands for driving it in tests."""

    plan: LabPlan
    files: LabFiles

    @property
    def name(self) -> str:
        return self.plan.name

    def netns(self, host: str) -> str:
        return netns_name(self.name, host)

    def add_pod(self, node: str, ref: str, **kwargs):
        return cluster.add_pod(self.name, node, ref, files=self.files, **kwargs)

    def delete_pod(self, ref: str):
        return cluster.delete_pod(self.name, ref, files=self.files)

    def run(self, target: str, *argv: str, check: bool = True, timeout: float = 30,
            **kwargs) -> subprocess.CompletedProcess:
        ns = cluster.target_netns(self.name, target, files=self.files)
        return procs.run_in(ns, list(argv), capture_output=True, text=True, check=check,
                            timeout=timeout, **kwargs)

    def popen(self, target: str, *argv: str, **kwargs) -> subprocess.Popen:
        ns = cluster.target_netns(self.name, target, files=self.files)
        return procs.popen_in(ns, list(argv), **kwargs)

    def pings(self, source: str, address: str) -> bool:
        return self.run(source, "ping", "-n", "-c", "1", "-W", "2", address,
                        check=False).returncode == 0

    def conflist(self, node: str = "node1") -> dict:
        return json.loads((self.files.conf_dir(node) / "10-gingham.conflist").read_text())


@pytest.fixture
def make_lab():
    """Factory: make_lab(nodes=1, **plan_kwargs) -> Lab; every lab made is torn down."""
    made: list[str] = []

    def make(nodes: int = 1, **kwargs) -> Lab:
        plan = LabPlan.single_segment(unique_lab_name(), nodes, **kwargs)
        made.append(plan.name)
        cluster.up(plan)
        return Lab(plan, LabFiles(plan.name))

    yield make
    for name in made:
        cluster.down(name)


@pytest.fixture
def lab(make_lab) -> Lab:
    """A one-node lab."""
    return make_lab(1)
