"""The parents' choices made on the page, and the limits they set on stories.

Choices (bedtime's quiet hours, the daily story time, the safety filter's strictness and the parents' own blocked and
allowed words) start from the configuration ([web], [safety]) and are kept in the state directory's parents.json,
written atomically. Every change is checked by the configuration's own checks (robot/plumbing/config.py), so a
value the page accepts is one a config file would accept too.

Limits: in quiet hours every story is a short, calm bedtime story, each one quieter than the last, and after
QUIET_STORIES of them the robot says it will go on tomorrow. Past the daily story time it says the same. A story
already being told is never cut off by either.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from robot.plumbing.config import Config, ConfigError, check_quiet_hours, check_value
from robot.plumbing.statefile import read_or_set_aside, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_NAME = "parents.json"
USAGE_FILE_NAME = "story-time.json"
QUIET_STORIES = 2  # bedtime stories in one night's quiet hours; then "we will go on tomorrow"
QUIET_VOLUME_STEP = 0.75  # each bedtime story of the night is played at this share of the one before
QUIET_VOLUME_FLOOR = 0.4
MAX_WORDS = 200  # per list
MAX_WORD_CHARS = 40
ORIGIN = "the parents' page"

NOTICES = {
    "en": {
        "quiet": "It is time to sleep now. Good night, we will go on with the stories tomorrow.",
        "daily": "That is all the story time for today. We will go on tomorrow.",
    },
    "ko": {
        "quiet": "이제 잘 시간이에요. 잘 자요, 이야기는 내일 또 해요.",
        "daily": "오늘 이야기 시간은 다 됐어요. 내일 또 해요.",
    },
}


@dataclass(frozen=True)
class Choices:
    quiet_start: str = ""
    quiet_end: str = ""
    daily_limit_min: int = 0
    strictness: str = "standard"
    blocked_words: tuple[str, ...] = ()
    allowed_words: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> Choices:
        web = config.web
        return cls(web.quiet_start, web.quiet_end, web.daily_limit_min, config.safety.strictness)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["blocked_words"], data["allowed_words"] = list(self.blocked_words), list(self.allowed_words)
        return data


_SECTION_OF = {"quiet_start": "web", "quiet_end": "web", "daily_limit_min": "web", "strictness": "safety"}


def checked(choices: Choices, changes: dict) -> Choices:
    """choices with the changes applied, each checked as the config file's key would be; ConfigError names the
    key and what was expected."""
    values = {}
    for key, value in changes.items():
        if key in _SECTION_OF:
            values[key] = check_value(_SECTION_OF[key], key, value, ORIGIN)
        elif key in ("blocked_words", "allowed_words"):
            values[key] = checked_words(key, value)
        else:
            raise ConfigError(
                f"{ORIGIN}: unknown setting {key!r}; expected one of {sorted([*_SECTION_OF, 'blocked_words', 'allowed_words'])}"
            )
    new = replace(choices, **values)
    check_quiet_hours(new.quiet_start, new.quiet_end, f"{ORIGIN}: ")
    return new


def checked_words(key: str, value: object) -> tuple[str, ...]:
    """A list of words or phrases of letters (the safety lists' own rule), without duplicates."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{ORIGIN}: {key} must be a list of words")
    words: list[str] = []
    for raw in value:
        word = " ".join(unicodedata.normalize("NFC", raw).split())
        if not word:
            continue
        if len(word) > MAX_WORD_CHARS:
            raise ConfigError(
                f"{ORIGIN}: {key}: {word[:MAX_WORD_CHARS]!r}... is longer than {MAX_WORD_CHARS} characters"
            )
        if not all(re.fullmatch(r"[^\W\d_]+", part) for part in word.split()):
            raise ConfigError(
                f"{ORIGIN}: {key}: {word!r} has a character that is not a letter (words and phrases only)"
            )
        if word.casefold() not in (w.casefold() for w in words):
            words.append(word)
    if len(words) > MAX_WORDS:
        raise ConfigError(f"{ORIGIN}: {key}: {len(words)} words, at most {MAX_WORDS}")
    return tuple(words)


def load_choices(path: Path, defaults: Choices) -> Choices:
    """The saved choices over the configuration's; a file that fails the checks is moved aside (defaults used)."""
    data = read_or_set_aside(path, FORMAT_VERSION)
    if data is None:
        return defaults
    try:
        return checked(defaults, data)
    except ConfigError as e:
        log.warning("%s: %s; the configuration's values are used", path, e)
        return defaults


def save_choices(path: Path, choices: Choices) -> None:
    """Raises OSError when it cannot be written (the page says so)."""
    write_atomic(path, {"version": FORMAT_VERSION, **choices.as_dict()})


# --- the limits ------------------------------------------------------------------------------------------------


def _minutes(hh_mm: str) -> int:
    hours, _, minutes = hh_mm.partition(":")
    return int(hours) * 60 + int(minutes)


def quiet_night(choices: Choices, now: dt.datetime) -> str:
    """The date the quiet hours in force began ("" outside them): 22:00-07:00 at 06:00 is the night before."""
    if not choices.quiet_start:
        return ""
    start, end, minute = _minutes(choices.quiet_start), _minutes(choices.quiet_end), now.hour * 60 + now.minute
    if start < end:
        return now.date().isoformat() if start <= minute < end else ""
    if minute >= start:
        return now.date().isoformat()
    if minute < end:
        return (now.date() - dt.timedelta(days=1)).isoformat()
    return ""


@dataclass
class Usage:
    """What the limits count, kept across restarts (a reboot must not give a fresh day of stories)."""

    day: str = ""  # the local date story_s counts for
    story_s: float = 0.0
    night: str = ""  # the quiet night quiet_stories counts for
    quiet_stories: int = 0


@dataclass
class Limits:
    choices: Choices
    language: str
    usage_path: Path
    usage: Usage = field(default_factory=Usage)
    clock: Callable[[], dt.datetime] = dt.datetime.now  # local time; a test passes its own

    def __post_init__(self) -> None:
        data = read_or_set_aside(self.usage_path, FORMAT_VERSION)
        if data is not None:
            try:
                self.usage = Usage(
                    str(data["day"]), float(data["story_s"]), str(data["night"]), int(data["quiet_stories"])
                )
            except (KeyError, TypeError, ValueError):
                log.warning("%s is malformed; story time counted from now", self.usage_path)

    def _today(self) -> tuple[dt.datetime, str]:
        now = self.clock()
        day = now.date().isoformat()
        if self.usage.day != day:
            self.usage.day, self.usage.story_s = day, 0.0
        return now, quiet_night(self.choices, now)

    def notice(self) -> tuple[str, bool]:
        """(what to say instead of a story or "", whether the story is a bedtime story)."""
        now, night = self._today()
        words = NOTICES.get(self.language, NOTICES["en"])
        if self.choices.daily_limit_min and self.usage.story_s >= self.choices.daily_limit_min * 60:
            return words["daily"], bool(night)
        if night:
            stories = self.usage.quiet_stories if self.usage.night == night else 0
            return (words["quiet"] if stories >= QUIET_STORIES else ""), True
        return "", False

    def volume_factor(self) -> float:
        """The share of the set volume the next story plays at: less with each bedtime story of the night."""
        _, night = self._today()
        stories = self.usage.quiet_stories if night and self.usage.night == night else 0
        return max(QUIET_VOLUME_FLOOR, QUIET_VOLUME_STEP**stories)

    def story_told(self, told_s: float, is_bedtime: bool) -> None:
        _, night = self._today()
        self.usage.story_s += max(0.0, told_s)
        if night and is_bedtime:
            if self.usage.night != night:
                self.usage.night, self.usage.quiet_stories = night, 0
            self.usage.quiet_stories += 1
        try:
            write_atomic(self.usage_path, {"version": FORMAT_VERSION, **asdict(self.usage)})
        except OSError as e:
            log.warning("cannot save the story time to %s: %s", self.usage_path, e)

    def summary(self) -> dict:
        now, night = self._today()
        return {
            "story_min_today": round(self.usage.story_s / 60, 1),
            "is_quiet_now": bool(night),
            "quiet_stories_tonight": self.usage.quiet_stories if night and self.usage.night == night else 0,
            "local_time": now.strftime("%H:%M"),
        }
