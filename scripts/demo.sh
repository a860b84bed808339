#!/usr/bin/env bash
# `make demo`: a one-node lab with three pods that reach each other, their node and the
# external host; then how to look inside and how to tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
G=.venv/bin/gingham
LAB=${LAB:-demo}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

if [[ -e /run/gingham/labs/$LAB ]]; then
  say "removing the previous demo lab"
  run $G lab down --name "$LAB"
fi

say "build a one-node lab: underlay, node1 running the gingham agent, an external host"
run $G lab up --name "$LAB" --nodes 1

say "add three pods (each is exec'd through gingham -> portmap -> bandwidth, as kubelet does)"
for pod in web client1 client2; do
  run $G lab pod add --name "$LAB" node1 "default/$pod" --label "app=$pod"
done
run $G lab pod list --name "$LAB"

say "every pod <-> every pod, node -> every pod, every pod -> external"
run $G lab check --name "$LAB"

cat <<TXT

== look inside (real kernel state):
  ip netns list | grep ^$LAB-
  ip netns exec $LAB-pod-default-web ip addr show eth0
  ip netns exec $LAB-pod-default-web ip route          # default via 10.244.1.1 (cni0)
  ip netns exec $LAB-node1 ip route                    # 10.244.1.0/24 dev cni0
  ip netns exec $LAB-node1 bridge link                 # the pods' veths on cni0, hairpin on
  ip netns exec $LAB-node1 nft list ruleset            # table ip gingham: masquerade
  cat /run/gingham/labs/$LAB/nodes/node1/run/subnet.env
  cat /run/gingham/labs/$LAB/nodes/node1/net.d/10-gingham.conflist
  $G lab exec --name $LAB default/client1 -- ping -c 2 10.244.1.2

== tear it down:
  $G lab down --name $LAB
TXT
