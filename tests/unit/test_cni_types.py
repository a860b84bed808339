"""CNI results across versions, the environment contract, the wire format and the shim's
JSON-free field scanner."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from gingham.cni import shim
from gingham.cni.environment import parse_env
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


def test_shim_imports_nothing_heavy():
    """The shim is exec'd per pod: json or socket would double its start time."""
    source = Path(shim.__file__).read_text()
    imports = {line.split()[1] for line in source.splitlines()
               if line.startswith(("import ", "from "))}
    assert imports <= {"_socket", "os", "posix", "sys"}
