"""CNI results across versions, the environment contract, the wire format and the shim's
JSON-free field scanner."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from gingham.cni import shim
from gingham.cni.environment import REQUIRED, parse_env
from gingham.cni.result import Interface, IPConfig, Result, Route
from gingham.cni.spec import INVALID_ENVIRONMENT, CniError
from gingham.cni.wire import WireError, decode_request

RESULT = Result(
    interfaces=[Interface("vethabc", "aa:bb:cc:dd:ee:ff"), Interface("eth0", sandbox="/ns")],
    ips=[IPConfig(ipaddress.IPv4Interface("10.0.0.2/24"), ipaddress.IPv4Address("10.0.0.1"),
                  1)],
    routes=[Route(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Address("10.0.0.1"))],
)


def test_result_1x_has_no_ip_version_and_040_has():
    assert "version" not in RESULT.to_json("1.0.0")["ips"][0]
    assert RESULT.to_json("0.4.0")["ips"][0]["version"] == "4"


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_result_round_trips(version):
    assert Result.from_json(RESULT.to_json(version)) == RESULT


def test_extended_by_shifts_interface_indices():
    prev = Result(interfaces=[Interface("lo")])
    merged = prev.extended_by(RESULT)
    assert [i.name for i in merged.interfaces] == ["lo", "vethabc", "eth0"]
    assert merged.ips[0].interface == 2


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}


def test_env_parses_path_list():
    assert parse_env(ENV).path == ("/opt/cni/bin", "/usr/lib/cni")


@pytest.mark.parametrize("change", [
    {"CNI_COMMAND": "ADDD"}, {"CNI_COMMAND": ""}, {"CNI_CONTAINERID": ""},
    {"CNI_CONTAINERID": "bad id!"}, {"CNI_NETNS": ""}, {"CNI_IFNAME": "x" * 16},
    {"CNI_IFNAME": "a/b"}, {"CNI_IFNAME": ".."}, {"CNI_PATH": ""},
])
def test_env_problems_are_code_4(change):
    with pytest.raises(CniError) as err:
        parse_env({**ENV, **change})
    assert err.value.code == INVALID_ENVIRONMENT


def test_del_needs_no_netns():
    assert parse_env({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).command == "DEL"


def test_wire_decodes_what_the_shim_sends():
    call = decode_request(b"GINGHAM/1\0ipam\0CNI_COMMAND=DEL\0CNI_ARGS=A=b;C=d\0\0{\"x\": 1}")
    assert call.role == "ipam"
    assert call.env == {"CNI_COMMAND": "DEL", "CNI_ARGS": "A=b;C=d"}
    assert json.loads(call.stdin) == {"x": 1}


@pytest.mark.parametrize("data", [b"", b"GINGHAM/1\0main", b"OTHER\0main\0\0{}",
                                  b"GINGHAM/1\0main\0NOEQUALS\0\0{}"])
def test_wire_rejects_garbage(data):
    with pytest.raises(WireError):
        decode_request(data)


@pytest.mark.parametrize(("raw", "want"), [
    (b'{"cniVersion": "1.0.0", "agentSocket":"/a/b.sock"}', b"/a/b.sock"),
    (b'{"agentSocket" :\n "/x"}', b"/x"),
    (b'{"agentSocket": 5}', None),
    (b'{"agentSocket": "/with\\"quote"}', None),
    (b'{"name": "x"}', None),
])
def test_shim_finds_string_fields_without_json(raw, want):
    assert shim.string_field(raw, b"agentSocket") == want


def agent_verdict(env: dict[str, str]) -> tuple[str, str] | None:
    try:
        parse_env(env)
    except CniError as err:
        return err.msg, err.details
    return None


def shim_verdict(env: dict[str, str]) -> tuple[str, str] | None:
    raw = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in env.items()}
    found = shim.env_problem(raw, raw.get(b"CNI_COMMAND", b""))
    return found and (found[0].decode(), found[1].decode("utf-8", "surrogateescape"))


def env_cases():
    """Every command with each variable dropped or emptied, and container IDs and interface
    names of every kind, ASCII character by character."""
    ids = ["abc", "A1", "a-b_c.d", "-abc", ".a", "a b", "c1\n", "a/b", "é", "a\udcff", "a:b"]
    ifnames = [f"et{chr(c)}h0" for c in range(1, 128)] + [
        "x" * 15, "x" * 16, ".", "..", "...", "é" * 8, "é" * 15 + "/", "eth\u00a00", "a\udcff"]
    for command in ("ADD", "CHECK", "DEL", "STATUS", "GC", "", "BOGUS", "add"):
        base = {**ENV, "CNI_COMMAND": command}
        yield base
        for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
            yield {k: v for k, v in base.items() if k != key}
            yield {**base, key: ""}
        yield from ({**base, "CNI_CONTAINERID": cid} for cid in ids)
        yield from ({**base, "CNI_IFNAME": name} for name in ifnames)
        yield {**base, "CNI_CONTAINERID": "a b", "CNI_IFNAME": "x" * 16, "CNI_NETNS": ""}


def test_shim_requires_what_the_agent_requires():
    agent = {command.encode(): tuple(key.encode() for key in keys)
             for command, keys in REQUIRED.items() if command != "VERSION"}
    assert agent == shim.REQUIRED_ENV


def test_shim_judges_the_environment_as_the_agent_does():
    """Same verdict, same words; only a non-ASCII interface name, which bytes cannot
    measure in characters, is left by the shim for the agent to judge."""
    differ = [(env, shim_verdict(env), agent_verdict(env)) for env in env_cases()
              if shim_verdict(env) != agent_verdict(env)]
    assert [(env["CNI_IFNAME"], shim_says, agent_says) for env, shim_says, agent_says in differ
            ] == [("eth\u00a00", None, ("CNI_IFNAME is not a valid interface name",
                                         "eth\u00a00"))] * 3  # ADD, CHECK, DEL


def test_shim_error_object_is_json_whatever_the_details_hold(monkeypatch):
    out: list[bytes] = []
    monkeypatch.setattr(shim, "write_all", out.append)
    details = bytes(range(256)) + b'\\"x'
    assert shim.fail(4, b"bad", details, b"1.1.0") == 1
    error = json.loads(out[0])
    assert error["details"].encode("latin-1") == details
    assert (error["code"], error["msg"], error["cniVersion"]) == (4, "bad", "1.1.0")


def test_shim_imports_nothing_heavy():
    """The shim is exec'd per pod: json or socket would double its start time."""
    source = Path(shim.__file__).read_text()
    imports = {line.split()[1] for line in source.splitlines()
               if line.startswith(("import ", "from "))}
    assert imports <= {"_socket", "os", "posix", "sys"}
