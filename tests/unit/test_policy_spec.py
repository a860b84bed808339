"""NetworkPolicy documents: Kubernetes' defaults and peer shapes, label selectors with each
operator, the canonical document back, and each refusal naming its field."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from gingham.policy.spec import (
    EGRESS,
    INGRESS,
    IpBlock,
    LabelSelector,
    Peer,
    PolicyError,
    PortMatch,
    Requirement,
    Rule,
    parse_policy,
    to_document,
)

pytestmark = pytest.mark.unit
HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"


def load(spec: str, metadata: str = "{name: p}"):
    return parse_policy(yaml.safe_load(f"{HEAD}metadata: {metadata}\nspec: {spec}\n"))


def test_the_seeds_allow_client1_policy_reads_with_kubernetes_defaults():
    policy = load("""
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {run: client1}}}]
    ports: [{port: 80}]
""", "{name: allow-client1}")
    assert (policy.namespace, policy.name, policy.ref) == ("default", "allow-client1",
                                                           "default/allow-client1")
    assert policy.pod_selector == LabelSelector((("app", "web"),))
    assert policy.policy_types == (INGRESS,)
    assert policy.ingress == (Rule((Peer(LabelSelector((("run", "client1"),))),),
                                   (PortMatch("TCP", 80),)),)
    assert policy.egress == () and policy.rules(EGRESS) == ()


@pytest.mark.parametrize(("spec", "types"), [
    ("{podSelector: {}}", (INGRESS,)),
    ("{podSelector: {}, egress: [{}]}", (INGRESS, EGRESS)),
    # Kubernetes defaults on the egress rule count: an empty list does not isolate
    ("{podSelector: {}, egress: []}", (INGRESS,)),
    ("{podSelector: {}, policyTypes: [Egress]}", (EGRESS,)),
    ("{podSelector: {}, policyTypes: [Egress, Ingress], ingress: [{}]}", (EGRESS, INGRESS)),
    ("{podSelector: {}, policyTypes: []}", (INGRESS,)),
])
def test_policy_types_default_as_kubernetes_and_explicit_ones_are_kept(spec, types):
    assert load(spec).policy_types == types


def test_peers_take_each_shape_and_a_rule_may_leave_out_peers_or_ports():
    policy = load("""
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - {namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {role: c}}}
    - {namespaceSelector: {}}
    - {ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24, 172.17.2.0/25]}}
  - {}
  egress:
  - ports: [{protocol: UDP, port: 53}, {port: dns-tcp}, {port: 8000, endPort: 8010},
            {protocol: SCTP}]
