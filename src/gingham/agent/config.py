"""What one agent is told about its node and cluster."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from gingham.store.factory import StoreOptions
from gingham.subnet.lease import DEFAULT_PREFIX, check_node_name
from gingham.subnet.manager import DEFAULT_RENEW_MARGIN, DEFAULT_TTL

DEFAULT_SOCKET = Path("/run/gingham/agent.sock")
DEFAULT_STATE_DIR = Path("/var/lib/gingham")
DEFAULT_RUN_DIR = Path("/run/gingham")
DEFAULT_BRIDGE = "cni0"
DEFAULT_NETWORK_NAME = "gingham"
CONFLIST_NAME = "10-gingham.conflist"


@dataclass
class AgentConfig:
    node_name: str
    # Static mode: both given. Datastore mode (store set): both come from the cluster.
    pod_subnet: ipaddress.IPv4Network | None = None
    cluster_cidr: ipaddress.IPv4Network | None = None
    store: StoreOptions | None = None
    prefer_subnet: ipaddress.IPv4Network | None = None  # asked for when no lease is held
    prefix: str = DEFAULT_PREFIX
    lease_ttl: int = DEFAULT_TTL
    lease_renew_margin: int = DEFAULT_RENEW_MARGIN
    labels: dict[str, str] = field(default_factory=dict)
    socket_path: Path = DEFAULT_SOCKET
    state_dir: Path = DEFAULT_STATE_DIR
    run_dir: Path = DEFAULT_RUN_DIR
    cni_conf_dir: Path | None = None
    bridge: str = DEFAULT_BRIDGE
    network_name: str = DEFAULT_NETWORK_NAME
    mtu: int | None = None  # None: what the backend leaves of the uplink's MTU
    iface: str | None = None  # None: the interface of the default route
    public_ip: ipaddress.IPv4Address | None = None
    ip_masq: bool = True
    workers: int = 8
    mode: str = "flannel"  # or calico: the cluster mode this agent runs (calico/kinds.py)
    bgp: bool = False  # calico: BIRD announces and learns the blocks (calico/bird.py)
    log_denied: bool = False  # packets NetworkPolicy drops go to NFLOG (policy/flowlog.py)

    def __post_init__(self) -> None:
        check_node_name(self.node_name)
        if self.mode not in ("flannel", "calico"):
            raise ValueError(f"mode {self.mode!r} is not flannel or calico")
        if self.mode == "calico" and self.store is None:
            raise ValueError("calico mode needs a datastore (--datastore)")
        if self.store is None:
            if self.pod_subnet is None:
                raise ValueError("give --subnet (static mode) or --datastore")
            if self.cluster_cidr is None:
                self.cluster_cidr = ipaddress.IPv4Network("10.244.0.0/16")
        if self.pod_subnet is not None and self.cluster_cidr is not None:
            if not self.pod_subnet.subnet_of(self.cluster_cidr):
                raise ValueError(f"pod subnet {self.pod_subnet} is not inside "
                                 f"{self.cluster_cidr}")
            if self.pod_subnet.prefixlen > 30:
                raise ValueError(f"pod subnet {self.pod_subnet} is too small (at most /30)")
        if len(self.bridge) > 15:
            raise ValueError(f"bridge name {self.bridge!r} is longer than 15 characters")

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        assert self.pod_subnet is not None
        return ipaddress.IPv4Interface(f"{self.pod_subnet.network_address + 1}/"
                                       f"{self.pod_subnet.prefixlen}")

    @property
    def ipam_dir(self) -> Path:
        return self.state_dir / "ipam"

    @property
    def subnet_env(self) -> Path:
        return self.run_dir / "subnet.env"

    @property
    def status_path(self) -> Path:
        return self.run_dir / "status.json"
