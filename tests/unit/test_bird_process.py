"""BirdProcess refuses what it cannot run before it touches anything: no BIRD on the
machine, or a config BIRD rejects (the one in force stays; no BIRD is started)."""

from __future__ import annotations

import shutil

import pytest

from gingham.calico.bird import BirdProcess

pytestmark = pytest.mark.unit


def test_no_bird_on_the_machine_is_one_clear_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert BirdProcess(tmp_path).apply("router id 1.2.3.4;\n") == [
        "BIRD is not installed (Debian package bird2): no BGP on this node"]
    assert not (tmp_path / "bird.conf").exists()


@pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird2 (make setup)")
def test_a_config_bird_rejects_leaves_the_one_in_force(tmp_path):
    bird = BirdProcess(tmp_path)
    (tmp_path / "bird.conf").write_text("router id 1.2.3.4;\n")
    problems = bird.apply("router id 1.2.3.4;\nprotocol bgp {\n")
    assert len(problems) == 1 and problems[0].startswith("BIRD rejects the new config (")
    assert problems[0].endswith("); the previous one stays in force")
    assert (tmp_path / "bird.conf").read_text() == "router id 1.2.3.4;\n"
    assert bird.pid is None and bird.child is None  # nothing started
