"""The CNI side of Gingham: spec types, the plugin shim and its wire format to the agent."""
