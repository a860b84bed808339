"""The cluster datastore: one contract (contract.py), two backends (etcd, embedded SQLite)."""
