"""Host-local IPAM: range arithmetic and on-disk reservations (no root needed)."""

from __future__ import annotations

import ipaddress
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from gingham.cni.spec import ADDRESSES_EXHAUSTED, CniError
from gingham.ipam.hostlocal import HostLocalIpam
from gingham.ipam.ranges import AddressRange
from gingham.ipam.store import SPARE_DIR, SPARES, Owner
from gingham.model.netconf import RangeSpec

A = ipaddress.IPv4Address
NET = ipaddress.IPv4Network("10.244.3.0/24")


def test_range_skips_network_gateway_and_broadcast():
    rng = AddressRange.for_subnet(NET)
    addrs = list(rng.candidates(None))
    assert addrs[0] == A("10.244.3.2")
    assert addrs[-1] == A("10.244.3.254")
    assert len(addrs) == 253
    assert A("10.244.3.1") not in rng and A("10.244.3.255") not in rng


def test_candidates_start_after_last_and_wrap():
    rng = AddressRange.from_spec(RangeSpec(NET, A("10.244.3.10"), A("10.244.3.13")))
    assert list(rng.candidates(A("10.244.3.11"))) == [
        A("10.244.3.12"), A("10.244.3.13"), A("10.244.3.10"), A("10.244.3.11")]


def test_custom_gateway_inside_range_is_skipped():
    rng = AddressRange.from_spec(RangeSpec(NET, A("10.244.3.1"), A("10.244.3.3"),
                                           A("10.244.3.2")))
    assert list(rng.candidates(None)) == [A("10.244.3.1"), A("10.244.3.3")]


def owner(i: int, network: str = "net") -> Owner:
    return Owner(f"c{i}", "eth0", network)


def test_allocate_is_unique_and_idempotent_per_attachment(tmp_path):
    ipam = HostLocalIpam(tmp_path)
    rng = [AddressRange.for_subnet(NET)]
    first = ipam.allocate(rng, owner(1))[1]
    assert ipam.allocate(rng, owner(1))[1] == first
    second = ipam.allocate(rng, owner(2))[1]
    assert second != first
    assert (tmp_path / "10.244.3.0-24" / str(first)).read_text().startswith("c1\neth0\n")


def test_release_frees_and_next_allocation_moves_on(tmp_path):
    ipam = HostLocalIpam(tmp_path)
    rng = [AddressRange.for_subnet(NET)]
    a = ipam.allocate(rng, owner(1))[1]
    assert ipam.release("c1", "eth0") == [a]
    assert ipam.release("c1", "eth0") == []
    b = ipam.allocate(rng, owner(2))[1]
    assert b != a, "a just-released address is not handed out again at once"


def test_state_survives_a_new_instance(tmp_path):
    rng = [AddressRange.for_subnet(NET)]
    a = HostLocalIpam(tmp_path).allocate(rng, owner(1))[1]
    again = HostLocalIpam(tmp_path)
    assert again.find("c1", "eth0") == [a]
    assert again.allocate(rng, owner(2))[1] != a


def test_exhaustion_is_a_clear_error(tmp_path):
    ipam = HostLocalIpam(tmp_path)
    rng = [AddressRange.for_subnet(ipaddress.IPv4Network("10.9.0.0/30"))]
    ipam.allocate(rng, owner(1))
    with pytest.raises(CniError) as err:
        ipam.allocate(rng, owner(2))
    assert err.value.code == ADDRESSES_EXHAUSTED


def test_ranges_of_two_pools_and_of_one_pool(tmp_path):
    """A request's pools are locked together; two ranges may share one (locked once), and
    concurrent requests naming them in opposite orders must not wait on each other."""
    ipam = HostLocalIpam(tmp_path)
    low = AddressRange.from_spec(RangeSpec(NET, A("10.244.3.10"), A("10.244.3.10")))
    high = AddressRange.from_spec(RangeSpec(NET, A("10.244.3.20"), A("10.244.3.29")))
    other = AddressRange.for_subnet(ipaddress.IPv4Network("10.9.0.0/24"))
    assert ipam.allocate([low, high], owner(1)) == (low, A("10.244.3.10"))
    assert ipam.allocate([low, high], owner(2)) == (high, A("10.244.3.20"))
    assert ipam.allocate([high, low], owner(1)) == (low, A("10.244.3.10"))  # already held
    orders = ([other, high], [high, other])
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: ipam.allocate(orders[i % 2], owner(10 + i))[1],
                            range(16)))
    assert len(set(got)) == 16 and all(a in high or a in other for a in got)


