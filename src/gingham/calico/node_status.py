"""`gingham node status`, as calicoctl prints it: whether the node's Calico process runs,
then its BGP sessions as BIRD reports them (`show protocols` on its control socket), one
row per peer: address, type (from the protocol's name: Mesh_, Node_, Global_), state,
since when, and BIRD's info (Established, Active, ...)."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from gingham.calico.bird_config import PEER_TYPES


@dataclass(frozen=True)
class PeerRow:
    peer_address: str
    peer_type: str
    state: str
    since: str
    info: str


def parse_protocols(text: str) -> list[PeerRow]:
    """The BGP rows of `birdc show protocols` (BIRD 2: Name Proto Table State Since Info)."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[1] != "BGP":
            continue
        kind, _, address = parts[0].partition("_")
        if kind not in PEER_TYPES:
            continue  # a BGP protocol Gingham did not name
        try:
            ip = str(ipaddress.IPv4Address(address.replace("_", ".")))
        except ValueError:
            continue
        state, since = parts[3], parts[4].split(".")[0]  # BIRD 2 adds milliseconds
        rows.append(PeerRow(ip, PEER_TYPES[kind], state, since, " ".join(parts[5:])))
    return rows


def read_peers(control: Path) -> list[PeerRow] | None:
    """The node's BGP sessions, None when BIRD does not answer on `control`."""
    try:
        proc = subprocess.run(["birdc", "-s", str(control), "show", "protocols"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or "ready." not in proc.stdout:
        return None
    return parse_protocols(proc.stdout)


def boxed(rows: list[tuple[str, ...]]) -> str:
    """calicoctl's table: +---+ rules, headers centred, cells left-aligned."""
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(len(rows[0]))]
    rule = "+" + "+".join("-" * w for w in widths) + "+"
    head = "|" + "|".join(c.center(w) for c, w in zip(rows[0], widths, strict=True)) + "|"
    body = ["|" + "|".join(f" {c}".ljust(w) for c, w in zip(r, widths, strict=True)) + "|"
            for r in rows[1:]]
    return "\n".join([rule, head, rule, *body, rule])


def render_status(running: bool, peers: list[PeerRow] | None) -> str:
    lines = ["Calico process is running." if running else "Calico process is not running."]
    if peers is None:
        lines += ["", "BIRD is not answering on its control socket (is BGP on for this node?)"]
        return "\n".join(lines)
    lines += ["", "IPv4 BGP status"]
    if peers:
        lines.append(boxed([("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO")]
                           + [tuple(asdict(p).values()) for p in peers]))
    else:
        lines.append("No IPv4 peers found.")
    lines += ["", "IPv6 BGP status", "No IPv6 peers found."]
    return "\n".join(lines)
