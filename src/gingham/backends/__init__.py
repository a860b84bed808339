"""Backends turn the cluster's subnet leases into this node's dataplane (Flannel's
pkg/backend): one module per backend, all behind the contract in base.py."""