def test_concurrent_allocations_never_share_an_address(tmp_path):
    ipam = HostLocalIpam(tmp_path)
    rng = [AddressRange.for_subnet(NET)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: ipam.allocate(rng, owner(i))[1], range(200)))
    assert len(set(got)) == 200


def test_two_instances_on_one_directory_never_share(tmp_path):
    """The flock guards a second writer (e.g. a restarted agent overlapping the old one)."""
    rng = [AddressRange.for_subnet(NET)]
    a, b = HostLocalIpam(tmp_path), HostLocalIpam(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: (a if i % 2 else b).allocate(rng, owner(i))[1],
                            range(100)))
    assert len(set(got)) == 100


def test_gc_releases_only_invalid_attachments_of_its_network(tmp_path):
    ipam = HostLocalIpam(tmp_path)
    rng = [AddressRange.for_subnet(NET)]
    keep = ipam.allocate(rng, owner(1))[1]
    drop = ipam.allocate(rng, owner(2))[1]
    other = ipam.allocate(rng, owner(3, "othernet"))[1]
    assert ipam.garbage_collect("net", {("c1", "eth0")}) == [drop]
    assert ipam.find("c1", "eth0") == [keep]
    assert ipam.find("c3", "eth0") == [other]


# -- spare files (see ipam/store.py) ------------------------------------------------

POOL = "10.244.3.0-24"


def spares(root) -> dict[str, int]:
    """Spare file name -> inode."""
    spare_dir = root / POOL / SPARE_DIR
    return {p.name: p.stat().st_ino for p in spare_dir.iterdir()} if spare_dir.is_dir() else {}


def test_a_reservation_takes_a_spare_file_made_after_the_one_before(tmp_path):
    ipam = HostLocalIpam(tmp_path)
    rng = [AddressRange.for_subnet(NET)]
    ipam.allocate(rng, owner(1))
    ipam.close()  # waits for the spares that allocation asked for
    ready = spares(tmp_path)
    assert len(ready) == SPARES

    second = HostLocalIpam(tmp_path)  # a restarted agent adopts them
    second.prepare(rng)
    address = second.allocate(rng, owner(2))[1]
    taken = set(ready) - set(spares(tmp_path))
    assert len(taken) == 1
    reservation = tmp_path / POOL / str(address)
    assert reservation.stat().st_ino == ready[taken.pop()]
    assert reservation.read_text() == "c2\neth0\nnet\n" and reservation.stat().st_nlink == 1
    assert ipam.free_count(rng) == 253 - 2  # spares are no reservations
    second.close()


def test_a_spare_still_naming_a_reservation_is_never_written(tmp_path, monkeypatch):
    """A crash between linking a spare and unlinking its spare name leaves both names on
    one file: using that spare again would overwrite the reservation."""
    ipam = HostLocalIpam(tmp_path)
    rng = [AddressRange.for_subnet(NET)]
    first = ipam.allocate(rng, owner(1))[1]
    ipam.close()
    for name in spares(tmp_path):
        (tmp_path / POOL / SPARE_DIR / name).unlink()
    reservation = tmp_path / POOL / str(first)
    os.link(reservation, tmp_path / POOL / SPARE_DIR / "crashed")

    again = HostLocalIpam(tmp_path)
    again.prepare(rng)  # adopts "crashed" among SPARES
    # No refills behind the calls: SPARES allocations then take every spare, "crashed" too
    # (a refill racing them could leave it unpicked, which proves nothing either way).
    monkeypatch.setattr(again._spare_maker, "submit", lambda *args: None)
    for i in range(2, 2 + SPARES):
        again.allocate(rng, owner(i))
    again.close()
    assert reservation.read_text() == "c1\neth0\nnet\n"
    assert "crashed" not in spares(tmp_path)
    assert len(set(again.find(f"c{i}", "eth0")[0] for i in range(1, 2 + SPARES))) == 1 + SPARES
