"""Where storybot finds its assets and keeps its state."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def assets_dir() -> Path:
    """assets/ of a source checkout (also an editable install), else the copy installed under sys.prefix."""
    override = os.environ.get("STORYBOT_ASSETS")
    if override:
        return Path(override)
    checkout = Path(__file__).resolve().parent.parent / "assets"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "storybot" / "assets"


def state_dir() -> Path:
    """STORYBOT_STATE_DIR (systemd's StateDirectory sets it), else $XDG_STATE_HOME/storybot."""
    override = os.environ.get("STORYBOT_STATE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "storybot"
