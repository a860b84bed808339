"""The agent's side of the shim's wire format (see shim.py for the sender).

Request: b"GINGHAM/1" NUL role NUL (KEY=VALUE NUL)* NUL stdin-bytes, then EOF.
Reply: decimal exit status, newline, stdout bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAGIC = b"GINGHAM/1"


class WireError(ValueError):
    pass


@dataclass
class PluginCall:
    """One exec of the plugin, as the runtime made it."""

    role: str  # "main" or "ipam"
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""

    @property
    def command(self) -> str:
        return self.env.get("CNI_COMMAND", "")


def decode_request(data: bytes) -> PluginCall:
    head, sep, stdin = data.partition(b"\0\0")
    if not sep:
        raise WireError("request has no header terminator")
    parts = head.split(b"\0")
    if parts[0] != MAGIC or len(parts) < 2:
        raise WireError("not a gingham plugin request")
    env: dict[str, str] = {}
    for item in parts[2:]:
        key, eq, value = item.partition(b"=")
        if not eq:
            raise WireError(f"malformed environment entry {item!r}")
        env[key.decode()] = value.decode("utf-8", "surrogateescape")
    return PluginCall(role=parts[1].decode(), env=env, stdin=stdin)


def encode_reply(status: int, body: bytes) -> bytes:
    return b"%d\n" % status + body
