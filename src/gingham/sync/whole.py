"""A manager's base for work that is planned whole from everything it holds: it keeps the
latest object of every key of its kinds, marks itself dirty on any change, and applies
only once each kind has been listed (a plan from half the picture would remove what the
other half needs)."""

from __future__ import annotations

from gingham.sync.kinds import Undecodable


class WholePictureManager:
    name = ""
    kinds: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, object]] = {kind: {} for kind in self.kinds}
        self._dirty = True
        self._listed: set[str] = set()
        # A resync is due: compare with the kernel, not only with what was last applied.
        self.resync_due = True

    def on_snapshot(self, kind: str, objects: dict[str, object]) -> None:
        self.objects[kind] = dict(objects)
        self._listed.add(kind)
        self._dirty = True

    def on_update(self, kind: str, key: str, obj: object | None) -> None:
        if obj is None:
            self.objects[kind].pop(key, None)
        else:
            self.objects[kind][key] = obj
        self._dirty = True

    def resync(self) -> None:
        self._dirty = True
        self.resync_due = True

    def dirty(self) -> bool:
        return self._dirty and self._listed == set(self.kinds)

    def of(self, kind: str, cls: type) -> list:
        """The held objects of `kind` that decoded (Undecodable ones left out)."""
        return [obj for obj in self.objects[kind].values() if isinstance(obj, cls)]

    def undecodable(self) -> list[str]:
        """The held values that do not decode, as problems."""
        return [f"{key}: {obj.why}" for kind in self.kinds
                for key, obj in self.objects[kind].items() if isinstance(obj, Undecodable)]

    def apply(self) -> list[str]:
        problems = self.apply_whole()
        self._dirty = False
        return problems

    def apply_whole(self) -> list[str]:
        raise NotImplementedError
