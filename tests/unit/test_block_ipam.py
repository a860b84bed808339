"""Calico's block IPAM on the embedded store: affine blocks first, then a claim, then a
borrow; never one address twice, even with many nodes racing; emptied blocks go back."""

from __future__ import annotations

import ipaddress
import threading

import pytest

from gingham.ipam.block_ipam import BlockIpam, IpamExhausted
from gingham.ipam.blocks import Block, BlockDataError, free_blocks, handle_of
from gingham.resources.document import ResourceError, split_documents
from gingham.resources.kinds import KINDS, parse_resource
from gingham.resources.store import APPLY
from gingham.store.sqlite import EmbeddedStore

pytestmark = pytest.mark.unit
N, A = ipaddress.IPv4Network, ipaddress.IPv4Address
PREFIX = "/gingham/network"


@pytest.fixture
def ipam(tmp_path):
    store = EmbeddedStore(tmp_path / "store.db")
    yield BlockIpam(store, PREFIX)
    store.close()


def add_pool(ipam: BlockIpam, name: str, cidr: str, **spec) -> None:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name},
           "spec": {"cidr": cidr, **spec}}
    resources = [parse_resource(r) for r in split_documents([doc], "test")]
    ipam.resources.write(APPLY, resources)


def attrs(container: str, pod: str = "", namespace: str = "default") -> dict:
    return {"handle": handle_of(container), "namespace": namespace, "pod": pod or container}


def test_a_block_hands_out_every_address_once_and_reuses_released_ones_last():
    block = Block.empty(N("10.244.0.0/30"), "node1")
    got = [block.assign(attrs(f"c{i}")) for i in range(4)]
    assert got == [A("10.244.0.0"), A("10.244.0.1"), A("10.244.0.2"), A("10.244.0.3")]
    assert block.assign(attrs("c5")) is None
    assert block.release_handle(handle_of("c1")) == [A("10.244.0.1")]
    assert block.assign(attrs("c6")) == A("10.244.0.1")
    again = Block.decode(block.encode())
    assert dict(again.holders()) == dict(block.holders()) and again.node == "node1"
    broken = block.encode().replace(b'"unallocated": []', b'"unallocated": [1]')
    with pytest.raises(BlockDataError):
        Block.decode(broken)


def test_free_blocks_skip_existing_ones_of_any_size():
    pool = N("10.0.0.0/24")
    assert list(free_blocks(pool, 26, [N("10.0.0.64/26"), N("10.0.0.128/25")])) == [
        N("10.0.0.0/26")]


def test_a_node_fills_its_own_block_then_claims_the_next(ipam):
    add_pool(ipam, "pool", "10.244.0.0/16", blockSize=30)
    first = [ipam.assign("node1", {}, attrs(f"a{i}")) for i in range(5)]
    assert [a.address for a in first] == [A("10.244.0.0"), A("10.244.0.1"), A("10.244.0.2"),
                                          A("10.244.0.3"), A("10.244.0.4")]
    assert [a.block for a in first] == [N("10.244.0.0/30")] * 4 + [N("10.244.0.4/30")]
    other = ipam.assign("node2", {}, attrs("b0"))
    assert other.block == N("10.244.0.8/30")  # its own block, not node1's
    blocks, _ = ipam.blocks()
    assert {c: s.block.node for c, s in blocks.items()} == {
        N("10.244.0.0/30"): "node1", N("10.244.0.4/30"): "node1", N("10.244.0.8/30"): "node2"}
    assert ipam.check({"node1", "node2"}, None) == []


def test_a_full_pool_lends_from_other_nodes_unless_strict(ipam):
    add_pool(ipam, "tiny", "10.9.0.0/29", blockSize=30)  # two blocks of four
    ipam.assign("node1", {}, attrs("a"))
    ipam.assign("node2", {}, attrs("b"))
    # node3 has no block and none is free: it borrows from node1's
    borrowed = ipam.assign("node3", {}, attrs("c"))
    assert borrowed.block == N("10.9.0.0/30") and borrowed.address == A("10.9.0.1")
    ipam.set_strict_affinity(True)
    with pytest.raises(IpamExhausted, match="strictAffinity"):
        ipam.assign("node3", {}, attrs("d"))
    ipam.set_strict_affinity(False)
    for i in range(5):  # the rest: 8 addresses in all
        ipam.assign("node3", {}, attrs(f"e{i}"))
    with pytest.raises(IpamExhausted, match="no free address for node node3 in IP pools tiny"):
        ipam.assign("node3", {}, attrs("f"))


