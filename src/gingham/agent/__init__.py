"""The per-node agent: serves CNI calls and reconciles the node's dataplane."""
