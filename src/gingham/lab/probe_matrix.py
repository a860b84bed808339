"""`lab probe`'s pure part: which cells a probe has, the expected matrix the NetworkPolicy
oracle gives, how two matrices differ, and how they print.

A cell is one (from pod, to pod, port, protocol); a matrix maps each cell to whether
traffic got through. Tables are the Kubernetes netpol e2e "reachability" truth tables:
one per port and protocol, rows from, columns to, `.` allowed, `X` blocked.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from gingham.policy.evaluate import NamespaceView, PodView, Verdict, allowed
from gingham.policy.spec import NetworkPolicy

PROTOCOLS = ("tcp", "udp")  # what the prober can serve and send (no SCTP)
ALLOWED, BLOCKED = ".", "X"


@dataclass(frozen=True, order=True)
class Cell:
    source: str  # namespace/pod
    target: str
    port: int
    protocol: str  # lower case, as given on the command line

    @property
    def table(self) -> str:
        return f"{self.port}/{self.protocol}"


Matrix = Mapping[Cell, bool]


def parse_ports(text: str) -> tuple[int, ...]:
    """`80,81` -> (80, 81); ValueError for anything but distinct ports 1-65535."""
    ports = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise ValueError(f"port {part!r} is not a number 1-65535")
        if int(part) not in ports:
            ports.append(int(part))
    return tuple(ports)


def parse_protocols(text: str) -> tuple[str, ...]:
    protocols = []
    for part in text.split(","):
        part = part.strip().lower()
        if part not in PROTOCOLS:
            raise ValueError(f"protocol {part!r} is not one of {', '.join(PROTOCOLS)}")
        if part not in protocols:
            protocols.append(part)
    return tuple(protocols)


def cells(pods: Sequence[str], ports: Sequence[int], protocols: Sequence[str]) -> list[Cell]:
    """Every cell, table by table; a pod to itself included, as the e2e tables have it."""
    return [Cell(a, b, port, proto) for port in ports for proto in protocols
            for a in pods for b in pods]


def expected(pods: Sequence[PodView], ports: Sequence[int], protocols: Sequence[str], *,
             namespaces: Iterable[NamespaceView] = (),
             policies: Iterable[NetworkPolicy] = (),
             node_ips: Mapping[str, Collection[str]] | None = None) -> dict[Cell, Verdict]:
    """What the policies allow, cell by cell (the oracle's verdict, with its reasons)."""
    namespaces, policies = tuple(namespaces), tuple(policies)
    by_ref = {pod.ref: pod for pod in pods}
    return {cell: allowed(by_ref[cell.source], by_ref[cell.target], cell.port,
                          cell.protocol.upper(), pods=pods, namespaces=namespaces,
                          policies=policies, node_ips=node_ips)
            for cell in cells(list(by_ref), ports, protocols)}


@dataclass(frozen=True)
class Difference:
    cell: Cell
    expected: bool
    got: bool
    reasons: tuple[str, ...] = ()  # why the oracle decided as it did

    def __str__(self) -> str:
        c = self.cell
        return (f"{c.source} -> {c.target} {c.table}: expected {_word(self.expected)}, "
                f"got {_word(self.got)}")

    def to_json(self) -> dict:
        c = self.cell
        return {"from": c.source, "to": c.target, "port": c.port, "protocol": c.protocol,
                "expected": self.expected, "got": self.got, "reasons": list(self.reasons)}


def _word(ok: bool) -> str:
    return "allowed" if ok else "blocked"


def differences(expect: Mapping[Cell, Verdict], got: Matrix) -> list[Difference]:
    """Cells where the probe and the oracle disagree; a cell only one side has counts as
    blocked on the other (a probe that never ran got nothing through)."""
    found = []
    for cell in sorted(set(expect) | set(got)):
        verdict = expect.get(cell)
        want = verdict is not None and verdict.allowed
        have = got.get(cell, False)
        if want != have:
            found.append(Difference(cell, want, have, verdict.reasons if verdict else ()))
    return found


def tables(pods: Sequence[str], ports: Sequence[int], protocols: Sequence[str],
           matrix: Matrix) -> str:
    """One aligned truth table per port and protocol, each under its `PORT/PROTO` line."""
    blocks = []
    for port in ports:
        for proto in protocols:
            rows = [["-", *pods]] + [
                [a, *(ALLOWED if matrix.get(Cell(a, b, port, proto)) else BLOCKED
                      for b in pods)] for a in pods]
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows]
            blocks.append("\n".join([f"{port}/{proto}", *lines]))
    return "\n\n".join(blocks)


def nested(ports: Sequence[int], protocols: Sequence[str], matrix: Matrix
           ) -> dict[str, dict[str, dict[str, bool]]]:
    """{"80/tcp": {from: {to: allowed}}}: the JSON form of a matrix."""
    out: dict[str, dict[str, dict[str, bool]]] = {
        f"{port}/{proto}": {} for port in ports for proto in protocols}
    for cell in sorted(matrix):
        out.setdefault(cell.table, {}).setdefault(cell.source, {})[cell.target] = matrix[cell]
    return out


def report(pods: Sequence[str], ports: Sequence[int], protocols: Sequence[str], got: Matrix,
           expect: Mapping[Cell, Verdict] | None) -> dict:
    """The whole result as `lab probe --json` prints it."""
    diffs = differences(expect, got) if expect is not None else []
    return {"ports": list(ports), "protocols": list(protocols), "pods": list(pods),
            "matrix": nested(ports, protocols, got),
            "expected": None if expect is None else nested(
                ports, protocols, {c: v.allowed for c, v in expect.items()}),
            "differences": [d.to_json() for d in diffs]}
