"""State files that survive power loss: JSON written atomically, and moved aside when it cannot be read.

A write goes to a temporary file, is fsynced, renamed over the old file and the directory fsynced: after a power
cut the file holds the old state or the new one, never half of each.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class StateFileError(ValueError):
    """A state file's content is not what it should be; the caller says what."""


def write_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to `path` atomically. Raises OSError (disk full, read-only, permissions)."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_or_set_aside(path: Path, version: int) -> dict | None:
    """The JSON object in `path` (its "version" removed), or None when there is none.

    A file that cannot be parsed, is not an object or has another version is moved to NAME.corrupt and logged,
    so that the next start does not trip over it again.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise StateFileError("not a JSON object")
        if data.pop("version", None) != version:
            raise StateFileError(f"format version is not {version}")
        return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        set_aside(path, str(e))
        return None


def set_aside(path: Path, why: str) -> None:
    aside = path.with_name(path.name + ".corrupt")
    log.warning("the state file %s is unreadable (%s); moved to %s and defaults used", path, why, aside)
    try:
        os.replace(path, aside)
    except OSError:
        pass
