"""Clusters of network namespaces on one machine. The lab is only a harness: nodes run the real
agent, pods are wired by exec'ing the real plugins; it has no dataplane logic of its own."""
