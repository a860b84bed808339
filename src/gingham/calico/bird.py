"""BIRD on a Calico-mode node: the agent renders its config from the datastore
(calico/bird_config.py), runs BIRD 2 in the node's network namespace, and reloads it with
`birdc configure` when the config changes (sessions whose settings did not change stay up).
A config BIRD rejects is not installed: the previous one stays in force, and the reason is
a problem in the node's status.

BIRD outlives the agent: started in a session of its own, with a pidfile, it is adopted by
the next agent (a restart or an upgrade of the agent touches no BGP session, so no peer
withdraws a route). BIRD that exits is started again, with a backoff; the kernel keeps its
routes meanwhile (`persist`) and the peers theirs (graceful restart)."""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gingham.calico.bird_config import (
    DEFAULT_ASN,
    DEFAULT_PORT,
    BgpSetup,
    PeerConflict,
    plan_peers,
)
from gingham.calico.bird_config import render_bird_config as render
from gingham.calico.kinds import BGP_CONFIGS, BGP_PEERS, BLOCKS, NODES, POOLS
from gingham.calico.node_status import read_peers
from gingham.calico.tunnels import ipip_device
from gingham.dataplane import rtmsg
from gingham.ipam.block_ipam import Pool
from gingham.ipam.blocks import Block
from gingham.model.files import write_atomically
from gingham.resources.document import Resource
from gingham.resources.kinds import seconds
from gingham.subnet.lease import NodeInfo
from gingham.sync.whole import WholePictureManager

log = logging.getLogger("gingham.calico.bird")
RESTART_MIN, RESTART_MAX = 1.0, 30.0
SESSION_CHECK = 5.0  # s between looks at the BGP sessions
SESSION_GRACE = 10.0  # a session down this long is a problem (BIRD retries every 5 s)
RTPROT_BIRD = 12


