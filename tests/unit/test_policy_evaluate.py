"""The NetworkPolicy oracle: the seeds' worked cases, default-deny and allow-all, how peers
combine, named ports, port ranges, IP blocks, stacked policies, the two sides apart, and
the exceptions for a pod's own traffic and its own node."""

from __future__ import annotations

import pytest
import yaml

from gingham.policy.evaluate import NamespaceView, PodView, Verdict, allowed
from gingham.policy.spec import NetworkPolicy, parse_policy
from gingham.workloads.records import NamedPort, Namespace, Pod

pytestmark = pytest.mark.unit

WEB = PodView("default", "web", "10.244.1.10", {"app": "web"}, (NamedPort("http", 8080),),
              "node1")
CLIENT1 = PodView("default", "client1", "10.244.1.11", {"run": "client1"}, node="node1")
CLIENT2 = PodView("default", "client2", "10.244.2.12", {"run": "client2"}, node="node2")
TESTER = PodView("test", "tester", "10.244.2.20", {"app": "tester"}, node="node2")
PODS = (WEB, CLIENT1, CLIENT2, TESTER)
NAMESPACES = (NamespaceView("default"), NamespaceView("test", {"env": "test"}))
NODE_IPS = {"node1": ("192.168.50.11", "10.244.1.1"), "node2": ("192.168.50.12",)}
EXTERNAL = "203.0.113.7"


def np(spec: str, name: str = "p", namespace: str = "default") -> NetworkPolicy:
    return parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": namespace},
                         "spec": yaml.safe_load(spec)})


def check(src: PodView | str, dst: PodView | str, *policies: NetworkPolicy, port: int = 80,
          protocol: str = "TCP", pods=PODS, namespaces=NAMESPACES) -> Verdict:
    return allowed(src, dst, port, protocol, pods=pods, namespaces=namespaces,
                   policies=policies, node_ips=NODE_IPS)


def ok(src, dst, *policies, **kw) -> bool:
    return check(src, dst, *policies, **kw).allowed


DENY_INGRESS = np("{podSelector: {}, policyTypes: [Ingress]}", "deny-ingress")
DENY_EGRESS = np("{podSelector: {}, policyTypes: [Egress]}", "deny-egress")
DENY_ALL = np("{podSelector: {}, policyTypes: [Ingress, Egress]}", "deny-all")


def test_without_policies_everything_is_open():
    verdict = check(CLIENT1, WEB)
    assert verdict == Verdict(True, ("egress of default/client1 not isolated",
                                     "ingress of default/web not isolated"))
    assert ok(EXTERNAL, WEB) and ok(WEB, EXTERNAL)


def test_seeds_only_client1_reaches_web_on_tcp_80():
    policy = np("""
podSelector: {matchLabels: {app: web}}
ingress:
- from: [{podSelector: {matchLabels: {run: client1}}}]
  ports: [{protocol: TCP, port: 80}]
""", "allow-client1")
    assert check(CLIENT1, WEB, policy).reasons[1] == (
        "ingress of default/web allowed by default/allow-client1 rule 0")
    blocked = check(CLIENT2, WEB, policy)
    assert not blocked.allowed
    assert blocked.reasons[1] == ("ingress of default/web isolated by default/allow-client1; "
                                  "no rule allows default/client2 on 80/TCP")
    assert not ok(CLIENT1, WEB, policy, port=81)
    assert not ok(CLIENT1, WEB, policy, protocol="UDP")
    assert not ok(TESTER, WEB, policy)  # a bare podSelector means the policy's namespace
    assert ok(WEB, CLIENT2, policy) and ok(CLIENT2, CLIENT1, policy)  # others stay open


def test_seeds_deny_from_other_namespaces_keeps_the_namespace_talking_inside():
    policy = np("{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
                "deny-from-other-namespaces")
    assert ok(CLIENT1, WEB, policy) and ok(CLIENT2, CLIENT1, policy)
    assert not ok(TESTER, WEB, policy) and not ok(TESTER, CLIENT2, policy)
    assert not ok(EXTERNAL, WEB, policy)
    assert ok(WEB, TESTER, policy)  # `test` is not isolated


