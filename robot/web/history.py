"""The story history and the favourites, kept in the state directory (written atomically after each change).

An entry keeps what a parent may want to see: the request as it was typed or heard, when, every sentence spoken,
and the sentences the safety filter kept from the child (shown on the page only, never spoken). A favourite keeps
what replays the story exactly: the request, the engine's seed, bedtime or not, and the model's sha256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from robot.plumbing.statefile import read_or_set_aside, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_NAME = "web-history.json"
MAX_FAVOURITES = 100
MAX_SENTENCES = 400  # per entry: a story is bounded by max_tokens, this bounds a file edited by hand
MAX_TEXT_CHARS = 2000


@dataclass
class Entry:
    id: int
    started_at: str  # local wall-clock time, ISO 8601 to the second (for people; deadlines use monotonic time)
    request: str  # as typed or heard
    source: str  # text | voice | button
    seed: int
    is_bedtime: bool
    model_sha256: str  # "" when unknown
    sentences: list[str] = field(default_factory=list)  # as spoken
    removed: list[str] = field(default_factory=list)  # kept from the child by the safety filter
    outcome: str = "telling"  # then the story's outcome: finished | stopped | canned: ... | engine failed: ...
    notice: bool = False  # not a story: what the robot said instead (bedtime is over, the day's time used up)


@dataclass
class Favourite:
    id: int
    request: str
    seed: int
    is_bedtime: bool
    model_sha256: str
    text: str  # the story as it was told when it was marked
    marked_at: str


class History:
    def __init__(self, path: Path, max_entries: int) -> None:
        self._path = path
        self._max_entries = max_entries
        self.entries: list[Entry] = []
        self.favourites: list[Favourite] = []
        self._is_write_failure_logged = False
        self._load()

    def _load(self) -> None:
        data = read_or_set_aside(self._path, FORMAT_VERSION)
        if data is None:
            return
        try:
            self.entries = [_entry(item) for item in data.get("entries", [])][-self._max_entries :]
            self.favourites = [Favourite(**item) for item in data.get("favourites", [])][:MAX_FAVOURITES]
        except (TypeError, ValueError) as e:
            self.entries, self.favourites = [], []
            log.warning("the story history %s is malformed (%s); starting a new one", self._path, e)

    def _next_id(self) -> int:
        return max([e.id for e in self.entries] + [f.id for f in self.favourites], default=0) + 1

    def start(self, request: str, source: str, seed: int, is_bedtime: bool, model_sha256: str, notice: bool) -> Entry:
        entry = Entry(self._next_id(), _now(), request[:MAX_TEXT_CHARS], source, seed, is_bedtime, model_sha256)
        entry.notice = notice
        self.entries.append(entry)
        del self.entries[: -self._max_entries]
        self.save()
        return entry

    def find(self, entry_id: int) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def find_favourite(self, favourite_id: int) -> Favourite | None:
        return next((f for f in self.favourites if f.id == favourite_id), None)

    def mark_favourite(self, entry: Entry) -> Favourite:
        for favourite in self.favourites:
            if (favourite.request, favourite.seed, favourite.is_bedtime) == (
                entry.request,
                entry.seed,
                entry.is_bedtime,
            ):
                return favourite
        if len(self.favourites) >= MAX_FAVOURITES:
            raise ValueError(f"at most {MAX_FAVOURITES} favourites; remove one first")
        favourite = Favourite(
            self._next_id(),
            entry.request,
            entry.seed,
            entry.is_bedtime,
            entry.model_sha256,
            " ".join(entry.sentences),
            _now(),
        )
        self.favourites.append(favourite)
        self.save()
        return favourite

    def remove_favourite(self, favourite_id: int) -> bool:
        before = len(self.favourites)
        self.favourites = [f for f in self.favourites if f.id != favourite_id]
        self.save()
        return len(self.favourites) != before

    def save(self) -> None:
        record = {
            "version": FORMAT_VERSION,
            "entries": [asdict(e) for e in self.entries],
            "favourites": [asdict(f) for f in self.favourites],
        }
        try:
            write_atomic(self._path, record)
            self._is_write_failure_logged = False
        except OSError as e:
            if not self._is_write_failure_logged:  # a full or read-only disk is said once, not per sentence
                log.warning("cannot save the story history to %s: %s", self._path, e)
                self._is_write_failure_logged = True


def _entry(item: dict) -> Entry:
    entry = Entry(**item)
    entry.sentences = [str(s)[:MAX_TEXT_CHARS] for s in entry.sentences[:MAX_SENTENCES]]
    entry.removed = [str(s)[:MAX_TEXT_CHARS] for s in entry.removed[:MAX_SENTENCES]]
    return entry


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())


_checksums: dict[tuple[str, int, int], str] = {}


def model_sha256(path: str) -> str:
    """The model file's sha256 ("" when there is no file), cached by path, size and modification time: the
    favourite says which model told it. Blocking: run it in a thread."""
    if not path:
        return ""
    try:
        info = os.stat(path)
        key = (path, info.st_size, info.st_mtime_ns)
        if key not in _checksums:
            with open(path, "rb") as f:
                _checksums[key] = hashlib.file_digest(f, "sha256").hexdigest()
        return _checksums[key]
    except OSError as e:
        log.warning("cannot read the model %s for its checksum: %s", path, e)
        return ""
