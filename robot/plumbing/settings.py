"""Settings changed at run time (by voice: "louder", "softer"; by the parents' page: the volume and its cap), kept
across restarts in the state directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from robot.plumbing.statefile import read_or_set_aside, set_aside, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VOLUME_STEP = 0.2
MIN_VOLUME = 0.1  # "softer" never makes the robot silent: a child could not tell it from broken


@dataclass
class RuntimeSettings:
    volume: float  # 0.1-1.0, the playback gain
    volume_cap: float = 1.0  # 0.1-1.0, a parent's limit: neither "louder" nor the page go past it

    @classmethod
    def load(cls, path: Path, default_volume: float, default_cap: float = 1.0) -> RuntimeSettings:
        data = read_or_set_aside(path, FORMAT_VERSION)
        volume, cap = default_volume, default_cap
        if data is not None:
            saved, saved_cap = data.get("volume"), data.get("volume_cap", default_cap)
            if _is_volume(saved) and _is_volume(saved_cap):
                volume, cap = float(saved), float(saved_cap)
            else:
                set_aside(path, f"volume {saved!r} or its cap {saved_cap!r} is not a number from {MIN_VOLUME} to 1")
        return cls(min(volume, cap), cap)

    def save(self, path: Path) -> bool:
        try:
            record = {
                "version": FORMAT_VERSION,
                "volume": round(self.volume, 3),
                "volume_cap": round(self.volume_cap, 3),
            }
            write_atomic(path, record)
        except OSError as e:
            log.warning("cannot save the settings to %s: %s", path, e)
            return False
        return True

    def step_volume(self, steps: int) -> bool:
        """Louder (+1) or softer (-1); False when the volume is already at its end."""
        volume = min(self.volume_cap, max(MIN_VOLUME, round(self.volume + steps * VOLUME_STEP, 3)))
        changed = volume != self.volume
        self.volume = volume
        return changed

    def set_volume(self, volume: float, cap: float) -> None:
        """Both from the parents' page (checked there); the volume is held at or below the cap."""
        self.volume_cap = min(1.0, max(MIN_VOLUME, cap))
        self.volume = min(self.volume_cap, max(MIN_VOLUME, volume))


def _is_volume(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and MIN_VOLUME <= value <= 1.0
