"""The NetworkPolicy manager of a node, in either cluster mode: pods, namespaces and
policies in; the node's `inet gingham_policy` table out (policy/compile.py), each change one
atomic transaction of only what differs (dataplane/nft_diff.py).

No pod of this node isolated, no table: its `ct` expressions would switch conntrack on for
every packet the node forwards, a cost a cluster without policy must not pay.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from gingham.agent.config import AgentConfig
from gingham.dataplane import nft
from gingham.dataplane.nft_diff import Rendering, plan_update
from gingham.policy.compile import (
    FAMILY,
    MARK_MASK,
    TABLE,
    base_chains,
    render_policy_body,
)
from gingham.policy.evaluate import NamespaceView, PodView
from gingham.policy.flowlog import FLOWS_FILE, FlowLog
from gingham.policy.kinds import NAMESPACES, PODS, POLICIES
from gingham.policy.spec import NetworkPolicy
from gingham.sync.whole import WholePictureManager

log = logging.getLogger("gingham.policy.manager")
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


class PolicyManager(WholePictureManager):
    name = "network-policy"
    kinds = (PODS, NAMESPACES, POLICIES)

    def __init__(self, node: str, bridged: bool, flows: FlowLog | None = None) -> None:
        """`bridged`: this node's pods hang off a bridge (Flannel mode), whose traffic
        meets the forward hook only through br_netfilter. `flows`: denied packets are
        logged, and read into it."""
        super().__init__()
        self.node = node
        self.bridged = bridged
        self.flows = flows
        self._applied: list[dict] | None = None  # the rendering in the kernel
        self._parsed: Rendering | None = None  # the same, read for plan_update
        self._body: list[dict] | None = None  # it, without the base chains
        # Never a generation an earlier agent of this node may have left in marks.
        self._generation = int(time.time() * 10) % MARK_MASK

    def apply_whole(self) -> list[str]:
        problems = self.undecodable()
        pods = self.of(PODS, PodView)
        local = {p.ref for p in pods if p.node == self.node}
        body = render_policy_body(self.of(POLICIES, NetworkPolicy), pods,
                                  self.of(NAMESPACES, NamespaceView), local,
                                  log_denied=self.flows is not None)
        if self.resync_due and self._applied is not None \
                and (nft.list_table(FAMILY, TABLE) is None) != (not self._applied):
            self._applied = None  # the kernel's table is not what was applied: replace it
        self.resync_due = False
        if body != self._body or self._applied is None:
            # a new generation: every live connection is judged again by the new rules
            self._generation = self._generation % MARK_MASK + 1
            self._write(body + base_chains(self._generation) if body else [])
            self._body = body
        if body and self.bridged and _bridge_nf_off():
            problems.append("bridged pod traffic bypasses NetworkPolicy: "
                            f"{BRIDGE_NF} is not 1 in this node")
        return problems

    def _write(self, want: list[dict]) -> None:
        if not want and nft.list_table(FAMILY, TABLE) is not None:
            nft.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
            log.info("no pod here is isolated by a NetworkPolicy: table removed")
        parsed = Rendering.of(want)
        if want:
            update = plan_update(self._parsed, parsed) if self._applied else None
            try:
                nft.run(want if update is None else update)
            except nft.NftError as err:
                if update is None:
                    raise
                # The table is not what was last applied (a hand edit): replace it whole.
                log.warning("updating the policy table failed (%s); replacing it", err)
                nft.run(want)
        self._applied, self._parsed = want, parsed


def policy_manager(config: AgentConfig, bridged: bool) -> PolicyManager:
    """An agent's manager, logging denials when the agent was told to."""
    flows = None
    if config.log_denied:
        flows = FlowLog(config.run_dir / FLOWS_FILE)
        flows.start()
    return PolicyManager(config.node_name, bridged, flows)


def _bridge_nf_off() -> bool:
    try:
        return BRIDGE_NF.read_text().strip() != "1"
    except OSError:
        return True  # br_netfilter is not loaded