def test_pools_are_chosen_by_node_selector_and_disabled_pools_skipped(ipam):
    add_pool(ipam, "zone-a", "10.1.0.0/24", nodeSelector="zone == 'a'")
    add_pool(ipam, "off", "10.2.0.0/24", disabled=True)
    assert ipam.assign("n1", {"zone": "a"}, attrs("x")).pool.name == "zone-a"
    with pytest.raises(IpamExhausted, match="no enabled IP pool selects node n2"):
        ipam.assign("n2", {"zone": "b"}, attrs("y"))


def test_release_frees_the_handle_and_gives_an_emptied_block_back(ipam):
    add_pool(ipam, "pool", "10.244.0.0/16")
    a = ipam.assign("node1", {}, attrs("a"))
    b = ipam.assign("node1", {}, attrs("b"))
    assert ipam.release(handle_of("a")) == [a.address]
    assert ipam.release(handle_of("a")) == []  # a second DEL finds nothing
    assert N("10.244.0.0/26") in ipam.blocks()[0]
    assert ipam.release(handle_of("b")) == [b.address]
    assert ipam.blocks()[0] == {}  # emptied: back to the pool
    assert ipam.store.range(ipam.handles_prefix)[0] == []


def test_check_finds_what_a_crash_or_a_vanished_node_leaves(ipam):
    add_pool(ipam, "pool", "10.244.0.0/16")
    ipam.assign("node1", {}, attrs("a", pod="web"))
    ipam.assign("gone", {}, attrs("b", pod="db"))
    # a crash between the handle's write and the block's: a handle without an address
    ipam._count_in_handle(handle_of("lost"), N("10.244.0.0/26"), +1)
    # a crash between the handle's write and the block's: a handle without an address
    ipam.assign("node1", {}, attrs("old", pod="web"))  # web's earlier container's, leaked
    problems = ipam.check({"node1"}, {("default", "web"): "a"})
    assert problems == [
        "address 10.244.0.1 is held by k8s-pod-network.old for pod default/web, which runs "
        "as container a now",
        "block 10.244.0.64/26 is affine to node gone, which does not exist",
        "address 10.244.0.64 is held for pod default/db, which no longer exists",
        "handle k8s-pod-network.lost holds no address",
    ]
    assert ipam.release(handle_of("lost")) == []  # clears the record
    assert ipam.release_address(A("10.244.0.64")) == handle_of("b")
    assert ipam.release(handle_of("old")) == [A("10.244.0.1")]
    assert ipam.check({"node1"}, {("default", "web"): "a"}) == []


def test_racing_nodes_never_get_one_address_twice(ipam):
    add_pool(ipam, "pool", "10.244.0.0/22", blockSize=28)  # 64 blocks of 16
    got: list[ipaddress.IPv4Address] = []
    lock = threading.Lock()

    def node(n: int) -> None:
        for i in range(40):
            address = ipam.assign(f"node{n}", {}, attrs(f"n{n}-{i}")).address
            with lock:
                got.append(address)

    threads = [threading.Thread(target=node, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 160 and len(set(got)) == 160
    assert ipam.check({f"node{n}" for n in range(4)}, None) == []


def test_a_pool_cannot_shrink_or_go_from_under_addresses_in_use(ipam):
    add_pool(ipam, "pool", "10.244.0.0/16")
    held = ipam.assign("node1", {}, attrs("a")).address  # 10.244.0.0
    with pytest.raises(ResourceError, match=r"shrinking it to 10\.244\.128\.0/17 would strand "
                                            r"1 allocated address\(es\) \(10\.244\.0\.0\)"):
        add_pool(ipam, "pool", "10.244.128.0/17")
    add_pool(ipam, "pool", "10.244.0.0/17")  # still holds it: fine
    with pytest.raises(ResourceError, match="deleting it would strand"):
        ipam.resources.delete([ipam.resources.get(KINDS["IPPool"], "pool").resource])
    ipam.release(handle_of("a"))
    assert held not in {a for s in ipam.blocks()[0].values() for a, _ in s.block.holders()}
    ipam.resources.delete([ipam.resources.get(KINDS["IPPool"], "pool").resource])
