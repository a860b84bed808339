"""Pods are recorded in the datastore by the CNI service in both cluster modes: the lab
declares labels and named ports, ADD adds the IP and node, DEL removes the record."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("mode", ["flannel", "calico"])
def test_pods_are_recorded_on_add_and_removed_on_del(make_lab, cli, mode):
    lab = make_lab(2, via_cli=True, cli_args=("--mode", mode))
    ip = lab.gingham("pod", "add", "node2", "shop/cart", "--label", "app=cart",
                     "--port", "http=8080/TCP", "--port", "dns=53/udp").stdout.strip()
    (pod,) = json.loads(cli("--lab", lab.name, "get", "pods", "-n", "shop", "-o",
                            "json").stdout)
    assert pod == {"namespace": "shop", "name": "cart", "ip": ip, "node": "node2",
                   "labels": {"app": "cart"}, "ports": ["http=8080/TCP", "dns=53/UDP"]}
    labeled = cli("--lab", lab.name, "label", "pods", "cart", "-n", "shop", "tier=back")
    assert labeled.stdout.strip() == "pod/cart labeled", labeled
    namespaces = json.loads(cli("--lab", lab.name, "get", "namespaces", "-o", "json").stdout)
    assert {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}} in namespaces
    assert lab.gingham("pod", "del", "shop/cart").returncode == 0
    assert json.loads(cli("--lab", lab.name, "get", "pods", "-o", "json").stdout) == []
    missing = cli("--lab", lab.name, "label", "pods", "cart", "-n", "shop", "a=b")
    assert missing.returncode == 1 and "pod shop/cart does not exist" in missing.stderr
