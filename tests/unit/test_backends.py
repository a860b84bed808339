"""Backend planning and the route diff: pure, no kernel."""

from __future__ import annotations

import ipaddress

import pytest

from gingham.backends import ipip, registry
from gingham.backends.hostgw import HostGwBackend
from gingham.backends.ipip import KernelIpipBackend, UserspaceIpipBackend
from gingham.backends.options import BackendConfigError
from gingham.backends.registry import check_options, make_backend
from gingham.backends.vxlan import VxlanBackend, VxlanOptions
from gingham.dataplane.routes import RouteIntent, diff_routes
from gingham.dataplane.uplink import Uplink
from gingham.dataplane.vxlan import FdbIntent, NeighIntent, stable_mac
from gingham.model.files import parse_subnet_env, render_subnet_env
from gingham.model.network import BackendConfig
from gingham.subnet.lease import Lease, LeaseAttrs

N, A = ipaddress.IPv4Network, ipaddress.IPv4Address
UPLINK = Uplink("eth0", 2, ipaddress.IPv4Interface("192.168.50.11/24"), 1500)


def lease(subnet: str, ip: str, backend: str = "host-gw", node: str = "n") -> Lease:
    return Lease(N(subnet), LeaseAttrs(A(ip), backend, node))


def test_host_gw_routes_every_other_lease_via_its_node():
    own = lease("10.244.1.0/24", "192.168.50.11")
    plan = HostGwBackend(UPLINK).plan(own, [own, lease("10.244.2.0/24", "192.168.50.12")])
    assert plan.routes == {RouteIntent(N("10.244.2.0/24"), A("192.168.50.12"), 2)}
    assert plan.problems == []


def test_host_gw_refuses_a_next_hop_behind_a_router():
    own = lease("10.244.1.0/24", "192.168.50.11")
    far = lease("10.244.3.0/24", "192.168.60.13", node="node3")
    plan = HostGwBackend(UPLINK).plan(own, [own, far])
    assert plan.routes == set()
    (problem,) = plan.problems
    assert "192.168.60.13" in problem and "not on a directly connected subnet" in problem


def test_host_gw_skips_leases_of_other_backends():
    own = lease("10.244.1.0/24", "192.168.50.11")
    plan = HostGwBackend(UPLINK).plan(own, [lease("10.244.2.0/24", "192.168.50.12", "vxlan")])
    assert plan.routes == set() and "vxlan" in plan.problems[0]


def intent(dst: str, gw: str) -> RouteIntent:
    return RouteIntent(N(dst), A(gw), 2)


def test_diff_sets_missing_and_changed_removes_stale():
    desired = {intent("10.244.2.0/24", "192.168.50.12"), intent("10.244.3.0/24", "192.168.50.13")}
    owned = {intent("10.244.2.0/24", "192.168.50.99"), intent("10.244.9.0/24", "192.168.50.19")}
    diff = diff_routes(desired, owned, set())
    assert diff.to_set == sorted(desired)
    assert diff.to_remove == [intent("10.244.9.0/24", "192.168.50.19")]


def test_diff_never_touches_a_foreign_route():
    desired = {intent("10.244.2.0/24", "192.168.50.12")}
    diff = diff_routes(desired, set(), {N("10.244.2.0/24")})
    assert diff.to_set == [] and diff.to_remove == [] and diff.blocked == [N("10.244.2.0/24")]


def test_diff_of_equal_sets_is_empty():
    same = {intent("10.244.2.0/24", "192.168.50.12")}
    diff = diff_routes(same, same, set())
    assert diff.to_set == diff.to_remove == []


def test_subnet_env_round_trip():
    text = render_subnet_env(N("10.244.0.0/16"), ipaddress.IPv4Interface("10.244.7.1/24"),
                             1450, False)
    network, gateway, mtu = parse_subnet_env(text)
    assert (str(network), str(gateway), mtu) == ("10.244.0.0/16", "10.244.7.1/24", 1450)


# -- vxlan -------------------------------------------------------------------------------

def vxlan_lease(subnet: str, ip: str, mac: str, vni: int = 1) -> Lease:
    return Lease(N(subnet), LeaseAttrs(A(ip), "vxlan", "n", {"VNI": vni, "VtepMAC": mac}))


def vxlan_backend(**options) -> VxlanBackend:
    backend = VxlanBackend(VxlanOptions.parse(BackendConfig("vxlan", options)), UPLINK, "node1")
    backend.index = 7  # as after setup()
    return backend


def test_vxlan_plans_route_neighbour_and_fdb_per_remote_node():
    own = vxlan_lease("10.244.1.0/24", "192.168.50.11", "02:00:00:00:00:01")
    far = vxlan_lease("10.244.5.0/24", "192.168.60.15", "02:00:00:00:00:05")
    plan = vxlan_backend().plan(own, [own, far])
    assert plan.routes == {RouteIntent(N("10.244.5.0/24"), A("10.244.5.0"), 7, onlink=True)}
    assert plan.neighbours == {NeighIntent(A("10.244.5.0"), "02:00:00:00:00:05")}
    assert plan.fdb == {FdbIntent("02:00:00:00:00:05", A("192.168.60.15"))}
    assert plan.problems == []


def test_direct_routing_uses_host_gw_on_the_same_subnet_only():
    own = vxlan_lease("10.244.1.0/24", "192.168.50.11", "02:00:00:00:00:01")
    near = vxlan_lease("10.244.2.0/24", "192.168.50.12", "02:00:00:00:00:02")
    far = vxlan_lease("10.244.5.0/24", "192.168.60.15", "02:00:00:00:00:05")
    plan = vxlan_backend(DirectRouting=True).plan(own, [own, near, far])
    assert RouteIntent(N("10.244.2.0/24"), A("192.168.50.12"), 2) in plan.routes
    assert [f.dst for f in plan.fdb] == [A("192.168.60.15")]


