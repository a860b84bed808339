"""No two leases overlap: free means overlapping nothing taken, configs that strand a live
lease are refused, and overlaps found in a store are never routed."""

from __future__ import annotations

import ipaddress
import json

import pytest

from gingham.model.network import parse_network_config
from gingham.store.sqlite import EmbeddedStore
from gingham.subnet.config_change import ConfigRefused, change_config
from gingham.subnet.lease import Lease, LeaseAttrs
from gingham.subnet.manager import ConfigChanged, LeaseManager
from gingham.subnet.registry import SubnetRegistry
from gingham.subnet.space import (
    Taken,
    leases_that_do_not_fit,
    misfit,
    overlapping,
    pick_free_subnet,
    routable,
)

N = ipaddress.IPv4Network


def lease(subnet: str, node: str = "n", created: int = 0) -> Lease:
    return Lease(N(subnet), LeaseAttrs(ipaddress.IPv4Address("192.168.50.11"), "host-gw", node),
                 create_revision=created)


def test_a_candidate_inside_a_larger_lease_is_not_free():
    cfg = parse_network_config({"Network": "10.244.0.0/16", "SubnetLen": 28,
                                "SubnetMin": "10.244.1.0"})
    # The case: node1 holds the /24 that the new config's first /28 lies in.
    got = pick_free_subnet(cfg.subnets(), {N("10.244.1.0/24")})
    assert got == N("10.244.2.0/28")
    assert pick_free_subnet(cfg.subnets(), {N("10.244.1.0/24")},
                            preferred=N("10.244.1.16/28")) == N("10.244.2.0/28")


def test_a_candidate_holding_a_smaller_lease_is_not_free():
    cands = [N("10.244.0.0/24"), N("10.244.1.0/24")]
    assert pick_free_subnet(cands, {N("10.244.0.200/30")}) == N("10.244.1.0/24")
    assert pick_free_subnet(cands, {N("10.244.0.200/30"), N("10.244.1.255/32")}) is None


def test_taken_intervals_answer_overlaps_at_every_edge():
    taken = Taken([N("10.0.0.0/24"), N("10.0.1.0/24"), N("10.0.4.0/22"), N("10.0.5.0/24")])
    assert taken.overlaps(N("10.0.0.128/25")) and taken.overlaps(N("10.0.0.0/16"))
    assert taken.overlaps(N("10.0.7.255/32")) and taken.overlaps(N("10.0.1.0/32"))
    assert not taken.overlaps(N("10.0.2.0/23")) and not taken.overlaps(N("10.0.8.0/32"))
    assert not Taken([]).overlaps(N("0.0.0.0/0"))


def test_overlapping_finds_every_member_of_every_clash():
    subnets = [N("10.0.0.0/16"), N("10.0.1.0/24"), N("10.0.1.128/25"), N("10.1.0.0/24"),
               N("10.2.0.0/24"), N("10.2.0.0/24")]
    assert overlapping(subnets) == {N("10.0.0.0/16"), N("10.0.1.0/24"), N("10.0.1.128/25")}
    assert overlapping([N("10.0.0.0/24"), N("10.0.1.0/24")]) == set()


def test_misfit_names_the_reason():
    cfg = parse_network_config({"Network": "10.244.0.0/16", "SubnetLen": 24,
                                "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.20.0"})
    assert misfit(N("10.244.12.0/24"), cfg) is None
    assert "outside Network" in misfit(N("10.245.12.0/24"), cfg)
    assert "not a /24" in misfit(N("10.244.12.0/28"), cfg)
    assert "SubnetMin" in misfit(N("10.244.9.0/24"), cfg)
    assert "SubnetMin" in misfit(N("10.244.21.0/24"), cfg)
    assert leases_that_do_not_fit(cfg, [lease("10.244.12.0/24"), lease("10.244.9.0/24", "b")]) \
        == ["10.244.9.0/24 of b is outside SubnetMin 10.244.10.0 .. SubnetMax 10.244.20.0"]


def test_of_overlapping_leases_the_first_is_routed_and_the_others_reported():
    own = N("10.244.1.0/24")
    leases = [lease("10.244.1.0/24", "me", 5), lease("10.244.1.16/28", "intruder", 9),
              lease("10.244.2.64/26", "c", 12), lease("10.244.2.0/24", "b", 7),
              lease("10.244.2.128/25", "e", 3), lease("10.244.3.0/24", "d", 8)]
    keep, problems = routable(own, leases)
    # c overlaps only b, which is not routed: c's addresses are c's alone.
    assert sorted(x.attrs.node_name for x in keep) == ["c", "d", "e", "me"]
    assert sorted(problems) == [
        "lease 10.244.1.16/28 of intruder overlaps the earlier lease 10.244.1.0/24 of this "
        "node; not routed (delete one of them)",
        "lease 10.244.2.0/24 of b overlaps the earlier lease 10.244.2.128/25 of e; not routed "
        "(delete one of them)"]
    assert routable(own, leases[3:4]) == (leases[3:4], [])


@pytest.fixture
def registry(tmp_path):
    store = EmbeddedStore(tmp_path / "s.db")
    yield SubnetRegistry(store, "/t")
    store.close()


def attrs(node: str) -> LeaseAttrs:
    return LeaseAttrs(ipaddress.IPv4Address("192.168.50.11"), "host-gw", node)


def test_config_set_refuses_a_config_that_strands_a_lease(registry):
    change_config(registry, json.dumps({"Network": "10.244.0.0/16",
                                        "Backend": {"Type": "host-gw"}}))
    LeaseManager(registry, registry.get_config()).acquire(attrs("node1"))
    with pytest.raises(ConfigRefused, match=r"10.244.1.0/24 of node1 is a /24, not a /28"):
        change_config(registry, json.dumps({"Network": "10.244.0.0/16", "SubnetLen": 28,
                                            "SubnetMin": "10.244.1.0"}))
    with pytest.raises(ConfigRefused, match=r"outside Network 10.245.0.0/16"):
        change_config(registry, json.dumps({"Network": "10.245.0.0/16"}))
    assert registry.get_config().subnet_len == 24  # nothing stored
    # A change every lease fits is stored.
    wider = change_config(registry, json.dumps({"Network": "10.244.0.0/16",
                                                "SubnetMax": "10.244.200.0"}))
    assert registry.get_config() == wider


def test_config_without_backend_keeps_the_stored_one_unless_replaced(registry):
    change_config(registry, json.dumps({"Network": "10.244.0.0/16",
                                        "Backend": {"Type": "vxlan", "VNI": 7}}))
    kept = change_config(registry, json.dumps({"Network": "10.244.0.0/16",
                                               "SubnetMax": "10.244.100.0"}))
    assert (kept.backend.type, kept.backend.options) == ("vxlan", {"VNI": 7})
    replaced = change_config(registry, json.dumps({"Network": "10.244.0.0/16"}), replace=True)
    assert (replaced.backend.type, replaced.backend.options) == ("vxlan", {})
    change_config(registry, json.dumps({"Network": "10.244.0.0/16",
                                        "Backend": {"Type": "host-gw"}}))
    assert change_config(registry, '{"Network": "10.244.0.0/16"}').backend.type == "host-gw"


def test_an_allocation_under_an_outdated_config_writes_nothing(registry):
    change_config(registry, json.dumps({"Network": "10.244.0.0/16"}))
    stale = LeaseManager(registry, registry.get_config())
    change_config(registry, json.dumps({"Network": "10.244.0.0/16", "SubnetLen": 26}))
    with pytest.raises(ConfigChanged):
        stale.acquire(attrs("node1"))
    assert registry.leases().leases == []
