"""Kubernetes NetworkPolicy: the document checked into values, and what it allows."""