def test_default_deny_ingress_egress_and_all():
    assert not ok(TESTER, WEB, DENY_INGRESS) and not ok(CLIENT1, WEB, DENY_INGRESS)
    assert ok(WEB, TESTER, DENY_INGRESS)
    blocked = check(WEB, TESTER, DENY_EGRESS)
    assert not blocked.allowed and blocked.reasons[0].startswith(
        "egress of default/web isolated by default/deny-egress; no rule allows")
    assert ok(TESTER, WEB, DENY_EGRESS) and not ok(WEB, EXTERNAL, DENY_EGRESS)
    assert not ok(TESTER, WEB, DENY_ALL) and not ok(WEB, TESTER, DENY_ALL)
    assert not ok(CLIENT1, WEB, DENY_ALL)
    # `egress: []` without policyTypes defaults to Ingress only, as Kubernetes does
    assert ok(WEB, TESTER, np("{podSelector: {}, egress: []}"))


def test_allow_all_stacks_on_deny_all():
    allow_in = np("{podSelector: {}, ingress: [{}]}", "allow-in")
    allow_out = np("{podSelector: {}, egress: [{}], policyTypes: [Egress]}", "allow-out")
    assert ok(TESTER, WEB, DENY_ALL, allow_in) and not ok(WEB, TESTER, DENY_ALL, allow_in)
    assert ok(WEB, TESTER, DENY_ALL, allow_out) and ok(WEB, EXTERNAL, DENY_ALL, allow_out)
    assert ok(EXTERNAL, WEB, DENY_ALL, allow_in, port=1, protocol="SCTP")


SERVER = PodView("srv", "server", "10.244.3.1", {"app": "server"})
SRV_CLIENT = PodView("srv", "client", "10.244.3.2", {"role": "client"})
A_CLIENT = PodView("ns-a", "client", "10.244.3.3", {"role": "client"})
A_OTHER = PodView("ns-a", "other", "10.244.3.4", {"role": "other"})
B_CLIENT = PodView("ns-b", "client", "10.244.3.5", {"role": "client"})
TEAMS = (NamespaceView("srv"), NamespaceView("ns-a", {"team": "a"}),
         NamespaceView("ns-b", {"team": "b"}))


@pytest.mark.parametrize(("peers", "reach"), [
    # one peer with both selectors: pods that match AND live in a matching namespace
    ("[{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: "
     "{role: client}}}]", (False, True, False, False)),
    # two peers: either the namespace's pods OR matching pods of the policy's namespace
    ("[{namespaceSelector: {matchLabels: {team: a}}}, {podSelector: {matchLabels: "
     "{role: client}}}]", (True, True, True, False)),
    # a namespace-only peer, by the label every namespace gets
    ("[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ns-b}}}]",
     (False, False, False, True)),
    ("[{namespaceSelector: {}}]", (True, True, True, True)),
    ("[{namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}}]",
     (True, False, False, False)),
])
def test_namespace_and_pod_selectors_and_within_a_peer_and_or_across_peers(peers, reach):
    policy = np(f"{{podSelector: {{matchLabels: {{app: server}}}}, ingress: [{{from: {peers}}}]}}",
                namespace="srv")
    sources = (SRV_CLIENT, A_CLIENT, A_OTHER, B_CLIENT)
    assert tuple(ok(s, SERVER, policy, namespaces=TEAMS) for s in sources) == reach


def test_selector_expressions_pick_the_isolated_pods():
    prod = PodView("default", "prod", "10.244.1.30", {"env": "prod"})
    canary = PodView("default", "canary", "10.244.1.31", {"env": "canary", "track": "x"})
    bare = PodView("default", "bare", "10.244.1.32", {})
    cases = {"NotIn, values: [prod]": (False, True, True),
             "In, values: [prod, canary]": (True, True, False),
             "Exists": (True, True, False), "DoesNotExist": (False, False, True)}
    for expression, isolated in cases.items():
        policy = np(f"{{podSelector: {{matchExpressions: [{{key: env, operator: {expression}}}"
                    "]}, policyTypes: [Ingress]}")
        assert tuple(not ok(CLIENT1, p, policy) for p in (prod, canary, bare)) == isolated


