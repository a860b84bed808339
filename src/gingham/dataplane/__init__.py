"""Kernel primitives: netlink through pyroute2, nftables through libnftables. Idempotent,
and every object Gingham creates carries its mark (device name, route protocol, nft table)."""
