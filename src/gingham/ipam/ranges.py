"""Pure host-local range arithmetic: which addresses a range may hand out, in which order."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from gingham.model.netconf import RangeSpec


@dataclass(frozen=True)
class AddressRange:
    """Allocatable addresses of one subnet: start..end minus the gateway."""

    subnet: ipaddress.IPv4Network
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address

    @classmethod
    def from_spec(cls, spec: RangeSpec) -> AddressRange:
        subnet = spec.subnet
        first, last = subnet.network_address + 1, subnet.broadcast_address - 1
        return cls(
            subnet=subnet,
            start=spec.range_start or first,
            end=spec.range_end or last,
            gateway=spec.gateway or first,
        )

    @classmethod
    def for_subnet(cls, subnet: ipaddress.IPv4Network) -> AddressRange:
        return cls.from_spec(RangeSpec(subnet))

    @property
    def key(self) -> str:
        """A file-name-safe identity of the pool this range draws from."""
        return f"{self.subnet.network_address}-{self.subnet.prefixlen}"

    def __contains__(self, address: object) -> bool:
        return (
            isinstance(address, ipaddress.IPv4Address)
            and self.start <= address <= self.end
            and address != self.gateway
            and address not in (self.subnet.network_address, self.subnet.broadcast_address)
        )

    def size(self) -> int:
        return sum(1 for _ in self.candidates(None))

    def candidates(self, last: ipaddress.IPv4Address | None) -> Iterator[ipaddress.IPv4Address]:
        """Every allocatable address once, starting after `last` and wrapping around,
        so a released address is not handed out again at once (host-local's order)."""
        lo, hi = int(self.start), int(self.end)
        span = hi - lo + 1
        begin = int(last) + 1 if last is not None and lo <= int(last) <= hi else lo
        for step in range(span):
            address = ipaddress.IPv4Address(lo + (begin - lo + step) % span)
            if address in self:
                yield address