""")
    both, any_namespace, block = policy.ingress[0].peers
    assert both == Peer(LabelSelector((("role", "c"),)), LabelSelector((("team", "a"),)))
    assert any_namespace == Peer(None, LabelSelector())
    assert block == Peer(ip_block=IpBlock(ipaddress.ip_network("172.17.0.0/16"), (
        ipaddress.ip_network("172.17.1.0/24"), ipaddress.ip_network("172.17.2.0/25"))))
    assert policy.ingress[1] == Rule()
    assert policy.egress[0] == Rule((), (PortMatch("UDP", 53), PortMatch("TCP", "dns-tcp"),
                                         PortMatch("TCP", 8000, 8010), PortMatch("SCTP")))


def test_ipv6_blocks_are_kept():
    (rule,) = load("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 'fd00::/64', "
                   "except: ['fd00::/96']}}]}]}").ingress
    assert rule.peers[0].ip_block == IpBlock(ipaddress.ip_network("fd00::/64"),
                                             (ipaddress.ip_network("fd00::/96"),))


@pytest.mark.parametrize(("labels", "expected"), [
    ({"app": "web", "env": "prod"}, (True, True, False, True, False, True, False)),
    ({"app": "web", "env": "dev"}, (True, True, True, True, False, False, True)),
    ({"app": "db"}, (True, False, True, False, True, False, False)),
    ({}, (True, False, True, False, True, False, False)),
])
def test_label_selectors_match_with_kubernetes_operator_semantics(labels, expected):
    selectors = (
        LabelSelector(),  # empty: everything
        LabelSelector((("app", "web"),)),
        LabelSelector((), (Requirement("env", "NotIn", ("prod",)),)),  # holds without env
        LabelSelector((), (Requirement("env", "Exists"),)),
        LabelSelector((), (Requirement("env", "DoesNotExist"),)),
        LabelSelector((), (Requirement("env", "In", ("prod", "staging")),)),
        # labels and expressions together: all must hold
        LabelSelector((("app", "web"),), (Requirement("env", "In", ("dev",)),
                                          Requirement("app", "Exists"))),
    )
    assert tuple(s.matches(labels) for s in selectors) == expected


def test_selectors_read_from_the_document_compare_equal_whatever_the_label_order():
    a = load("{podSelector: {matchLabels: {b: '2', a: '1'}, matchExpressions: "
             "[{key: tier, operator: In, values: [x, y]}, {key: k8s.io/gone, operator: "
             "DoesNotExist}]}}").pod_selector
    b = LabelSelector((("a", "1"), ("b", "2")), (Requirement("tier", "In", ("x", "y")),
                                                 Requirement("k8s.io/gone", "DoesNotExist")))
    assert a == b and hash(a) == hash(b)


CANONICAL = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "mixed", "namespace": "shop", "labels": {"owner": "net"}},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web", "tier": "front"},
                        "matchExpressions": [{"key": "env", "operator": "NotIn",
                                              "values": ["prod"]},
                                             {"key": "canary", "operator": "Exists"}]},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {
                                  "matchLabels": {"kubernetes.io/metadata.name": "shop"}}},
                              {"ipBlock": {"cidr": "10.0.0.0/8",
                                           "except": ["10.1.0.0/16"]}}],
                     "ports": [{"protocol": "TCP", "port": "http"},
                               {"protocol": "UDP", "port": 5000, "endPort": 5010}]},
                    {}],
        "egress": [{"to": [{"namespaceSelector": {}}]},
                   {"ports": [{"protocol": "SCTP"}]}],
    },
}


def test_the_canonical_document_round_trips():
    assert to_document(parse_policy(CANONICAL)) == CANONICAL


def test_a_short_document_comes_back_with_its_defaults_and_then_stays_put():
    policy = load("{podSelector: {}, ingress: [{from: [], ports: [{port: 80}]}], egress: []}",
                  "{name: p, uid: abc, resourceVersion: '7'}")
    doc = to_document(policy)
    assert doc == {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "p", "namespace": "default"},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                            "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}]}}
    assert parse_policy(yaml.safe_load(yaml.safe_dump(doc))) == policy


def rule(body: str) -> str:
    return f"{{podSelector: {{}}, ingress: [{body}]}}"


def port(body: str) -> str:
    return rule(f"{{ports: [{{port: 80}}, {body}]}}")


def peer(body: str) -> str:
    return rule(f"{{from: [{body}]}}")


def expression(body: str) -> str:
    return f"{{podSelector: {{matchExpressions: [{body}]}}}}"


@pytest.mark.parametrize(("spec", "fragment"), [
    (port("{port: 80, endPort: 70}"), "spec.ingress[0].ports[1].endPort 70 is below port 80"),
    (port("{port: http, endPort: 90}"), "spec.ingress[0].ports[1].endPort needs a numeric"),
    (port("{endPort: 90}"), "ports[1].endPort needs a numeric port, none is set"),
    (port("{port: 80, endPort: 65536}"), "endPort 65536 is outside 1-65535"),
    (port("{port: 0}"), "spec.ingress[0].ports[1].port 0 is outside 1-65535"),
    (port("{port: 65536}"), "port 65536 is outside 1-65535"),
    (port("{port: '80'}"), "port '80' is not a port number or name"),  # a name needs a letter
    (port("{port: HTTP}"), "port 'HTTP' is not a port number or name"),
    (port("{port: web--admin}"), "port 'web--admin' is not"),
    (port("{port: a-very-long-name}"), "port 'a-very-long-name' is not"),
    (port("{port: -http}"), "port '-http' is not"),
    (port("{port: true}"), "spec.ingress[0].ports[1].port must be an integer or a string"),
    (port("{port: 80, protocol: ICMP}"), "ports[1].protocol 'ICMP' is not one of TCP, UDP"),
    (port("{port: 80, protocol: tcp}"), "protocol 'tcp' is not one of"),
    (port("{port: 80, endport: 90}"), "unknown field spec.ingress[0].ports[1].endport"),
    (rule("{form: [{podSelector: {}}]}"), "unknown field spec.ingress[0].form"),
    (rule("{to: [{podSelector: {}}]}"), "unknown field spec.ingress[0].to"),
    ("{podSelector: {}, egress: [{from: []}]}", "unknown field spec.egress[0].from"),
    ("{podSelector: {}, ingres: [{}]}", "unknown field spec.ingres"),
    ("{podSelector: {matchLabel: {a: b}}}", "unknown field spec.podSelector.matchLabel"),
    (peer("{podselector: {}}"), "unknown field spec.ingress[0].from[0].podselector"),
    (peer("{}"), "spec.ingress[0].from[0] must set podSelector, namespaceSelector or ipBlock"),
    (peer("{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}"),
     "spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector"),
    (peer("{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}"), "ipBlock cannot be"),
    (peer("{ipBlock: {}}"), "spec.ingress[0].from[0].ipBlock.cidr is required"),
    (peer("{ipBlock: {cidr: 10.0.0.0/33}}"), "ipBlock.cidr '10.0.0.0/33' is not a CIDR"),
    (peer("{ipBlock: {cidr: nonsense/8}}"), "ipBlock.cidr 'nonsense/8' is not a CIDR"),
    (peer("{ipBlock: {cidr: 10.0.0.0}}"), "ipBlock.cidr '10.0.0.0' is not a CIDR"),
    (peer("{ipBlock: {cidr: 10.0.0.1/8}}"), "has host bits set"),
    (peer("{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}"),
     "spec.ingress[0].from[0].ipBlock.except[0] 11.0.0.0/16 is not strictly inside cidr"),
    (peer("{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.0.0.0/8]}}"),
     "ipBlock.except[1] 10.0.0.0/8 is not strictly inside cidr 10.0.0.0/8"),
    (peer("{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/7]}}"), "except[0] 10.0.0.0/7"),
    (peer("{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}"), "is not strictly inside"),
    (peer("{ipBlock: {cidr: 10.0.0.0/8, exept: []}}"), "unknown field spec.ingress[0].from[0]"
                                                       ".ipBlock.exept"),
    (expression("{key: app, operator: Equals, values: [web]}"),
     "spec.podSelector.matchExpressions[0].operator 'Equals' is not one of In, NotIn, Exists"),
    (expression("{key: app, operator: In}"),
     "spec.podSelector.matchExpressions[0].values must not be empty for In"),
    (expression("{key: app, operator: NotIn, values: []}"), "must not be empty for NotIn"),
    (expression("{key: app, operator: Exists, values: [web]}"), "must be empty for Exists"),
    (expression("{key: app, operator: In, values: [web, 3]}"),
     "spec.podSelector.matchExpressions[0].values[1] 3 is not a label value"),
    (expression("{key: -app, operator: Exists}"), "matchExpressions[0].key '-app' is not a"),
    (expression("{operator: Exists}"), "spec.podSelector.matchExpressions[0].key is required"),
    (expression("{key: app, operator: Exists, value: x}"),
     "unknown field spec.podSelector.matchExpressions[0].value"),
    ("{podSelector: {matchLabels: {app: 1}}}", "spec.podSelector.matchLabels.app 1 is not a"),
    ("{podSelector: {matchLabels: {app: -web}}}", "matchLabels.app '-web' is not a label"),
    ("{podSelector: {matchLabels: {Bad/app: x}}}", "matchLabels key 'Bad/app' is not a label"),
    ("{podSelector: {matchLabels: {/app: x}}}", "key '/app' is not a label key"),
    ("{podSelector: []}", "spec.podSelector must be a mapping, not []"),
    ("{}", "spec.podSelector is required"),
    ("{podSelector: {}, policyTypes: [Ingres]}", "spec.policyTypes[0] 'Ingres' is not Ingress"),
    ("{podSelector: {}, policyTypes: [Egress, Egress]}", "spec.policyTypes[1] repeats Egress"),
    ("{podSelector: {}, policyTypes: Ingress}", "spec.policyTypes must be a list"),
    ("{podSelector: {}, ingress: {}}", "spec.ingress must be a list"),
    ("{podSelector: {}, egress: [allow]}", "spec.egress[0] must be a mapping, not 'allow'"),
])
def test_a_bad_spec_is_refused_naming_the_field(spec, fragment):
    with pytest.raises(PolicyError) as err:
        load(spec)
    assert fragment in str(err.value)


@pytest.mark.parametrize(("text", "fragment"), [
    (f"{HEAD}metadata: {{name: Bad_Name}}\nspec: {{podSelector: {{}}}}",
     "metadata.name 'Bad_Name' is not a DNS-1123 subdomain"),
    (f"{HEAD}metadata: {{name: p, namespace: a.b}}\nspec: {{podSelector: {{}}}}",
     "metadata.namespace 'a.b' is not a DNS-1123 label"),
    (f"{HEAD}metadata: {{name: p, lables: {{}}}}\nspec: {{podSelector: {{}}}}",
     "unknown field metadata.lables"),
    (f"{HEAD}metadata: {{namespace: x}}\nspec: {{podSelector: {{}}}}",
     "metadata.name is required"),
    (f"{HEAD}metadata: {{name: p}}", "spec is required"),
    (f"{HEAD}metadata: {{name: p}}\nspec: {{podSelector: {{}}}}\nstatus: {{}}",
     "unknown field status"),
    ("apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\n"
     "spec: {podSelector: {}}", "apiVersion must be networking.k8s.io/v1, not"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicies\nmetadata: {name: p}\n"
     "spec: {podSelector: {}}", "kind must be NetworkPolicy, not 'NetworkPolicies'"),
    ("- a list", "the document must be a mapping"),
])
def test_a_bad_document_is_refused_naming_the_field(text, fragment):
    with pytest.raises(PolicyError) as err:
        parse_policy(yaml.safe_load(text))
    assert fragment in str(err.value)


def test_where_prefixes_the_message_and_the_error_is_a_value_error():
    with pytest.raises(ValueError, match=r"^policy.yaml: document 2: spec.podSelector is "):
        parse_policy(yaml.safe_load(f"{HEAD}metadata: {{name: p}}\nspec: {{}}"),
                     "policy.yaml: document 2")
