"""net-conf.json parsing, lease codecs and the lease manager over an embedded store."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

import pytest

from gingham.model.network import NetworkConfigError, parse_network_config
from gingham.store.sqlite import EmbeddedStore
from gingham.subnet.lease import LeaseAttrs, LeaseDataError, subnet_of_key
from gingham.subnet.manager import LeaseManager, SubnetExhausted
from gingham.subnet.registry import ConfigMissing, SubnetRegistry
from gingham.subnet.space import pick_free_subnet

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


def test_flannel_defaults():
    cfg = parse_network_config(b'{"Network": "10.244.0.0/16"}')
    assert cfg.subnet_len == 24
    assert (str(cfg.subnet_min), str(cfg.subnet_max)) == ("10.244.1.0", "10.244.255.0")
    assert cfg.backend.type == "vxlan"
    assert len(cfg.subnets()) == 255
    small = parse_network_config({"Network": "10.9.0.0/26", "Backend": {"Type": "host-gw"}})
    assert small.subnet_len == 28 and len(small.subnets()) == 3


def test_backend_options_are_kept():
    cfg = parse_network_config({"Network": "10.244.0.0/16",
                                "Backend": {"Type": "vxlan", "VNI": 4, "Port": 4789}})
    assert cfg.backend.options == {"VNI": 4, "Port": 4789}
    assert parse_network_config(cfg.to_json()) == cfg


@pytest.mark.parametrize(("conf", "says"), [
    (b"{", "not JSON"), (b"[]", "object"), ({}, "no Network"),
    ({"Network": "10.0.0.0/33"}, "not an IPv4 CIDR"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 31}, "over /30"),
    ({"Network": "10.0.0.0/16", "SubnetLen": "abc"}, "^SubnetLen 'abc' is not a number$"),
    ({"Network": "10.0.0.0/16", "SubnetLen": "24"}, "SubnetLen '24' is not a number"),
    ({"Network": "10.0.0.0/16", "SubnetLen": True}, "^SubnetLen True is not a number$"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 24.5}, "^SubnetLen 24.5 is not an integer$"),
    ({"Network": "10.0.0.0/29"}, "over /30"),
    ({"Network": "10.0.0.0/29", "SubnetLen": 30}, "fewer than two"),
    ({"Network": "10.0.0.0/24", "SubnetLen": 25}, "fewer than two"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}, "outside"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.0.0.7"}, "boundary"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.0.9.0", "SubnetMax": "10.0.3.0"}, "after"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "carrier-pigeon"}}, "unknown backend"),
])
def test_bad_configs_say_why(conf, says):
    with pytest.raises(NetworkConfigError, match=says):
        parse_network_config(conf)


def test_lease_codec_and_keys():
    attrs = LeaseAttrs(A("192.168.50.11"), "host-gw", "node1", {"VtepMAC": "aa:bb"})
    assert LeaseAttrs.decode(attrs.encode()) == attrs
    assert subnet_of_key("/p", "/p/subnets/10.244.3.0-24") == N("10.244.3.0/24")
    for bad in (b"not json", b'{"PublicIP": "x", "BackendType": "h"}', b"[]"):
        with pytest.raises(LeaseDataError):
            LeaseAttrs.decode(bad)
    with pytest.raises(LeaseDataError):
        subnet_of_key("/p", "/p/subnets/garbage")


def test_pick_prefers_previous_when_free():
    cands = [N(f"10.0.{i}.0/24") for i in range(1, 5)]
    assert pick_free_subnet(cands, {cands[0]}) == cands[1]
    assert pick_free_subnet(cands, set(), preferred=cands[2]) == cands[2]
    assert pick_free_subnet(cands, {cands[2]}, preferred=cands[2]) == cands[0]
    assert pick_free_subnet(cands, set(cands)) is None


@pytest.fixture
def registry(tmp_path):
    store = EmbeddedStore(tmp_path / "store.db")
    reg = SubnetRegistry(store, "/t")
    reg.set_config(parse_network_config({"Network": "10.244.0.0/22",
                                         "Backend": {"Type": "host-gw"}}))
    yield reg
    store.close()


def attrs(n: int) -> LeaseAttrs:
    return LeaseAttrs(A(f"192.168.50.{10 + n}"), "host-gw", f"node{n}")


def test_missing_config_is_clear(tmp_path):
    with pytest.raises(ConfigMissing, match="gingham config set"):
        SubnetRegistry(EmbeddedStore(tmp_path / "empty.db")).get_config()


def test_same_node_gets_its_subnet_back(registry):
    cfg = registry.get_config()
    first = LeaseManager(registry, cfg).acquire(attrs(1))
    other = LeaseManager(registry, cfg).acquire(attrs(2))
    again = LeaseManager(registry, cfg).acquire(attrs(1))  # a restarted agent
    assert again.subnet == first.subnet != other.subnet
    assert len(registry.leases().leases) == 2


def test_exhaustion_and_reclaim_after_expiry(registry):
    cfg = registry.get_config()  # /22 in /24s, first skipped: 3 subnets
    managers = [LeaseManager(registry, cfg, ttl=2, renew_margin=1) for _ in range(3)]
    leases = [m.acquire(attrs(i)) for i, m in enumerate(managers)]
    with pytest.raises(SubnetExhausted, match="no free /24"):
        LeaseManager(registry, cfg).acquire(attrs(9))
    import time

    time.sleep(3)  # every lease lapses
    reclaimed = LeaseManager(registry, cfg).acquire(attrs(9))
    assert reclaimed.subnet in {lease.subnet for lease in leases}


def test_racing_agents_never_share_a_subnet(tmp_path):
    store = EmbeddedStore(tmp_path / "race.db")
    reg = SubnetRegistry(store, "/t")
    reg.set_config(parse_network_config({"Network": "10.244.0.0/16"}))
    cfg = reg.get_config()
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda i: LeaseManager(reg, cfg).acquire(attrs(i)).subnet,
                            range(40)))
    assert len(set(got)) == 40


def test_lapsed_lease_is_renewed_by_writing_it_again(registry):
    cfg = registry.get_config()
    manager = LeaseManager(registry, cfg, ttl=30, renew_margin=10)
    lease = manager.acquire(attrs(1))
    registry.store.revoke(lease.store_lease)
    assert registry.leases().leases == []
    renewed = manager.renew(lease)
    assert renewed.subnet == lease.subnet
    assert [x.subnet for x in registry.leases().leases] == [lease.subnet]


def test_corrupt_lease_value_is_reported_and_its_subnet_stays_taken(registry):
    registry.store.put("/t/subnets/10.244.1.0-24", b"{broken")
    listing = registry.leases()
    assert listing.problems and N("10.244.1.0/24") in listing.taken
    lease = LeaseManager(registry, registry.get_config()).acquire(attrs(1))
    assert lease.subnet == N("10.244.2.0/24")
