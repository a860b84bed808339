"""Changing the network config of a running cluster without stranding a lease.

A config that some live lease does not fit (another Network, another SubnetLen, a range
that leaves a lease out) is refused with the leases it would strand: nodes keep their
subnets while their pods use them, so the old leases would stand beside new ones cut
another way. To renumber, remove those nodes (or let their leases lapse) first.

A config given without "Backend" keeps the stored backend, options included, unless
`replace` is set: net-conf.json's default backend is vxlan, and a file that only widens
SubnetMax must not switch a running host-gw cluster to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from gingham.model.network import (
    BackendConfig,
    NetworkConfig,
    NetworkConfigError,
    parse_network_config,
)
from gingham.subnet.lease import config_key
from gingham.subnet.registry import ConfigMissing, SubnetRegistry
from gingham.subnet.space import leases_that_do_not_fit

MAX_LISTED = 5


class ConfigRefused(NetworkConfigError):
    pass


def change_config(registry: SubnetRegistry, raw: str | bytes, replace: bool = False,
                  check_backend: Callable[[BackendConfig], None] | None = None
                  ) -> NetworkConfig:
    """Validate `raw` (net-conf.json) against the stored config and the live leases, and
    store it; returns what was stored. `check_backend(BackendConfig)` may refuse options."""
    parse_network_config(raw)  # every error about the file itself, first
    data = json.loads(raw)
    try:
        stored, revision = registry.read_config()
    except ConfigMissing:
        stored, revision = None, 0
    except NetworkConfigError:  # an unreadable stored config is what this replaces
        kv = registry.store.get(config_key(registry.prefix))
        stored, revision = None, kv.mod_revision if kv else 0
    if "Backend" not in data and stored is not None and not replace:
        data["Backend"] = stored.to_json()["Backend"]
    network = parse_network_config(data)
    if check_backend is not None:
        check_backend(network.backend)
    stranded = leases_that_do_not_fit(network, registry.leases().leases)
    if stranded:
        more = len(stranded) - MAX_LISTED
        raise ConfigRefused(
            "config not stored: live leases do not fit it: "
            + "; ".join(stranded[:MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
            + " (remove those nodes, or wait for their leases to lapse, then set it again)")
    if not registry.replace_config(network, revision):
        raise ConfigRefused("config not stored: the stored config changed meanwhile; "
                            "run `config set` again")
    return network
