"""Where storybot finds its assets and keeps its state."""

from __future__ import annotations

import os
from pathlib import Path

from engines.assets import assets_dir  # noqa: F401 - the one locator, for robot/ too


def state_dir() -> Path:
    """STORYBOT_STATE_DIR (systemd's StateDirectory sets it), else $XDG_STATE_HOME/storybot."""
    override = os.environ.get("STORYBOT_STATE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "storybot"
