"""CLI parsing that needs no root: the agent's config file, datastore selection from the
environment, one-line errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gingham.cli.main import cli


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
