"""No two leases ever overlap, whatever the config history: random sequences of config
changes, joins (some concurrent with a config change), leaves and lease expiries, run
against both real datastores, with the store checked after every step."""

from __future__ import annotations

import ipaddress
import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from gingham.model.network import NetworkConfigError, parse_network_config
from gingham.subnet.config_change import change_config
from gingham.subnet.lease import LeaseAttrs
from gingham.subnet.manager import ConfigChanged, LeaseManager, SubnetExhausted
from gingham.subnet.registry import SubnetRegistry
from gingham.subnet.space import leases_that_do_not_fit, overlapping

NODES = [f"node{i}" for i in range(1, 11)]
NETWORKS = ["10.244.0.0/16", "10.244.0.0/20", "10.244.0.0/22", "10.245.0.0/16"]
STEPS = 160
SEEDS = range(4)


def random_config(rng: random.Random) -> dict:
    network = ipaddress.IPv4Network(rng.choice(NETWORKS))
    conf: dict = {"Network": str(network)}
    if rng.random() < 0.8:
        conf["SubnetLen"] = rng.choice([22, 24, 26, 28])
        size = 1 << (32 - conf["SubnetLen"])
        count = network.num_addresses // size
        if count > 4 and rng.random() < 0.5:
            low = rng.randrange(1, count // 2)
            conf["SubnetMin"] = str(network.network_address + low * size)
            conf["SubnetMax"] = str(network.network_address + rng.randrange(low + 1, count) * size)
    if rng.random() < 0.5:
        conf["Backend"] = {"Type": rng.choice(["host-gw", "vxlan"])}
    return conf


class Cluster:
    """The nodes' side of the store, as agents use it."""

    def __init__(self, registry: SubnetRegistry) -> None:
        self.registry = registry
        self.leases: dict[str, object] = {}
        self.lock = threading.Lock()

    def join(self, node: str, previous: ipaddress.IPv4Network | None = None) -> None:
        try:
            manager = LeaseManager(self.registry, self.registry.get_config())
            got = manager.acquire(LeaseAttrs(ipaddress.IPv4Address("192.168.50.11"),
                                             "host-gw", node), previous)
        except (SubnetExhausted, ConfigChanged, NetworkConfigError):
            return
        with self.lock:
            self.leases[node] = got

    def leave(self, node: str) -> None:
        lease = self.leases.pop(node, None)
        if lease is not None:
            self.registry.delete_lease(lease)

    def expire(self, node: str) -> None:
        # What the TTL's end does: the store drops the lease and every key riding it.
        lease = self.leases.pop(node, None)
        if lease is not None:
            self.registry.store.revoke(lease.store_lease)

    def set_config(self, conf: dict, replace: bool) -> bool:
        try:
            change_config(self.registry, json.dumps(conf), replace)
            return True
        except NetworkConfigError:
            return False


def assert_no_overlap(registry: SubnetRegistry, step: str) -> None:
    listing = registry.leases()
    subnets = [lease.subnet for lease in listing.leases]
    assert len(set(subnets)) == len(subnets), step
    assert overlapping(subnets) == set(), f"{step}: {sorted(map(str, subnets))}"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_histories_never_overlap(store, seed):
    registry = SubnetRegistry(store, f"/history{seed}")
    cluster = Cluster(registry)
    rng = random.Random(seed)
    registry.set_config(parse_network_config({"Network": "10.244.0.0/16",
                                              "Backend": {"Type": "host-gw"}}))
    tally = {"joined": 0, "refused": 0, "stored": 0}
    for step in range(STEPS):
        roll = rng.random()
        node = rng.choice(NODES)
        if roll < 0.40:
            previous = rng.choice([None, *(x.subnet for x in cluster.leases.values())])
            cluster.join(node, previous)
            tally["joined"] += 1
        elif roll < 0.55:
            cluster.leave(node)
        elif roll < 0.70:
            cluster.expire(node)
        elif roll < 0.90:
            stored = cluster.set_config(random_config(rng), replace=rng.random() < 0.3)
            tally["stored" if stored else "refused"] += 1
            if stored:  # sequentially, a stored config strands no live lease
                assert leases_that_do_not_fit(registry.get_config(),
                                              registry.leases().leases) == []
        else:
            # A burst: joins racing each other and a config change.
            joiners = rng.sample(NODES, 4)
            conf = random_config(rng)
            with ThreadPoolExecutor(5) as pool:
                futures = [pool.submit(cluster.join, n) for n in joiners]
                futures.append(pool.submit(cluster.set_config, conf, False))
                for future in futures:
                    future.result()
        assert_no_overlap(registry, f"seed {seed} step {step}")
    # The history did exercise both outcomes of a config change.
    assert tally["stored"] and tally["refused"] and tally["joined"], tally

