"""CLI parsing that needs no root: the agent's config file, datastore selection from the
environment, one-line errors, output to a closed pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gingham.cli import main
from gingham.cli.main import Gingham, cli
from gingham.cli.yamlfile import YamlFileError, load_yaml

GINGHAM = Path(sys.executable).parent / "gingham"


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_agent_reads_its_options_from_a_config_file(tmp_path):
    conf = tmp_path / "agent.yaml"
    conf.write_text("node-name: Not A Label\nsubnet: 10.244.1.0/24\n")
    result = run("agent", "--config", str(conf))
    assert result.exit_code == 1
    assert "node name 'Not A Label' must be a lowercase DNS label" in result.output


def test_agent_config_file_rejects_unknown_keys(tmp_path):
    conf = tmp_path / "agent.yaml"
    conf.write_text("node-name: n1\nendpoint: http://x:2379\n")
    result = run("agent", "--config", str(conf))
    assert result.exit_code == 2 and "unknown key 'endpoint'" in result.output


def test_subnet_and_datastore_are_exclusive():
    result = run("agent", "--node-name", "n1", "--subnet", "10.244.1.0/24",
                 "--datastore", "embedded")
    assert result.exit_code == 2 and "static mode" in result.output


def test_datastore_from_the_environment(tmp_path):
    env = {"GINGHAM_DATASTORE": "embedded", "GINGHAM_STORE_PATH": str(tmp_path / "s.db")}
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network": "10.50.0.0/16", "Backend": {"Type": "host-gw"}}')
    assert run("config", "set", "-f", str(conf), env=env).exit_code == 0
    shown = run("config", "show", env=env)
    assert json.loads(shown.output)["SubnetMin"] == "10.50.1.0"
    assert run("get", "subnets", env=env).output.split() == ["SUBNET", "NODE", "PUBLICIP"]


def test_no_datastore_chosen_is_a_usage_error():
    result = run("get", "nodes", env={"GINGHAM_DATASTORE": None, "GINGHAM_ENDPOINTS": None})
    assert result.exit_code == 2 and "choose a datastore" in result.output


def test_config_set_refuses_an_unknown_host_gw_option(tmp_path):
    env = {"GINGHAM_DATASTORE": "embedded", "GINGHAM_STORE_PATH": str(tmp_path / "s.db")}
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network": "10.50.0.0/16", "Backend": {"Type": "host-gw"}}')
    assert run("config", "set", "-f", str(conf), env=env).exit_code == 0
    conf.write_text('{"Network": "10.50.0.0/16", "Backend": {"Type": "host-gw", "Foo": 1}}')
    refused = run("config", "set", "-f", str(conf), env=env)
    assert refused.exit_code == 1
    assert "unknown host-gw option(s): Foo (known: none)" in refused.output
    assert json.loads(run("config", "show", env=env).output)["Backend"] == {"Type": "host-gw"}


# -- YAML files ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "says"), [
    ("segments:\n  - {name: left}\nnodes: a: b\n",
     "line 3, column 9: mapping values are not allowed here"),
    ("a: [1,\n", "line 2, column 1: expected the node content, but found '<stream end>' "
                 "(while parsing a flow node)"),
    ("x: 'abc\n", "line 2, column 1: found unexpected end of stream "
                  "(while scanning a quoted scalar)"),
    ("a: 1\nb: \x07\n", "line 2, column 4: unacceptable character #x0007: special "
                        "characters are not allowed"),
    ("a: *nothing\n", "line 1, column 4: found undefined alias 'nothing'"),
    ("spec:\n  asNumber: 1\n  asNumber: 2\n",
     "line 3, column 3: key 'asNumber' is given twice (first on line 2)"),
])
def test_yaml_errors_are_one_line_with_line_and_column(tmp_path, text, says):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(YamlFileError) as err:
        load_yaml(str(path))
    assert str(err.value) == f"cannot read {path}: {says}"


def test_yaml_that_is_not_utf8_or_not_readable(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_bytes(b"a: \xff\n")
    with pytest.raises(YamlFileError, match=r"^cannot read .*t.yaml: not UTF-8 text "
                                            r"\(invalid start byte at byte 3\)$"):
        load_yaml(str(path))
    with pytest.raises(YamlFileError, match=r"^cannot read .*: Is a directory$"):
        load_yaml(str(tmp_path))


def test_agent_config_file_that_is_not_yaml_is_one_line(tmp_path):
    conf = tmp_path / "agent.yaml"
    conf.write_text("node-name: n1\nsubnet: a: b\n")
    result = run("agent", "--config", str(conf))
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (  # after Click's usage lines
        f"Error: Invalid value for '--config': cannot read {conf}: line 2, column 10: "
        "mapping values are not allowed here")


# -- a closed pipe ------------------------------------------------------------------------

def closed_pipe() -> int:
    """The write end of a pipe nobody reads any more (`| head -1` after head has exited)."""
    read, write = os.pipe()
    os.close(read)
    return write


def test_output_to_a_closed_pipe_ends_quietly(tmp_path):
    write = closed_pipe()
    try:
        proc = subprocess.run([str(GINGHAM), "get", "nodes", "--datastore", "embedded",
                               "--store-path", str(tmp_path / "s.db")],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (1, "")


def broken_pipe_cli() -> Gingham:
    """A root group with one command that fails as a write to a gone peer would."""
    group = Gingham(name="gingham")

    @group.command()
    def send() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    return group


def test_a_broken_pipe_that_is_not_stdout_is_still_reported(monkeypatch, tmp_path):
    with open(tmp_path / "out", "w") as out:  # stdout is fine: a socket of the command broke
        monkeypatch.setattr(main, "STDOUT", out.fileno())
        result = CliRunner().invoke(broken_pipe_cli(), ["send"])
    assert (result.exit_code, result.output) == (1, "gingham: error: [Errno 32] Broken pipe\n")


def test_a_broken_pipe_on_stdout_leaves_it_on_dev_null(monkeypatch):
    write = closed_pipe()
    try:
        monkeypatch.setattr(main, "STDOUT", write)
        result = CliRunner().invoke(broken_pipe_cli(), ["send"])
        assert (result.exit_code, result.output) == (1, "")
        assert os.path.samestat(os.fstat(write), os.stat(os.devnull))
    finally:
        os.close(write)
