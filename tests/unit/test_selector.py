"""Calico's selector syntax: what each form matches, its canonical text, and the errors."""

from __future__ import annotations

import pytest

from gingham.model.selector import SelectorError, parse

pytestmark = pytest.mark.unit
WEB = {"app": "web", "tier": "front", "zone": "a"}
DB = {"app": "db", "zone": "b", "k8s.io/role": "primary"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize(("text", "web", "db", "bare"), [
    ("", True, True, True),
    ("all()", True, True, True),
    ("app == 'web'", True, False, False),
    ('app == "web"', True, False, False),
    ("app != 'web'", False, True, True),  # an absent label is never equal
    ("has(tier)", True, False, False),
    ("!has(tier)", False, True, True),
    ("zone in {'a', 'c'}", True, False, False),
    ("zone not in {'a'}", False, True, True),
    ("zone in {}", False, False, False),
    ("k8s.io/role == 'primary'", False, True, False),
    ("app == 'web' || app == 'db' && zone == 'a'", True, False, False),  # && binds tighter
    ("(app == 'web' || app == 'db') && zone == 'b'", False, True, False),
    ("!(app == 'web' && has(tier))", False, True, True),
    ("!!has(tier)", True, False, False),
    ("app=='web'&&zone=='a'", True, False, False),
])
def test_each_form_matches_as_calico_does(text, web, db, bare):
    tree = parse(text)
    assert (tree.matches(WEB), tree.matches(DB), tree.matches(BARE)) == (web, db, bare)
    again = parse(str(tree))  # the canonical text means the same
    assert again == tree and str(again) == str(tree)


def test_canonical_text_reads_as_written():
    assert str(parse("  app=='web' &&(a in {'y','x'}||!has(b))")) == (
        "app == 'web' && (a in {'x', 'y'} || !has(b))")
    assert str(parse("a not in {'x'}")) == "a not in {'x'}"
    assert str(parse("v == \"it's\"")) == "v == \"it's\""


@pytest.mark.parametrize(("text", "says"), [
    ("app ==", "expected a quoted value, found the end"),
    ("app = 'web'", "unexpected"),
    ("has(", "expected a label key"),
    ("(app == 'web'", "expected ')'"),
    ("app == 'web' zone", "expected '&&', '||' or the end, found 'zone' at offset 13"),
    ("in in {'a'}", "expected a label key, found 'in'"),
    ("&& app == 'x'", "found '&&' at offset 0"),
    ("app in {'a' 'b'}", "expected '}'"),
    ("app not == 'x'", "expected 'in'"),
    ("app == web", "expected a quoted value"),
])
def test_what_does_not_parse_says_where(text, says):
    with pytest.raises(SelectorError) as err:
        parse(text)
    assert says in str(err.value)
