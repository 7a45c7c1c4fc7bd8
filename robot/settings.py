"""Settings changed at run time (by voice: "louder", "softer"), kept across restarts in the state directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from robot.statefile import read_or_set_aside, set_aside, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VOLUME_STEP = 0.2
MIN_VOLUME = 0.1  # "softer" never makes the robot silent: a child could not tell it from broken


@dataclass
class RuntimeSettings:
    volume: float  # 0.1-1.0, the playback gain

    @classmethod
    def load(cls, path: Path, default_volume: float) -> RuntimeSettings:
        data = read_or_set_aside(path, FORMAT_VERSION)
        volume = default_volume
        if data is not None:
            saved = data.get("volume")
            if isinstance(saved, int | float) and MIN_VOLUME <= saved <= 1.0:
                volume = float(saved)
            else:
                set_aside(path, f"volume {saved!r} is not a number from {MIN_VOLUME} to 1")
        return cls(volume)

    def save(self, path: Path) -> bool:
        try:
            write_atomic(path, {"version": FORMAT_VERSION, "volume": round(self.volume, 3)})
        except OSError as e:
            log.warning("cannot save the settings to %s: %s", path, e)
            return False
        return True

    def step_volume(self, steps: int) -> bool:
        """Louder (+1) or softer (-1); False when the volume is already at its end."""
        volume = min(1.0, max(MIN_VOLUME, round(self.volume + steps * VOLUME_STEP, 3)))
        changed = volume != self.volume
        self.volume = volume
        return changed
