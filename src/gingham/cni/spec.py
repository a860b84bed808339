"""CNI spec facts: supported versions, error codes and the error object.

Codes 1-99 are the spec's own (CNI 1.1.0, "Error" section); 100+ are Gingham's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
# Commands that only exist from 1.1.0 on.
VERSION_1_1_COMMANDS = frozenset({"STATUS", "GC"})
COMMANDS = frozenset({"ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"})

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# Gingham's own codes.
INTERNAL = 100
ADDRESSES_EXHAUSTED = 101
INTERFACE_EXISTS = 102
DATAPLANE_FAILURE = 103


@dataclass
class CniError(Exception):
    """A failure reported to the runtime as a CNI error object."""

    code: int
    msg: str
    details: str = ""

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg

    def to_json(self, cni_version: str = LATEST_VERSION) -> str:
        # details always present: the shim's own errors carry it too, so runtimes see one shape.
        return json.dumps({"cniVersion": cni_version, "code": self.code, "msg": self.msg,
                           "details": self.details})


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def check_version(version: object) -> str:
    """Return the config's cniVersion if Gingham speaks it, else raise error 1."""
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "cniVersion is missing or not a string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            f"config has {version}; plugin supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


def version_info() -> dict:
    return {"cniVersion": LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
