"""The CNI_* variables of a plugin call, validated per command as the spec requires."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gingham.cni.spec import COMMANDS, INVALID_ENVIRONMENT, CniError

# The runtime-facing rules of libcni/skel: container IDs and interface names.
# fullmatch, not match with "$": "$" also matches before a trailing newline, and a newline
# in the ID would corrupt the reservation files (one field per line).
CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MAX_IFNAME = 15

REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "STATUS": (),
    "GC": (),
    "VERSION": (),
}


@dataclass(frozen=True)
class PluginEnv:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: str = ""
    path: tuple[str, ...] = ()


def bad(msg: str, details: str = "") -> CniError:
    return CniError(INVALID_ENVIRONMENT, msg, details)


def check_ifname(name: str) -> None:
    # libcni's rule: any whitespace, not just space/tab/newline, is refused.
    if not name or len(name) > MAX_IFNAME or name in (".", "..") or any(
        c in "/:" or c.isspace() for c in name
    ):
        raise bad("CNI_IFNAME is not a valid interface name", name)


def parse_env(env: dict[str, str]) -> PluginEnv:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise bad("CNI_COMMAND is missing or unknown", command)
    missing = [key for key in REQUIRED[command] if not env.get(key)]
    if missing:
        raise bad(f"required environment variables missing: {', '.join(missing)}")
    parsed = PluginEnv(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=env.get("CNI_ARGS", ""),
        path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
    )
    if parsed.container_id and not CONTAINER_ID.fullmatch(parsed.container_id):
        raise bad("CNI_CONTAINERID has characters a container ID may not", parsed.container_id)
    if "CNI_IFNAME" in REQUIRED[command]:
        check_ifname(parsed.ifname)
    return parsed



DEFAULT_NAMESPACE = "default"


def pod_of(env: PluginEnv) -> tuple[str, str]:
    """(namespace, pod) from CNI_ARGS K8S_POD_NAMESPACE/K8S_POD_NAME, as kubelet passes
    them; without them the container ID stands for the pod, in namespace default."""
    args = dict(part.split("=", 1) for part in env.args.split(";") if "=" in part)
    return (args.get("K8S_POD_NAMESPACE") or DEFAULT_NAMESPACE,
            args.get("K8S_POD_NAME") or env.container_id)