def test_a_named_port_maps_to_each_destination_pods_own_number():
    web2 = PodView("default", "web2", "10.244.1.20", {"app": "web"}, (NamedPort("http", 9090),))
    web3 = PodView("default", "web3", "10.244.1.21", {"app": "web"})
    dns = PodView("default", "dns", "10.244.1.22", {"app": "web"}, (NamedPort("dns", 53, "UDP"),))
    pods = (*PODS, web2, web3, dns)
    policy = np("{podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{port: http}, "
                "{port: dns, protocol: UDP}]}]}")
    assert ok(CLIENT1, WEB, policy, port=8080) and not ok(CLIENT1, WEB, policy, port=9090)
    assert ok(CLIENT1, web2, policy, port=9090) and not ok(CLIENT1, web2, policy, port=8080)
    assert not ok(CLIENT1, web3, policy, port=8080)  # no such name on that pod
    assert ok(CLIENT1, dns, policy, port=53, protocol="UDP", pods=pods)
    assert not ok(CLIENT1, dns, policy, port=53, protocol="TCP", pods=pods)
    tcp_dns = np("{podSelector: {}, ingress: [{ports: [{port: dns}]}]}")  # TCP by default
    assert not ok(CLIENT1, dns, tcp_dns, port=53, protocol="UDP")
    assert not ok(CLIENT1, dns, tcp_dns, port=53, protocol="TCP")  # dns is a UDP port there


def test_an_egress_named_port_resolves_against_the_destination_pod():
    policy = np("{podSelector: {matchLabels: {run: client1}}, policyTypes: [Egress], "
                "egress: [{ports: [{port: http}]}]}")
    assert ok(CLIENT1, WEB, policy, port=8080)
    assert not ok(CLIENT1, WEB, policy, port=80)
    assert not ok(CLIENT1, EXTERNAL, policy, port=8080)  # a non-pod has no named ports
    assert not ok(CLIENT1, CLIENT2, policy, port=8080)  # client2 names no port http


def test_end_port_ranges_are_inclusive():
    policy = np("{podSelector: {}, ingress: [{ports: [{port: 8000, endPort: 8010}]}]}")
    reach = [ok(CLIENT1, WEB, policy, port=p) for p in (7999, 8000, 8005, 8010, 8011)]
    assert reach == [False, True, True, True, False]
    any_udp = np("{podSelector: {}, ingress: [{ports: [{protocol: UDP}]}]}")
    assert ok(CLIENT1, WEB, any_udp, port=4242, protocol="udp")
    assert not ok(CLIENT1, WEB, any_udp, port=4242)


def test_ip_blocks_with_except_match_outside_addresses_and_pod_ips_alike():
    egress = np("{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: "
                "{cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]}]}")
    assert ok(WEB, "198.51.100.5", egress) and ok(WEB, "198.51.100.127", egress)
    assert not ok(WEB, "198.51.100.128", egress) and not ok(WEB, EXTERNAL, egress)
    assert not ok(WEB, CLIENT1, egress)  # a pod outside the block
    ingress = np("{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{ipBlock: "
                 "{cidr: 10.244.1.0/24}}]}]}")
    assert ok(CLIENT1, WEB, ingress) and not ok(CLIENT2, WEB, ingress)
    assert ok(TESTER, WEB, np("{podSelector: {}, ingress: [{from: [{ipBlock: "
                              "{cidr: 10.244.2.20/32}}]}]}"))  # across namespaces too
    assert not ok(PodView("default", "pending", labels={"run": "x"}), WEB, ingress)  # no IP


def test_stacked_policies_allow_the_union_and_the_reasons_name_each():
    http = np("{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: "
              "{matchLabels: {run: client1}}}], ports: [{port: 80}]}]}", "http")
    https = np("{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: "
               "{matchLabels: {run: client2}}}], ports: [{port: 443}]}, {ports: [{port: 80}]}]}",
               "https")
    assert ok(CLIENT1, WEB, http, https) and ok(CLIENT2, WEB, http, https, port=443)
    assert not ok(CLIENT1, WEB, http, https, port=443)
    assert check(CLIENT1, WEB, http, https).reasons[1] == (
        "ingress of default/web allowed by default/http rule 0, default/https rule 1")
    assert "isolated by default/http, default/https;" in check(
        CLIENT1, WEB, http, https, port=443).reasons[1]


