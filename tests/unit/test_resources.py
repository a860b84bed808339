"""calicoctl-style resources: documents checked field by field, defaults filled in, and a
file written whole or not at all (on the embedded store, in a temporary file)."""

from __future__ import annotations

import pytest
import yaml

from gingham.resources.document import ResourceError, split_documents, to_document
from gingham.resources.kinds import KINDS, kind_named, parse_resource
from gingham.resources.store import APPLY, CREATE, REPLACE, ResourceStore
from gingham.store.sqlite import EmbeddedStore

pytestmark = pytest.mark.unit
POOLS = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 10.10.0.0/16, ipipMode: Always, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: IPPoolList
items:
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata: {name: pool-b, labels: {team: net}}
  spec: {cidr: 10.20.0.0/16, blockSize: 24, vxlanMode: CrossSubnet, nodeSelector: "zone == 'a'"}
"""


def load(text: str, source: str = "pools.yaml"):
    return [parse_resource(raw) for raw in split_documents(yaml.safe_load_all(text), source)]


def pool(name: str, cidr: str, **spec) -> str:
    body = ", ".join(f"{k}: {v}" for k, v in {"cidr": cidr, **spec}.items())
    return (f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {name}}}\n"
            f"spec: {{{body}}}\n")


@pytest.fixture
def resources(tmp_path):
    store = EmbeddedStore(tmp_path / "store.db")
    yield ResourceStore(store, "/gingham/network")
    store.close()


def test_a_pool_gets_every_default_and_lists_unpack():
    a, b = load(POOLS)
    assert a.spec == {"cidr": "10.10.0.0/16", "blockSize": 26, "ipipMode": "Always",
                      "vxlanMode": "Never", "natOutgoing": True, "disabled": False,
                      "nodeSelector": "all()"}
    assert (b.name, b.labels, b.spec["blockSize"], b.spec["vxlanMode"]) == (
        "pool-b", {"team": "net"}, 24, "CrossSubnet")
    assert load(yaml.safe_dump(to_document(b, KINDS["IPPool"].api_version))) == [b]


@pytest.mark.parametrize(("text", "says"), [
    (pool("p", "10.0.0.0/33"), "spec.cidr '10.0.0.0/33' is not a CIDR"),
    (pool("p", "10.0.0.1/16"), "host bits set"),
    (pool("p", "fd00::/64"), "only IPv4 pools"),
    (pool("p", "10.0.0.0/16", blockSize=19), "spec.blockSize 19 is outside 20-32"),
    (pool("p", "10.0.0.0/24", blockSize=22), "larger than the pool"),
    (pool("p", "10.0.0.0/16", blockSize="'26'"), "spec.blockSize must be a int"),
    (pool("p", "10.0.0.0/16", ipipMode="Always", vxlanMode="CrossSubnet"), "one way at most"),
    (pool("p", "10.0.0.0/16", ipipMode="Sometimes"), "must be one of Never, Always, CrossSubnet"),
    (pool("p", "10.0.0.0/16", natOutgoing="'yes'"), "spec.natOutgoing must be a bool"),
    (pool("p", "10.0.0.0/16", nodeSelector="\"a ==\""), "does not parse"),
    (pool("p", "10.0.0.0/16", natOutgoin="true"), "unknown field spec.natOutgoin"),
    (pool("P_1", "10.0.0.0/16"), "metadata.name 'P_1' is not a valid name"),
    ("apiVersion: v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16}\n",
     "apiVersion must be projectcalico.org/v3"),
    ("apiVersion: projectcalico.org/v3\nkind: Pool\nmetadata: {name: p}\n", "unknown kind 'Pool'"),
    ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspecs: {}\n",
     "unknown top-level field 'specs'"),
    ("- 1\n- 2\n", "expected a mapping, found list"),
    ("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\n"
     "spec: {peerIP: 192.168.50.1}\n", "spec.asNumber is required"),
    ("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\n"
     "spec: {peerIP: 192.168.50.1, peerSelector: all(), asNumber: 64512}\n", "exactly one of"),
    ("apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n"
     "spec: {asNumber: 0}\n", "is not an AS number"),
])
def test_a_bad_document_is_one_line_naming_the_file_and_document(text, says):
    with pytest.raises(ResourceError) as err:
        load(pool("ok", "10.99.0.0/16") + "---\n" + text)
    message = str(err.value)
    assert message.startswith("pools.yaml: document 2") and says in message
    assert "\n" not in message


def test_create_replace_apply_delete(resources):
    pools = load(POOLS)
    resources.write(CREATE, pools)
    with pytest.raises(ResourceError, match="already exists; nothing was created"):
        resources.write(CREATE, pools)
    changed = load(pool("pool-a", "10.10.0.0/16", natOutgoing="false"))
    resources.write(REPLACE, changed)
    assert resources.get(KINDS["IPPool"], "pool-a").resource.spec["natOutgoing"] is False
    with pytest.raises(ResourceError, match="does not exist; nothing was replaced"):
        resources.write(REPLACE, load(pool("pool-c", "10.30.0.0/16")))
    resources.write(APPLY, load(pool("pool-c", "10.30.0.0/16")))
    listed, problems = resources.list(KINDS["IPPool"])
    assert [s.resource.name for s in listed] == ["pool-a", "pool-b", "pool-c"] and not problems
    resources.delete(load(pool("pool-c", "10.30.0.0/16")))
    assert resources.get(KINDS["IPPool"], "pool-c") is None
    with pytest.raises(ResourceError, match="does not exist; nothing was deleted"):
        resources.delete(load(pool("pool-c", "10.30.0.0/16")))


def test_nothing_of_a_file_is_written_when_one_resource_fails(resources):
    resources.write(APPLY, load(pool("pool-a", "10.10.0.0/16")))
    # the second overlaps the stored pool-a; the first must not be written either
    bad = load(pool("fresh", "10.40.0.0/16") + "---\n" + pool("inner", "10.10.8.0/24"))
    with pytest.raises(ResourceError, match=r"document 2 .*overlaps IPPool pool-a"):
        resources.write(APPLY, bad)
    assert resources.get(KINDS["IPPool"], "fresh") is None
    # within one file too, and a pool may be moved by the file that replaces it
    with pytest.raises(ResourceError, match=r"document 1 .*overlaps IPPool y"):
        resources.write(APPLY, load(pool("x", "10.50.0.0/16") + "---\n"
                                    + pool("y", "10.50.0.0/20")))
    resources.write(APPLY, load(pool("pool-a", "10.11.0.0/16") + "---\n"
                                + pool("next", "10.10.0.0/16")))


def peer(name: str, asn: int, extra: str = "") -> str:
    return (f"apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: {name}}}\n"
            f"spec: {{peerIP: 192.168.50.1, asNumber: {asn}{extra}}}\n")


def test_one_peer_address_cannot_have_two_as_numbers(resources):
    resources.write(APPLY, load(peer("tor", 65000)))
    with pytest.raises(ResourceError, match=r"document 1 .*peerIP 192.168.50.1 is AS 65001 "
                                            r"here and AS 65000 in BGPPeer tor; nothing"):
        resources.write(APPLY, load(peer("tor-b", 65001, ", node: node1")))
    # peers of different nodes never meet, and a peer may change its own AS
    resources.write(APPLY, load(peer("n1", 65001, ", node: node1") + "---\n"
                                + peer("n2", 65002, ", node: node2") + "---\n"
                                + peer("tor", 65001, ", node: node3")))


def test_a_stored_value_that_does_not_decode_is_reported_not_fatal(resources):
    resources.write(APPLY, load(pool("good", "10.10.0.0/16")))
    resources.store.put("/gingham/network/ippools/broken", b"{not json")
    listed, problems = resources.list(KINDS["IPPool"])
    assert [s.resource.name for s in listed] == ["good"]
    assert problems and problems[0].startswith("/gingham/network/ippools/broken")


def test_kinds_are_found_by_any_of_their_names():
    assert kind_named("ippools") is kind_named("IPPool") is kind_named("pool")
    assert kind_named("ns") is kind_named("Namespace")
    with pytest.raises(ResourceError, match="unknown resource kind 'deployments'"):
        kind_named("deployments")


def test_workload_kinds_apply_over_their_records(resources):
    from gingham.workloads.store import WorkloadStore

    workloads = WorkloadStore(resources.store, "/gingham/network")
    workloads.attach("shop", "cart", "node2", "10.244.0.9", "cid")  # what an ADD recorded
    resources.write(APPLY, load("""
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {app: cart}}
spec:
  containers: [{name: main, image: x, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
"""))
    (pod,), _ = workloads.pods("shop")
    assert (pod.labels, pod.ip, pod.node, [str(p) for p in pod.ports]) == (
        {"app": "cart"}, "10.244.0.9", "node2", ["http=8080/TCP"])
    (ns,), _ = workloads.namespaces()
    assert ns.labels == {"team": "a", "kubernetes.io/metadata.name": "shop"}
    with pytest.raises(ResourceError, match=r"containerPort 0 is outside"):
        load("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
             "spec: {containers: [{ports: [{containerPort: 0}]}]}\n")


# -- NetworkPolicy (networking.k8s.io/v1), read by the policy model ------------------------

NETPOL = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
WEB = NETPOL + """metadata: {name: web, labels: {team: shop}}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: 8000, endPort: 8100}]
"""


def netpol(name: str, spec: str, namespace: str = "shop") -> str:
    return f"{NETPOL}metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"


def test_a_network_policy_is_stored_as_its_canonical_document(resources):
    import json

    from gingham.policy.spec import parse_policy
    from gingham.policy.spec import to_document as policy_document

    (web,) = load(WEB, "web.yaml")
    assert (web.namespace, web.name, web.labels) == ("default", "web", {"team": "shop"})
    resources.write(APPLY, [web])
    kv = resources.store.get("/gingham/network/networkpolicies/default/web")
    assert kv is not None  # the key other code (the policy agent) reads
    stored = json.loads(kv.value.decode("utf-8"))
    assert stored == policy_document(parse_policy(yaml.safe_load(WEB)))
    assert stored["spec"]["policyTypes"] == ["Ingress"]  # defaults written out
    assert stored["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000,
                                                      "endPort": 8100}]
    assert resources.get(KINDS["NetworkPolicy"], "web", "default").resource == web
    assert load(yaml.safe_dump(to_document(web, "networking.k8s.io/v1"))) == [web]


@pytest.mark.parametrize(("spec", "says"), [
    ("{podSelector: {}, ingres: []}", "unknown field spec.ingres"),
    ("{podSelector: {matchExpressions: [{key: app, operator: Is, values: [a]}]}}",
     "spec.podSelector.matchExpressions[0].operator 'Is' is not one of In, NotIn"),
    ("{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
     "spec.ingress[0].ports[0].port 70000 is outside 1-65535"),
    ("{podSelector: {}, egress: [{ports: [{port: 80, endPort: 70}]}]}",
     "spec.egress[0].ports[0].endPort 70 is below port 80"),
    ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.300/8}}]}]}",
     "spec.ingress[0].from[0].ipBlock.cidr '10.0.0.300/8' is not a CIDR"),
    ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, "
     "except: [10.9.0.0/24]}}]}]}",
     "spec.ingress[0].from[0].ipBlock.except[0] 10.9.0.0/24 is not strictly inside cidr"),
    ("{}", "spec.podSelector is required"),
])
def test_a_bad_network_policy_is_one_line_naming_the_file_document_and_field(spec, says):
    with pytest.raises(ResourceError) as err:
        load(WEB + "---\n" + netpol("bad", spec), "policies.yaml")
    assert str(err.value).startswith(f"policies.yaml: document 2 (NetworkPolicy bad): {says}")
    assert "\n" not in str(err.value)


def test_network_policy_metadata_and_api_version_are_checked():
    with pytest.raises(ResourceError, match=r"^p.yaml: document 1 \(NetworkPolicy p\): "
                                            r"apiVersion must be networking.k8s.io/v1"):
        load("apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: p}\n"
             "spec: {podSelector: {}}\n", "p.yaml")
    with pytest.raises(ResourceError, match=r"metadata.namespace 'a.b' is not a DNS-1123"):
        load(netpol("p", "{podSelector: {}}", namespace="a.b"))


def test_network_policies_are_per_namespace_and_a_file_is_written_whole(resources):
    resources.write(APPLY, load(netpol("deny", "{podSelector: {}}", "shop")))
    # one name in two namespaces: two policies
    resources.write(CREATE, load(netpol("deny", "{podSelector: {}}", "default")))
    # the second exists: the first, new, is not created either
    with pytest.raises(ResourceError, match=r"document 2 \(NetworkPolicy deny\): already"):
        resources.write(CREATE, load(netpol("fresh", "{podSelector: {}}") + "---\n"
                                     + netpol("deny", "{podSelector: {}}")))
    listed, problems = resources.list(KINDS["NetworkPolicy"])
    assert [(s.resource.namespace, s.resource.name) for s in listed] == [
        ("default", "deny"), ("shop", "deny")] and not problems
    resources.delete(load(netpol("deny", "{podSelector: {}}", "shop")))
    assert resources.get(KINDS["NetworkPolicy"], "deny", "shop") is None
    assert resources.get(KINDS["NetworkPolicy"], "deny", "default") is not None


def test_network_policy_kind_names():
    found = kind_named("networkpolicies")
    assert found is kind_named("networkpolicy") is kind_named("netpol") is kind_named(
        "NetworkPolicy") is KINDS["NetworkPolicy"]
    assert found.key("/gingham/network", "web", "shop") == (
        "/gingham/network/networkpolicies/shop/web")
