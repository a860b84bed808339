"""CLI parsing that needs no root: the agent's config file, datastore selection from the
environment, one-line errors, output to a closed pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
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


# -- NetworkPolicy resources --------------------------------------------------------------

POLICIES = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: In, values: [front, edge]}]
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"""


def store_env(tmp_path: Path) -> dict:
    return {"GINGHAM_DATASTORE": "embedded", "GINGHAM_STORE_PATH": str(tmp_path / "s.db")}


def stored_policies(tmp_path: Path) -> dict[str, bytes]:
    from gingham.store.sqlite import EmbeddedStore

    store = EmbeddedStore(tmp_path / "s.db")
    try:
        kvs, _ = store.range("/gingham/network/networkpolicies/")
        return {kv.key: kv.value for kv in kvs}
    finally:
        store.close()


def test_network_policies_apply_and_get_as_kubectl_shows_them(tmp_path):
    env, path = store_env(tmp_path), tmp_path / "np.yaml"
    path.write_text(POLICIES)
    assert run("apply", "-f", str(path), env=env).output == (
        "Successfully applied 2 'NetworkPolicy' resource(s)\n")
    assert run("get", "networkpolicies", env=env).output.splitlines() == [
        "NAME  POD-SELECTOR",
        "web   app=web,tier in (edge,front)"]
    assert run("get", "netpol", "-n", "shop", env=env).output.splitlines() == [
        "NAME      POD-SELECTOR",
        "deny-all  <none>"]
    assert run("get", "networkpolicy", "-A", "-o", "wide", env=env).output.splitlines() == [
        "NAMESPACE  NAME      POD-SELECTOR                  POLICY-TYPES    INGRESS-RULES  "
        "EGRESS-RULES",
        "default    web       app=web,tier in (edge,front)  Ingress         1              0",
        "shop       deny-all  <none>                        Ingress,Egress  0              0"]
    assert run("get", "networkpolicies", "-n", "other", env=env).output == "NAME  POD-SELECTOR\n"
    listed = yaml.safe_load(run("get", "networkpolicies", "-A", "-o", "yaml", env=env).output)
    assert (listed["apiVersion"], listed["kind"]) == ("networking.k8s.io/v1", "NetworkPolicyList")
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed["items"]] == [
        ("default", "web"), ("shop", "deny-all")]
    one = json.loads(run("get", "networkpolicies", "web", "-o", "json", env=env).output)
    assert one == listed["items"][0] and one["spec"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 80}]
    assert yaml.safe_load(run("get", "netpol", "deny-all", "-n", "shop", "-o", "yaml",
                              env=env).output) == listed["items"][1]


def test_network_policy_get_output_applies_back_unchanged(tmp_path):
    env, path = store_env(tmp_path), tmp_path / "np.yaml"
    path.write_text(POLICIES)
    run("apply", "-f", str(path), env=env)
    before = stored_policies(tmp_path)
    assert sorted(before) == ["/gingham/network/networkpolicies/default/web",
                              "/gingham/network/networkpolicies/shop/deny-all"]
    # a NetworkPolicyList of every namespace, and one policy's document
    for output, which in (("yaml", ("-A",)), ("json", ("web", "-n", "default"))):
        shown = tmp_path / f"shown.{output}"
        shown.write_text(run("get", "networkpolicies", *which, "-o", output, env=env).output)
        assert run("apply", "-f", str(shown), env=env).exit_code == 0
        assert stored_policies(tmp_path) == before


def test_network_policies_delete_by_name_and_by_file(tmp_path):
    env, path = store_env(tmp_path), tmp_path / "np.yaml"
    path.write_text(POLICIES)
    run("apply", "-f", str(path), env=env)
    missing = run("delete", "netpol", "deny-all", env=env)  # not in `default`
    assert (missing.exit_code, missing.stderr) == (
        1, "gingham: error: NetworkPolicy default/deny-all: does not exist; nothing was "
           "deleted\n")
    assert run("delete", "networkpolicy", "deny-all", "-n", "shop", env=env).output == (
        "Successfully deleted 1 'NetworkPolicy' resource(s)\n")
    assert list(stored_policies(tmp_path)) == ["/gingham/network/networkpolicies/default/web"]
    # the file's deny-all is gone: nothing of the file is deleted
    assert run("delete", "-f", str(path), env=env).exit_code == 1
    assert len(stored_policies(tmp_path)) == 1
    path.write_text(POLICIES.partition("---")[0])
    assert run("delete", "-f", str(path), env=env).exit_code == 0
    assert stored_policies(tmp_path) == {}
    wrong = run("get", "networkpolicies", "web", "-A", env=env)
    assert wrong.exit_code == 2 and "give -n, not -A" in wrong.output


@pytest.mark.parametrize(("spec", "says"), [
    ("{podSelector: {}, ingress: [{form: []}]}", "unknown field spec.ingress[0].form"),
    ("{podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}",
     "spec.podSelector.matchExpressions[0].operator 'Equals' is not one of In, NotIn, "
     "Exists, DoesNotExist"),
    ("{podSelector: {}, egress: [{ports: [{port: 0}]}]}",
     "spec.egress[0].ports[0].port 0 is outside 1-65535"),
    ("{podSelector: {}, ingress: [{ports: [{port: 443, endPort: 80}]}]}",
     "spec.ingress[0].ports[0].endPort 80 is below port 443"),
    ("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0}}]}]}",
     "spec.egress[0].to[0].ipBlock.cidr '10.0.0.0' is not a CIDR (address/length)"),
    ("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, "
     "except: [10.0.0.0/16]}}]}]}",
     "spec.egress[0].to[0].ipBlock.except[0] 10.0.0.0/16 is not strictly inside cidr "
     "10.0.0.0/16"),
])
def test_a_bad_network_policy_is_refused_in_one_line_and_nothing_is_written(tmp_path, spec,
                                                                            says):
    env, path = store_env(tmp_path), tmp_path / "np.yaml"
    path.write_text(f"{POLICIES}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                    f"metadata: {{name: bad, namespace: shop}}\nspec: {spec}\n")
    result = run("apply", "-f", str(path), env=env)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"gingham: error: {path}: document 3 (NetworkPolicy bad): {says}\n"
    assert stored_policies(tmp_path) == {}


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
