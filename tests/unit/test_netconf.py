"""Parsing the plugin's network config: every bad input is a CNI error with the right code."""

from __future__ import annotations

import json

import pytest

from gingham.cni.result import Result
from gingham.cni.spec import DECODING_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, CniError
from gingham.model import netconf

BASE = {"cniVersion": "1.0.0", "name": "net", "type": "gingham"}


def parse(**overrides):
    return netconf.parse(json.dumps({**BASE, **overrides}).encode())


def code_of(stdin: bytes, **kwargs) -> int:
    with pytest.raises(CniError) as err:
        netconf.parse(stdin, **kwargs)
    return err.value.code


def test_minimal_config_defaults():
    conf = parse()
    assert (conf.bridge, conf.mtu, conf.hairpin, conf.ipam) == ("cni0", None, True, None)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_supported_versions(version):
    assert parse(cniVersion=version).cni_version == version


@pytest.mark.parametrize("version", ["0.3.1", "0.2.0", "2.0.0"])
def test_unsupported_version_is_code_1(version):
    assert code_of(json.dumps({**BASE, "cniVersion": version}).encode()) == INCOMPATIBLE_VERSION


@pytest.mark.parametrize("stdin", [b"", b"{", b"[1]", b"\xff\xfe"])
def test_not_json_is_code_6(stdin):
    assert code_of(stdin) == DECODING_FAILURE


@pytest.mark.parametrize("bad", [
    {"cniVersion": None}, {"name": ""}, {"type": 3}, {"mtu": 10}, {"mtu": "1500"},
    {"mtu": True}, {"bridge": "x" * 16}, {"hairpinMode": "yes"}, {"dns": []},
    {"ipam": "host-local"}, {"ipam": {}},
    {"ipam": {"type": "gingham-ipam", "subnet": "10.1.0.0/31"}},
    {"ipam": {"type": "gingham-ipam", "subnet": "nonsense"}},
    {"ipam": {"type": "gingham-ipam", "subnet": "10.1.0.0/24", "rangeStart": "10.2.0.5"}},
    {"ipam": {"type": "gingham-ipam", "subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9",
              "rangeEnd": "10.1.0.5"}},
    {"ipam": {"type": "gingham-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}],
                                                 [{"subnet": "10.2.0.0/24"}]]}},
    {"ipam": {"type": "gingham-ipam", "ranges": [[]]}},
    {"prevResult": {"ips": [{"address": "not-an-ip"}]}},
    {"cni.dev/valid-attachments": [{"ifname": "eth0"}]},
])
def test_invalid_config_is_code_7(bad):
    assert code_of(json.dumps({**BASE, **bad}).encode()) == INVALID_CONFIG


def test_ipam_ranges_and_subnet_shorthand():
    conf = parse(ipam={"type": "gingham-ipam", "subnet": "10.1.0.0/24",
                       "rangeStart": "10.1.0.10", "gateway": "10.1.0.254",
                       "routes": [{"dst": "0.0.0.0/0"}]})
    (rng,) = conf.ipam.ranges
    assert str(rng.range_start) == "10.1.0.10" and str(rng.gateway) == "10.1.0.254"
    assert str(conf.ipam.routes[0].dst) == "0.0.0.0/0"


def test_delegated_ipam_is_not_validated_here():
    conf = parse(ipam={"type": "host-local", "ranges": "whatever"})
    assert conf.ipam.type == "host-local" and conf.ipam.ranges == []


def test_prev_result_and_valid_attachments():
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "x"}],
            "ips": [{"address": "10.1.0.2/24", "interface": 0}]}
    conf = parse(prevResult=prev,
                 **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})
    assert isinstance(conf.prev_result, Result)
    assert conf.valid_attachments == [("a", "eth0")]


def test_ipam_only_parse_ignores_main_plugin_keys():
    conf = netconf.parse(json.dumps({**BASE, "type": "bridge", "bridge": "x" * 30,
                                     "ipam": {"type": "gingham-ipam"}}).encode(),
                         ipam_only=True)
    assert conf.ipam.type == "gingham-ipam"
