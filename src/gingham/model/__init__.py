"""Typed configuration and resources; parsing only, no I/O."""
