"""Calico's label selectors: `all()`, `k == 'v'`, `k != 'v'`, `has(k)`, `k in {'a','b'}`,
`k not in {...}`, joined by `!`, `&&`, `||` and parentheses (that order of binding).

An absent label never equals a value: `k == 'v'` and `k in {...}` are false without `k`,
`k != 'v'` and `k not in {...}` true, as in Calico. The empty selector is `all()`.
`parse` gives a tree whose `str()` is the canonical text (it parses back to an equal
tree); IP pools select nodes with it, network policies pods and namespaces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

Labels = Mapping[str, str]


class SelectorError(ValueError):
    """A selector that does not parse; the message says where."""


@dataclass(frozen=True)
class All:
    def matches(self, labels: Labels) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True)
class Has:
    key: str

    def matches(self, labels: Labels) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True)
class In:
    """`k == 'v'` is In(k, {v}); `k != 'v'` is Not(In(k, {v})), and so on."""

    key: str
    values: frozenset[str]
    spelled_equal: bool = False  # written `k == 'v'`: kept so str() reads as it was written

    def matches(self, labels: Labels) -> bool:
        return labels.get(self.key) in self.values

    def __str__(self) -> str:
        if self.spelled_equal:
            (value,) = self.values
            return f"{self.key} == {_quote(value)}"
        return f"{self.key} in {{{', '.join(_quote(v) for v in sorted(self.values))}}}"


@dataclass(frozen=True)
class Not:
    term: Selector

    def matches(self, labels: Labels) -> bool:
        return not self.term.matches(labels)

    def __str__(self) -> str:
        term = self.term
        if isinstance(term, Has):
            return f"!{term}"
        if isinstance(term, In):
            if term.spelled_equal:
                (value,) = term.values
                return f"{term.key} != {_quote(value)}"
            return str(term).replace(" in {", " not in {", 1)
        return f"!({term})"


@dataclass(frozen=True)
class And:
    terms: tuple[Selector, ...]

    def matches(self, labels: Labels) -> bool:
        return all(t.matches(labels) for t in self.terms)

    def __str__(self) -> str:
        return " && ".join(f"({t})" if isinstance(t, Or) else str(t) for t in self.terms)


@dataclass(frozen=True)
class Or:
    terms: tuple[Selector, ...]

    def matches(self, labels: Labels) -> bool:
        return any(t.matches(labels) for t in self.terms)

    def __str__(self) -> str:
        return " || ".join(str(t) for t in self.terms)


Selector = All | Has | In | Not | And | Or

# A label key as Kubernetes allows it: an optional DNS prefix and '/', then a name.
KEY = r"[A-Za-z0-9](?:[A-Za-z0-9_.\-/]*[A-Za-z0-9])?"
TOKEN = re.compile(
    rf"""\s*(?:
      (?P<op>&&|\|\||==|!=|[!(){{}},])
    | (?P<string>'[^']*'|"[^"]*")
    | (?P<word>{KEY})
    )""",
    re.VERBOSE,
)
RESERVED = {"all", "has", "in", "not"}


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, offset) of each token; kind is op, string or word."""
    tokens, at = [], 0
    while at < len(text):
        if text[at:].isspace():
            break
        found = TOKEN.match(text, at)
        if found is None or found.end() == at:
            raise SelectorError(f"unexpected {text[at:].strip()[:20]!r} at offset {at}")
        kind = found.lastgroup
        assert kind is not None
        tokens.append((kind, found.group(kind), found.start(kind)))
        at = found.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self, offset: int = 0) -> tuple[str, str, int] | None:
        i = self.at + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def fail(self, expected: str) -> SelectorError:
        token = self.peek()
        where = f"{token[1]!r} at offset {token[2]}" if token else "the end"
        return SelectorError(f"expected {expected}, found {where}")

    def take(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token[0] != "string" and token[1] == text:
            self.at += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.take(text):
            raise self.fail(repr(text))

    def parse(self) -> Selector:
        if not self.tokens:
            return All()
        tree = self.either()
        if self.peek() is not None:
            raise self.fail("'&&', '||' or the end")
        return tree

    def either(self) -> Selector:
        terms = [self.both()]
        while self.take("||"):
            terms.append(self.both())
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def both(self) -> Selector:
        terms = [self.unary()]
        while self.take("&&"):
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def unary(self) -> Selector:
        if self.take("!"):
            return Not(self.unary())
        if self.take("("):
            tree = self.either()
            self.expect(")")
            return tree
        return self.atom()

    def atom(self) -> Selector:
        token = self.peek()
        if token is None or token[0] != "word":
            raise self.fail("a label, 'all()', 'has(...)', '!' or '('")
        word = token[1]
        nxt = self.peek(1)
        if word in ("all", "has") and nxt is not None and nxt[1] == "(":
            self.at += 2
            if word == "all":
                self.expect(")")
                return All()
            key = self.key()
            self.expect(")")
            return Has(key)
        key = self.key()
        if self.take("=="):
            return In(key, frozenset([self.string()]), spelled_equal=True)
        if self.take("!="):
            return Not(In(key, frozenset([self.string()]), spelled_equal=True))
        negated = self.take("not")
        if not self.take("in"):
            raise self.fail("'==', '!=', 'in' or 'not in'" if not negated else "'in'")
        found = In(key, self.string_set())
        return Not(found) if negated else found

    def key(self) -> str:
        token = self.peek()
        if token is None or token[0] != "word" or token[1] in RESERVED:
            raise self.fail("a label key")
        self.at += 1
        return token[1]

    def string(self) -> str:
        token = self.peek()
        if token is None or token[0] != "string":
            raise self.fail("a quoted value")
        self.at += 1
        return token[1][1:-1]

    def string_set(self) -> frozenset[str]:
        self.expect("{")
        values = []
        if not self.take("}"):
            values.append(self.string())
            while self.take(","):
                values.append(self.string())
            self.expect("}")
        return frozenset(values)


def parse(text: str) -> Selector:
    """The selector `text` stands for; SelectorError naming the offset if it is not one."""
    return _Parser(text).parse()
