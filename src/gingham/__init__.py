"""Gingham: a Kubernetes pod network built from real kernel parts."""

__version__ = "0.1.0"
