"""The commands that take an nft table from one rendering to the next, as one transaction:
new sets, maps and chains added, changed chains flushed and refilled, set and map elements
added and deleted one by one, what is gone removed last (once nothing refers to it).
A rule-less change (a pod's address, a label) is then only element updates. Pure: both
sides are renderings (`add` commands of one table), never the kernel's listing, whose
normal form differs from what was sent."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field


def _canon(value: object) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass
class Rendering:
    ident: dict = field(default_factory=dict)  # family and table
    sets: dict[str, tuple[str, dict]] = field(default_factory=dict)  # name -> (set|map, spec)
    chains: dict[str, dict] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> canonical exprs
    elements: dict[str, set[str]] = field(default_factory=dict)  # set/map -> canonical

    @classmethod
    def of(cls, commands: Iterable[dict]) -> Rendering:
        out = cls()
        for command in commands:
            if "add" not in command:
                continue
            kind, spec = next(iter(command["add"].items()))
            if kind == "table":
                out.ident = {"family": spec["family"], "table": spec["name"]}
            elif kind in ("set", "map"):
                out.sets[spec["name"]] = (kind, spec)
                out.elements.setdefault(spec["name"], set())
            elif kind == "element":
                out.elements.setdefault(spec["name"], set()).update(map(_canon, spec["elem"]))
            elif kind == "chain":
                out.chains[spec["name"]] = spec
                out.rules.setdefault(spec["name"], [])
            elif kind == "rule":
                out.rules.setdefault(spec["chain"], []).append(_canon(spec["expr"]))
        return out


def plan_update(was: Rendering, want: Rendering) -> list[dict] | None:
    """The difference from rendering `was` to `want`; [] when equal; None when it cannot be
    done piecewise (a set or a base chain changed its type): replace the table whole."""
    ident = want.ident
    if was.ident != ident:
        return None
    for name in was.sets.keys() & want.sets.keys():
        if was.sets[name] != want.sets[name]:
            return None
    for name in was.chains.keys() & want.chains.keys():
        if was.chains[name] != want.chains[name]:
            return None
    if "hook" in _all(was.chains, want.chains):
        return None  # a base chain came or went
    commands: list[dict] = []
    for name in sorted(want.sets.keys() - was.sets.keys()):
        kind, spec = want.sets[name]
        commands.append({"add": {kind: spec}})
    for name in sorted(want.chains.keys() - was.chains.keys()):
        commands.append({"add": {"chain": want.chains[name]}})
    for name in sorted(want.chains):
        if was.rules.get(name) != want.rules[name]:
            if name in was.chains:
                commands.append({"flush": {"chain": {**ident, "name": name}}})
            commands += [{"add": {"rule": {**ident, "chain": name, "expr": json.loads(e)}}}
                         for e in want.rules[name]]
    for name in sorted(want.sets):
        held = was.elements.get(name, set())
        if gone := sorted(held - want.elements[name]):
            commands.append({"delete": {"element": {**ident, "name": name,
                                                    "elem": list(map(json.loads, gone))}}})
        if added := sorted(want.elements[name] - held):
            commands.append({"add": {"element": {**ident, "name": name,
                                                 "elem": list(map(json.loads, added))}}})
    for name in sorted(was.chains.keys() - want.chains.keys()):
        commands += [{"flush": {"chain": {**ident, "name": name}}},
                     {"delete": {"chain": {**ident, "name": name}}}]
    for name in sorted(was.sets.keys() - want.sets.keys()):
        kind, _ = was.sets[name]
        commands.append({"delete": {kind: {**ident, "name": name}}})
    return commands


def _all(was: dict[str, dict], want: dict[str, dict]) -> set[str]:
    """The keys of the chains only one side has."""
    only = [was[n] for n in was.keys() - want.keys()] + [want[n] for n in want.keys()
                                                          - was.keys()]
    return {key for spec in only for key in spec}