def test_vxlan_refuses_leases_it_cannot_reach():
    own = vxlan_lease("10.244.1.0/24", "192.168.50.11", "02:00:00:00:00:01")
    bad_mac = vxlan_lease("10.244.2.0/24", "192.168.50.12", "not-a-mac")
    other_vni = vxlan_lease("10.244.3.0/24", "192.168.50.13", "02:00:00:00:00:03", vni=9)
    plan = vxlan_backend().plan(own, [own, bad_mac, other_vni])
    assert plan.routes == set() and len(plan.problems) == 2


def test_vxlan_lease_data_mtu_and_stable_mac():
    backend = vxlan_backend(VNI=4, Port=4789)
    assert backend.device == "flannel.4" and backend.mtu(UPLINK) == 1450
    assert backend.lease_data() == {"VNI": 4, "VtepMAC": backend.mac}
    assert backend.mac == vxlan_backend(VNI=4).mac, "same node and VNI: same MAC"
    first = int(stable_mac("x").split(":")[0], 16)
    assert first & 0x02 and not first & 0x01, "locally administered unicast"


@pytest.mark.parametrize(("kind", "options", "says"), [
    ("vxlan", {"VNI": "abc"}, "vxlan VNI 'abc' is not a number"),
    ("vxlan", {"VNI": True}, "vxlan VNI True is not a number"),
    ("vxlan", {"VNI": None}, "vxlan VNI None is not a number"),
    ("vxlan", {"VNI": "1"}, "vxlan VNI '1' is not a number (a string: write it without quotes)"),
    ("vxlan", {"VNI": 4.5}, "vxlan VNI 4.5 is not an integer"),
    ("vxlan", {"VNI": -1}, "vxlan VNI -1 is out of range (0-16777215)"),
    ("vxlan", {"VNI": 1 << 24}, "vxlan VNI 16777216 is out of range (0-16777215)"),
    ("vxlan", {"VNI": 10_000_000}, "VNI 10000000 makes the device name flannel.10000000 "
                                   "longer than 15 characters"),
    ("vxlan", {"Port": "8472/udp"}, "vxlan Port '8472/udp' is not a number"),
    ("vxlan", {"Port": 0}, "vxlan Port 0 is out of range (1-65535)"),
    ("vxlan", {"Port": 70000}, "vxlan Port 70000 is out of range (1-65535)"),
    ("vxlan", {"DirectRouting": "yes"}, "vxlan DirectRouting 'yes' is not true/false"),
    ("vxlan", {"DirectRouting": 1}, "vxlan DirectRouting 1 is not true/false"),
    ("udp", {"Port": "abc"}, "udp Port 'abc' is not a number"),
    ("udp", {"Port": False}, "udp Port False is not a number"),
    ("udp", {"Port": 65536}, "udp Port 65536 is out of range (1-65535)"),
])
def test_bad_option_values_say_what_is_wrong(kind, options, says):
    with pytest.raises(BackendConfigError) as err:
        check_options(BackendConfig(kind, options))
    assert str(err.value) == says


@pytest.mark.parametrize(("kind", "known"), [
    ("host-gw", "none"), ("vxlan", "VNI, Port, DirectRouting, GBP, MTU"), ("udp", "Port"),
    ("ipip", "none"),
])
def test_every_backend_refuses_options_it_does_not_know(monkeypatch, kind, known):
    def kernel(*args):
        raise AssertionError("the options are judged before the kernel is asked anything")

    monkeypatch.setattr(ipip, "kernel_has_ipip", kernel)
    monkeypatch.setattr(registry, "check_tun", kernel)
    config = BackendConfig(kind, {"Foo": 1, "Bar": 2})
    says = f"unknown {kind} option(s): Bar, Foo (known: {known})"
    with pytest.raises(BackendConfigError) as at_config_set:
        check_options(config)
    with pytest.raises(BackendConfigError) as at_agent:  # an agent building the backend
        make_backend(config, UPLINK, "node1")
    assert str(at_config_set.value) == str(at_agent.value) == says


def test_kernel_ipip_routes_via_the_node_address_onlink_even_behind_a_router():
    backend = KernelIpipBackend(UPLINK)
    backend.index = 7  # tunl0's, as setup() finds it
    own = lease("10.244.1.0/24", "192.168.50.11", "ipip")
    far = lease("10.244.3.0/24", "192.168.60.13", "ipip")
    plan = backend.plan(own, [own, far, lease("10.244.4.0/24", "192.168.50.14")])
    assert plan.routes == {RouteIntent(N("10.244.3.0/24"), A("192.168.60.13"), 7, onlink=True)}
    assert ["uses backend host-gw" in p for p in plan.problems] == [True]
    assert backend.mtu(UPLINK) == 1480


@pytest.mark.parametrize("has_ipip, kind", [(True, KernelIpipBackend),
                                             (False, UserspaceIpipBackend)])
def test_ipip_takes_the_kernel_path_only_where_the_kernel_has_ipip(monkeypatch, has_ipip, kind):
    monkeypatch.setattr(ipip, "kernel_has_ipip", lambda: has_ipip)
    backend = make_backend(BackendConfig("ipip", {}), UPLINK, "node1")
    assert type(backend) is kind and backend.mtu(UPLINK) == 1480
