"""The story in progress, saved after every spoken sentence so that it can be resumed after a restart or power loss.

The file is written atomically (a temporary file, fsync, rename, fsync of the directory): after a power cut it
holds either the previous sentence's state or the new one, never half of each. A file that cannot be read at
start is moved aside (story.json.corrupt) and forgotten; a disk that cannot be written is logged once and the
story goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from robot.plumbing.statefile import read_or_set_aside, set_aside, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_SAVED_SENTENCES = 200


@dataclass
class StoryRecord:
    request: str  # what was asked
    subject: str
    opening: str  # the first sentence, also the start of every prompt
    seed: int
    sentences: list[str] = field(default_factory=list)  # spoken so far, in order, the opening first
    is_finished: bool = False
    updated_at: float = 0.0  # wall-clock seconds, for people reading the file

    @property
    def next_index(self) -> int:
        return len(self.sentences)


class StoryStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._has_warned = False

    def load(self) -> StoryRecord | None:
        """The saved story, or None. A corrupt file is moved aside and reported once."""
        data = read_or_set_aside(self.path, FORMAT_VERSION)
        if data is None:
            return None
        try:
            record = StoryRecord(**data)
            if not isinstance(record.sentences, list) or not all(isinstance(s, str) for s in record.sentences):
                raise ValueError("sentences is not a list of strings")
            if not isinstance(record.seed, int) or not isinstance(record.opening, str):
                raise ValueError("seed or opening has the wrong type")
        except (ValueError, TypeError) as e:
            set_aside(self.path, str(e))
            return None
        return record

    def save(self, record: StoryRecord) -> bool:
        record.updated_at = time.time()
        data = {"version": FORMAT_VERSION, **asdict(record)}
        data["sentences"] = data["sentences"][-MAX_SAVED_SENTENCES:]
        try:
            write_atomic(self.path, data)
        except OSError as e:
            if not self._has_warned:
                log.warning("cannot save the story in progress to %s: %s", self.path, e)
                self._has_warned = True
            return False
        self._has_warned = False
        return True
