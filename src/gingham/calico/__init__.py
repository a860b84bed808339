"""Calico mode: routed pods, block IPAM, routes from the datastore."""