def test_egress_and_ingress_are_decided_apart_and_both_must_allow():
    out = np("{podSelector: {matchLabels: {run: client1}}, policyTypes: [Egress], egress: "
             "[{to: [{podSelector: {matchLabels: {app: web}}}]}]}", "out")
    only_client2 = np("{podSelector: {matchLabels: {app: web}}, ingress: [{from: "
                      "[{podSelector: {matchLabels: {run: client2}}}]}]}", "in")
    verdict = check(CLIENT1, WEB, out, only_client2)
    assert not verdict.allowed
    assert verdict.reasons[0] == "egress of default/client1 allowed by default/out rule 0"
    assert verdict.reasons[1].startswith("ingress of default/web isolated by default/in;")
    assert ok(CLIENT1, WEB, out)
    assert not ok(CLIENT1, CLIENT2, out, only_client2)  # client1's egress stops it
    assert ok(CLIENT2, WEB, out, only_client2)


def test_policies_select_only_in_their_own_namespace():
    other = np("{podSelector: {}, policyTypes: [Ingress, Egress]}", namespace="test")
    assert ok(CLIENT1, WEB, other) and ok(WEB, CLIENT2, other)
    assert not ok(WEB, TESTER, other) and not ok(TESTER, WEB, other)


def test_a_pod_always_reaches_itself():
    verdict = check(WEB, WEB, DENY_ALL)
    assert verdict == Verdict(True, ("default/web to itself: a pod can always reach itself",))
    assert ok(WEB.ip, WEB.ip, DENY_ALL)


def test_a_pod_and_its_own_node_always_talk_other_nodes_are_plain_addresses():
    assert check("10.244.1.1", WEB, DENY_ALL).reasons == (
        "ingress of default/web: 10.244.1.1 is its own node node1, always allowed",)
    assert ok("192.168.50.11", WEB, DENY_ALL) and ok(WEB, "192.168.50.11", DENY_ALL)
    assert not ok("192.168.50.12", WEB, DENY_ALL) and not ok(WEB, "192.168.50.12", DENY_ALL)
    assert not ok("192.168.50.11", CLIENT2, DENY_ALL)  # node1 is not client2's node
    from_nodes = np("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 192.168.50.0/24}}]}]}")
    assert ok("192.168.50.12", WEB, from_nodes)
    assert ok("192.168.50.12", WEB, from_nodes, port=1, protocol="UDP")


def test_ends_given_as_ips_are_the_pods_that_have_them():
    policy = np("{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: "
                "{matchLabels: {run: client1}}}]}]}")
    assert ok(CLIENT1.ip, WEB.ip, policy) and not ok(CLIENT2.ip, WEB.ip, policy)
    assert not ok(CLIENT1.ip, WEB, policy, pods=())  # an unknown IP is a plain address
    assert check(EXTERNAL, "198.51.100.1", DENY_ALL).reasons == (
        f"{EXTERNAL} to 198.51.100.1: neither end is a pod, no policy applies",)


def test_sctp_is_evaluated_like_the_others_and_a_bad_protocol_is_refused():
    policy = np("{podSelector: {}, ingress: [{ports: [{protocol: SCTP, port: 9999}]}]}")
    assert ok(CLIENT1, WEB, policy, port=9999, protocol="SCTP")
    assert not ok(CLIENT1, WEB, policy, port=9999, protocol="TCP")
    with pytest.raises(ValueError, match="ICMP"):
        check(CLIENT1, WEB, protocol="ICMP")


def test_views_come_from_the_workload_records():
    pod = Pod("default", "web", {"app": "web"}, "node1", "10.244.1.10", "cid",
              [NamedPort("http", 8080)])
    assert PodView.of(pod) == WEB
    assert hash(PodView.of(pod)) == hash(WEB)
    assert NamespaceView.of(Namespace.named("test")).labels == {
        "kubernetes.io/metadata.name": "test"}
