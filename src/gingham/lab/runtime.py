"""A container runtime's side of CNI, as libcni does it: run a conflist's plugins in order with
prevResult threaded through, cache the final result, and replay the chain in reverse for
DEL and CHECK with the cached result. Plugins run in the node's namespace, as under kubelet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gingham.lab.procs import run_in

PLUGIN_TIMEOUT = 120


class PluginFailed(RuntimeError):
    def __init__(self, plugin: str, command: str, code: int | None, msg: str) -> None:
        super().__init__(f"{plugin} {command} failed" + (f" (CNI error {code})" if code else "")
                         + f": {msg}")
        self.plugin, self.command, self.code = plugin, command, code


@dataclass
class Attachment:
    """One pod interface on one network: what the runtime knows of a sandbox."""

    container_id: str
    netns: str  # path
    ifname: str = "eth0"
    args: dict[str, str] = field(default_factory=dict)
    capabilities: dict = field(default_factory=dict)

    def cni_args(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.args.items())


class CniRuntime:
    def __init__(self, node_netns: str, conflist: dict, bin_dirs: list[Path],
                 cache_dir: Path) -> None:
        self.node_netns = node_netns
        self.conflist = conflist
        self.bin_dirs = bin_dirs
        self.cache_dir = cache_dir

    @property
    def network(self) -> str:
        return self.conflist["name"]

    def _cache_path(self, att: Attachment) -> Path:
        return self.cache_dir / "results" / f"{self.network}-{att.container_id}-{att.ifname}"

    def _plugin_conf(self, plugin: dict, att: Attachment, prev: dict | None) -> dict:
        conf = {"cniVersion": self.conflist["cniVersion"], "name": self.network, **plugin}
        wanted = plugin.get("capabilities", {})
        runtime_config = {k: v for k, v in att.capabilities.items() if wanted.get(k)}
        conf.pop("capabilities", None)
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def _exec(self, command: str, conf: dict, att: Attachment) -> dict | None:
        plugin = conf["type"]
        binary = next((d / plugin for d in self.bin_dirs if (d / plugin).exists()), None)
        if binary is None:
            raise PluginFailed(plugin, command, None, "not found in " +
                               ":".join(map(str, self.bin_dirs)))
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": att.container_id,
            "CNI_NETNS": att.netns,
            "CNI_IFNAME": att.ifname,
            "CNI_ARGS": att.cni_args(),
            "CNI_PATH": ":".join(map(str, self.bin_dirs)),
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        proc = run_in(self.node_netns, [str(binary)], input=json.dumps(conf).encode(), env=env,
                      capture_output=True, timeout=PLUGIN_TIMEOUT, check=False)
        out = proc.stdout.decode(errors="replace").strip()
        if proc.returncode != 0:
            try:
                err = json.loads(out)
                raise PluginFailed(plugin, command, err.get("code"),
                                   err.get("msg", "") + (f": {err['details']}"
                                                         if err.get("details") else ""))
            except (ValueError, AttributeError):
                raise PluginFailed(plugin, command, None,
                                   out or proc.stderr.decode(errors="replace").strip()) from None
        return json.loads(out) if out else None

    def add(self, att: Attachment) -> dict:
        prev = None
        for plugin in self.conflist["plugins"]:
            prev = self._exec("ADD", self._plugin_conf(plugin, att, prev), att)
        assert prev is not None
        path = self._cache_path(att)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "kind": "cniCacheV1", "containerId": att.container_id, "ifName": att.ifname,
            "networkName": self.network, "netns": att.netns, "cniArgs": att.args,
            "capabilityArgs": att.capabilities, "result": prev,
        }))
        return prev

    def _cache_entry(self, att: Attachment) -> dict:
        try:
            return json.loads(self._cache_path(att).read_text())
        except FileNotFoundError:
            return {}

    def cached(self, att: Attachment) -> dict | None:
        return self._cache_entry(att).get("result")

    def delete(self, att: Attachment) -> None:
        """DEL the chain in reverse, with the cached result and capability args (libcni's way:
        portmap must see the same mappings to remove them)."""
        entry = self._cache_entry(att)
        prev = entry.get("result")
        if not att.capabilities:
            att = Attachment(att.container_id, att.netns, att.ifname, att.args,
                             entry.get("capabilityArgs", {}))
        for plugin in reversed(self.conflist["plugins"]):
            self._exec("DEL", self._plugin_conf(plugin, att, prev), att)
        self._cache_path(att).unlink(missing_ok=True)

    def check(self, att: Attachment) -> None:
        prev = self.cached(att)
        if prev is None:
            raise PluginFailed(self.network, "CHECK", None, "no cached result for attachment")
        for plugin in self.conflist["plugins"]:
            self._exec("CHECK", self._plugin_conf(plugin, att, prev), att)
