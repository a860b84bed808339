"""Exec another CNI plugin (a delegated IPAM) the way a main plugin must: found on CNI_PATH,
same netconf on stdin, its CNI error object passed back unchanged."""

from __future__ import annotations

import json
import os
import subprocess

from gingham.cni.environment import PluginEnv
from gingham.cni.result import Result
from gingham.cni.spec import INTERNAL, INVALID_CONFIG, CniError

TIMEOUT = 60


def find_plugin(plugin_type: str, search: tuple[str, ...]) -> str:
    if "/" in plugin_type:
        raise CniError(INVALID_CONFIG, "plugin type may not contain '/'", plugin_type)
    for directory in search:
        candidate = os.path.join(directory, plugin_type)
        if os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f"plugin {plugin_type!r} not found in CNI_PATH",
                   ":".join(search))


def exec_plugin(plugin_type: str, command: str, env: PluginEnv, netconf: dict) -> Result | None:
    binary = find_plugin(plugin_type, env.path)
    proc_env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": env.container_id,
        "CNI_NETNS": env.netns,
        "CNI_IFNAME": env.ifname,
        "CNI_ARGS": env.args,
        "CNI_PATH": ":".join(env.path),
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    try:
        proc = subprocess.run([binary], input=json.dumps(netconf).encode(), env=proc_env,
                              capture_output=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired as err:
        raise CniError(INTERNAL, f"{plugin_type} {command} timed out after {TIMEOUT}s") from err
    if proc.returncode != 0:
        try:
            error = json.loads(proc.stdout)
            raise CniError(int(error["code"]), str(error["msg"]), str(error.get("details", "")))
        except (ValueError, KeyError, TypeError):
            raise CniError(INTERNAL, f"{plugin_type} {command} failed",
                           (proc.stderr or proc.stdout).decode(errors="replace").strip()) from None
    if command != "ADD":
        return None
    try:
        return Result.from_json(json.loads(proc.stdout))
    except ValueError as err:
        raise CniError(INTERNAL, f"{plugin_type} returned a result that is not JSON") from err
