"""Which interpreter heads the plugin executables, and what they are (no root needed)."""

from __future__ import annotations

import importlib.util
import json
import marshal
import subprocess
import sys
from pathlib import Path

import pytest

from gingham.cni.install import Interpreter, choose, install_plugins, probe


def candidate(path: str, *, usable: bool = True, shared: bool = False) -> Interpreter:
    return Interpreter(path, usable, shared, importlib.util.MAGIC_NUMBER, None, b"")


def test_an_interpreter_with_libpython_linked_in_is_preferred():
    picked = choose([candidate("/venv/python", shared=True), candidate("/usr/bin/python3")])
    assert picked.path == "/usr/bin/python3"


def test_else_the_first_usable_one():
    picked = choose([candidate("/old/python", usable=False, shared=False),
                     candidate("/venv/python", shared=True),
                     candidate("/other/python", shared=True)])
    assert picked.path == "/venv/python"


def test_no_usable_interpreter_is_an_error():
    with pytest.raises(RuntimeError):
        choose([candidate("/old/python", usable=False)])


def test_probe_of_a_missing_interpreter_is_none(tmp_path: Path):
    assert probe(str(tmp_path / "python")) is None


def test_probe_compiles_the_shim_with_that_interpreter():
    found = probe(sys.executable)
    assert found is not None and found.usable
    assert found.magic == importlib.util.MAGIC_NUMBER
    code = marshal.loads(found.code)
    assert "main" in code.co_names


def test_installed_plugins_answer_version_with_an_empty_environment(tmp_path: Path):
    for path in install_plugins(tmp_path):
        proc = subprocess.run([str(path)], env={"CNI_COMMAND": "VERSION"}, input=b"{}",
                              capture_output=True, timeout=30, check=True)
        assert "1.1.0" in json.loads(proc.stdout)["supportedVersions"]


def test_a_plugin_run_by_another_version_falls_back_to_its_source(tmp_path: Path):
    """The precompiled shim is for one bytecode format; any other compiles shim.py."""
    (path, _) = install_plugins(tmp_path)
    text = path.read_text().replace('"MAGIC_NUMBER", None) == ', '"MAGIC_NUMBER", None) != ', 1)
    assert text != path.read_text()
    path.write_text(text)
    proc = subprocess.run([str(path)], env={"CNI_COMMAND": "ADD"}, input=b"{}",
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 4
