"""Workload objects in the datastore: Gingham's stand-in for the Kubernetes API's pods and
namespaces, which network policies select on."""
