#!/usr/bin/env bash
# `make demo`: a one-node lab with three pods that reach each other, their node and the
# external host; then a 3-node Calico-mode cluster across a router that speaks BGP; then
# how to look inside and how to tear both down.
set -euo pipefail
cd "$(dirname "$0")/.."
G=.venv/bin/gingham
LAB=${LAB:-demo}
CALICO=${CALICO:-calicodemo}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

for lab in "$LAB" "$CALICO"; do
  if [[ -e /run/gingham/labs/$lab ]]; then
    say "removing the previous demo lab $lab"
    run $G lab down --name "$lab"
  fi
done

say "build a one-node lab: underlay, node1 running the gingham agent, an external host"
run $G lab up --name "$LAB" --nodes 1

say "add three pods (each is exec'd through gingham -> portmap -> bandwidth, as kubelet does)"
for pod in web client1 client2; do
  run $G lab pod add --name "$LAB" node1 "default/$pod" --label "app=$pod"
done
run $G lab pod list --name "$LAB"

say "every pod <-> every pod, node -> every pod, every pod -> external"
run $G lab check --name "$LAB"

say "Calico mode: 3 nodes on two segments, a top-of-rack router speaking BGP (FRR), BIRD on every node"
run $G lab up --name "$CALICO" -f examples/tor-bgp.yaml --mode calico
for node in node1 node2 node3; do
  run $G lab pod add --name "$CALICO" "$node" "default/pod-$node"
done
run $G lab check --name "$CALICO"
say "node1's routes: its pods, its block, the other blocks learned by BGP (node3's through the router)"
run ip netns exec "$CALICO-node1" ip route
run $G --lab "$CALICO" node status --node node1

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

  ip netns exec $CALICO-node1 ip route | grep bird   # 10.244.0.128/26 via 192.168.50.1 proto bird
  ip netns exec $CALICO-tor1 ip route                 # the pod blocks, proto bgp
  $G --lab $CALICO get ippools -o wide
  $G --lab $CALICO ipam show --show-blocks

== tear them down:
  $G lab down --name $LAB
  $G lab down --name $CALICO
TXT
