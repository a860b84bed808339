"""Flannel-style subnet leases: one subnet of the cluster network per node, in the datastore."""
