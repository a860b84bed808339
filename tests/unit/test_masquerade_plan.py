"""The masquerade table is reconciled by difference: the kernel's listing (here as nft 1.0.6
prints it, handles and all) against the rendered table."""

from __future__ import annotations

import copy
import ipaddress

from gingham.dataplane.masquerade import plan_masquerade, render_masquerade_table

CLUSTER = [ipaddress.IPv4Network("10.244.0.0/16")]


def nodes(*last: int) -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address(f"192.168.50.{n}") for n in last]


def match(field: str, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": field}},
                      "right": right}}


def listed(*node_elems) -> list[dict]:
    """`nft -j list table ip gingham` of the table the agent writes, `node_elems` in `nodes`."""
    table = {"family": "ip", "table": "gingham"}
    rule = {**table, "chain": "postrouting"}
    return [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5",
                      "json_schema_version": 1}},
        {"table": {"family": "ip", "name": "gingham", "handle": 1303}},
        {"set": {**table, "name": "cluster", "type": "ipv4_addr", "handle": 1,
                 "flags": ["interval"], "elem": [{"prefix": {"addr": "10.244.0.0", "len": 16}}]}},
        {"set": {**table, "name": "nodes", "type": "ipv4_addr", "handle": 2,
                 "elem": list(node_elems)}},
        {"chain": {**table, "name": "postrouting", "handle": 3, "type": "nat",
                   "hook": "postrouting", "prio": 100, "policy": "accept"}},
        {"rule": {**rule, "handle": 4, "expr": [match("saddr", "@cluster"),
                                                match("daddr", "@cluster"), {"return": None}]}},
        {"rule": {**rule, "handle": 5, "expr": [match("saddr", "@cluster"),
                                                match("daddr", "@nodes"), {"return": None}]}},
        {"rule": {**rule, "handle": 6, "expr": [
            match("saddr", "@cluster"),
            match("daddr", {"prefix": {"addr": "224.0.0.0", "len": 4}}, "!="),
            {"masquerade": None}]}},
    ]


def test_a_table_that_is_right_is_left_alone():
    assert plan_masquerade(listed("192.168.50.11", "192.168.50.12"), CLUSTER,
                           nodes(12, 11)) == []


def test_a_node_joining_or_leaving_changes_only_its_element():
    have = listed("192.168.50.11", "192.168.50.12")
    assert plan_masquerade(have, CLUSTER, nodes(11, 12, 13)) == [
        {"add": {"element": {"family": "ip", "table": "gingham", "name": "nodes",
                             "elem": ["192.168.50.13"]}}}]
    assert plan_masquerade(have, CLUSTER, nodes(11)) == [
        {"delete": {"element": {"family": "ip", "table": "gingham", "name": "nodes",
                                "elem": ["192.168.50.12"]}}}]


def test_a_table_unlike_ours_is_replaced_whole():
    full = render_masquerade_table(CLUSTER, nodes(11, 12))
    assert plan_masquerade(None, CLUSTER, nodes(11, 12)) == full
    edited = listed("192.168.50.11", "192.168.50.12")
    edited[-1]["rule"]["expr"][-1] = {"accept": None}
    assert plan_masquerade(edited, CLUSTER, nodes(11, 12)) == full
    extra = listed("192.168.50.11", "192.168.50.12")
    extra.append(copy.deepcopy(extra[-1]))
    assert plan_masquerade(extra, CLUSTER, nodes(11, 12)) == full


def test_ip_masq_off_removes_the_table_only_if_there_is_one():
    assert plan_masquerade(None, CLUSTER, nodes(11), enabled=False) == []
    assert plan_masquerade(listed("192.168.50.11"), CLUSTER, nodes(11), enabled=False) \
        == render_masquerade_table(CLUSTER, nodes(11), enabled=False)
