"""The agent's one reconcile loop: informers list and watch each kind of cluster object,
managers fold the changes in without I/O and apply what became dirty."""
