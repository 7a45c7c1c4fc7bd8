"""Where storybot's assets are: shared by robot/ and engines/, so that engines/ needs nothing of robot/."""

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