def _is_bird(pid: int) -> bool:
    """Whether `pid` is a live BIRD: an adopted one that exited may linger as a zombie,
    since whoever inherited it reaps it when it likes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, _, rest = stat.partition("(")[2].rpartition(")")
    return comm == "bird" and rest.split()[0] not in ("Z", "X")


def retire(run_dir: Path) -> None:
    """BGP is off on this node now: stop the BIRD an earlier agent left running, and take
    the routes it kept in the kernel (persist) out, so the datastore's routes take over
    with nothing of BIRD's left."""
    try:
        pid = int((run_dir / "bird.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if pid and _is_bird(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _is_bird(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("BGP is off: stopped BIRD (pid %d)", pid)
    with rtmsg.rtnl() as rtnl:
        stale = [r for r in rtmsg.dump_routes(rtnl) if r.proto == RTPROT_BIRD]
        rtmsg.send(rtnl, [rtmsg.route_message(False, r.dst, r.gateway, r.oif or 0, False,
                                              r.table, RTPROT_BIRD) for r in stale],
                   tolerated=rtmsg.GONE)
    if stale:
        log.info("BGP is off: removed %d routes BIRD had left", len(stale))


def _kernel_has_bird_routes() -> bool:
    with rtmsg.rtnl() as rtnl:
        return any(route.proto == RTPROT_BIRD for route in rtmsg.dump_routes(rtnl))


class BirdProcess:
    def __init__(self, run_dir: Path, wake: Callable[[], None] = lambda: None) -> None:
        self.wake = wake  # called when BIRD exits, and when a restart is due
        self.config = run_dir / "bird.conf"
        self.control = run_dir / "bird.ctl"
        self.pidfile = run_dir / "bird.pid"
        self.log = run_dir / "bird.log"
        self.child: subprocess.Popen | None = None  # when this agent started it
        self.pid: int | None = None  # this agent's child's, or an adopted one's
        self._delay = 0.0
        self._next_start = 0.0
        self._waiting = False  # an exited BIRD waits out its backoff

    def apply(self, text: str) -> list[str]:
        """Make BIRD run `text`; the problems standing."""
        if shutil.which("bird") is None or shutil.which("birdc") is None:
            return ["BIRD is not installed (Debian package bird2): no BGP on this node"]
        changed = not self.config.exists() or self.config.read_text() != text
        if changed:
            trial = self.config.with_name("bird.conf.new")
            write_atomically(trial, text)
            check = subprocess.run(["bird", "-p", "-c", str(trial)], capture_output=True,
                                   text=True, timeout=30)
            if check.returncode != 0:
                return [f"BIRD rejects the new config ({check.stderr.strip()}); the previous "
                        "one stays in force"]
            trial.replace(self.config)
        if self.pid is None:
            self._adopt()
        if self.pid is None or self.exited():
            return self._start()
        if changed:
            reload = subprocess.run(["birdc", "-s", str(self.control), "configure"],
                                    capture_output=True, text=True, timeout=30)
            if "Reconfigur" not in reload.stdout:
                return [f"birdc configure failed: {(reload.stdout or reload.stderr).strip()}"]
        return []

    def _adopt(self) -> None:
        """Take over the BIRD an earlier agent of this node left running."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if _is_bird(pid):
            self.pid = pid
            self._watch(pid)
            log.info("BIRD already runs (pid %d): taking it over", pid)

    def exited(self) -> bool:
        if self.child is not None:
            return self.child.poll() is not None
        return self.pid is not None and not _is_bird(self.pid)

    def _start(self) -> list[str]:
        """Start BIRD; one that exited is started again after a backoff (kept as it was
        until then, so `exited` stays true and the loop comes back)."""
        if self.pid is not None:
            if not self._waiting:
                self._waiting = True
                self._delay = min(max(self._delay * 2, RESTART_MIN), RESTART_MAX)
                self._next_start = time.monotonic() + self._delay
                log.warning("BIRD exited; starting it again in %.0f s", self._delay)
            wait = self._next_start - time.monotonic()
            if wait > 0:
                timer = threading.Timer(wait, self.wake)
                timer.daemon = True
                timer.start()
                return [f"BIRD exited; starting it again in {wait:.0f} s"]
        self._waiting = False
        # -R, graceful restart recovery, when an earlier BIRD left routes in the kernel:
        # this one keeps them until it has relearned them (calico-node always passes it;
        # on a first start it would only hold the kernel back until every peer is up).
        recover = ["-R"] if self.pid is not None or _kernel_has_bird_routes() else []
        with open(self.log, "ab") as out:
            # A session of its own: the agent's supervisor signalling the agent, or the
            # agent exiting, leaves BIRD and its sessions alone.
            self.child = subprocess.Popen(
                ["bird", "-f", *recover, "-c", str(self.config), "-s", str(self.control),
                 "-P", str(self.pidfile)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        self.pid = self.child.pid
        log.info("BIRD started (pid %d), config %s", self.pid, self.config)
        self._watch(self.pid)
        return []

    def _watch(self, pid: int) -> None:
        """Wake the loop when `pid` exits (a pidfd works for a process not our child)."""
        child = self.child

        def wait() -> None:
            if child is not None:
                child.wait()
            else:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    self.wake()
                    return
                try:
                    select.select([fd], [], [])
                finally:
                    os.close(fd)
            self.wake()

        threading.Thread(target=wait, name="bird-watch", daemon=True).start()


class BirdManager(WholePictureManager):
    """Renders this node's BIRD config from what it holds and hands it to BIRD; looks at
    its sessions every few seconds, so a peer that never answers (or stops) is a problem
    in the node's status while BIRD keeps trying."""

    name = "bird"
    kinds = (NODES, BLOCKS, POOLS, BGP_CONFIGS, BGP_PEERS)

    def __init__(self, node: str, bird: BirdProcess) -> None:
        super().__init__()
        self.node = node
        self.bird = bird
        self._down_since: dict[str, float] = {}  # peer address -> when first seen down
        self._look_due = False
        self._timer: threading.Timer | None = None

    def setup(self) -> BgpSetup:
        configs = {r.name: r for r in self.of(BGP_CONFIGS, Resource)}
        default = configs.get("default")
        spec = default.spec if default else {}
        restart = spec.get("nodeMeshMaxRestartTime")
        return BgpSetup(mesh=spec.get("nodeToNodeMeshEnabled", True),
                        asn=spec.get("asNumber", DEFAULT_ASN),
                        port=spec.get("listenPort", DEFAULT_PORT),
                        peers=[r.spec for r in self.of(BGP_PEERS, Resource)],
                        mesh_restart_time=seconds(restart) if restart else None,
                        bfd=spec.get("bfdEnabled", False),
                        log_severity=spec.get("logSeverityScreen", "Info"))

    def dirty(self) -> bool:
        return super().dirty() or (self._listed == set(self.kinds)
                                   and (self.bird.exited() or self._look_due))

    def apply_whole(self) -> list[str]:
        nodes = {n.name: n for n in self.of(NODES, NodeInfo)}
        me = nodes.get(self.node)
        if me is None:
            return [f"no node record for {self.node} yet: BIRD not configured"]
        setup = self.setup()
        pools = sorted((p for p in self.of(POOLS, Pool) if not p.spec["disabled"]),
                       key=lambda p: p.name)
        own = sorted(b.cidr for b in self.of(BLOCKS, Block) if b.node == self.node
                     and any(b.cidr.subnet_of(p.cidr) for p in pools))
        try:
            peers = plan_peers(me, nodes, setup)
        except PeerConflict as err:
            return [f"{err}: BIRD's config is left as it was", *self._sessions()]
        problems = self.bird.apply(render(me, setup, peers, pools, own, ipip_device()))
        return problems + self._sessions()

    def _sessions(self) -> list[str]:
        """The sessions down for longer than the grace; the next look armed."""
        self._look_due = False
        if self._timer is None or not self._timer.is_alive():
            self._timer = threading.Timer(SESSION_CHECK, self._look)
            self._timer.daemon = True
            self._timer.start()
        rows = read_peers(self.bird.control)
        if rows is None:
            return []  # BIRD not answering: its start or exit is the problem reported
        now = time.monotonic()
        self._down_since = {row.peer_address: self._down_since.get(row.peer_address, now)
                            for row in rows if not row.info.startswith("Established")}
        return [f"BGP peer {address} has not been established for {SESSION_GRACE:.0f} s; "
                "BIRD keeps trying (`node status` shows its state)"
                for address, since in sorted(self._down_since.items())
                if now - since >= SESSION_GRACE]

    def _look(self) -> None:
        self._look_due = True
        self.bird.wake()

