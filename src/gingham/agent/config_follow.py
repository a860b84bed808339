"""The network config key, as a manager of the reconcile loop: each value the informer
delivers is handed to the agent, which follows it (a backend switch) or says why not."""

from __future__ import annotations

from collections.abc import Callable

from gingham.subnet.kinds import CONFIG


class ConfigFollower:
    name = "config"
    kinds = (CONFIG,)

    def __init__(self, key: str, follow: Callable[[object | None], None]) -> None:
        self.key = key
        self.follow = follow
        self.stored: object | None = None
        self.pending = False

    def on_snapshot(self, kind: str, objects: dict[str, object]) -> None:
        self.stored, self.pending = objects.get(self.key), True

    def on_update(self, kind: str, key: str, obj: object | None) -> None:
        if key == self.key:
            self.stored, self.pending = obj, True

    def resync(self) -> None:
        pass  # nothing of its own in the kernel; a failed follow is retried by the loop

    def dirty(self) -> bool:
        return self.pending

    def apply(self) -> list[str]:
        self.follow(self.stored)  # raising keeps it pending, for the loop's retry
        self.pending = False
        return []
