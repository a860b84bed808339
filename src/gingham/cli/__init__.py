"""The `gingham` command: thin click commands over library calls."""
