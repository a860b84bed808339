"""Address management: host-local style ranges over a node's pod subnet."""
