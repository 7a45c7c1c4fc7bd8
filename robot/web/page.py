"""The parents' page's core, without HTTP: what it shows (state, the story as spoken, history) and what it does
(each change checked, saved atomically, logged as one audit line, and sent to the state owner as an event).

The supervisor builds it before the robot and hands its hooks to the robot's constructor; the page reaches the robot
(to read its state and post events to it) through the `robot` it is given, once the robot is built;
robot/web/server.py serves it over HTTP."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from robot.events import Source, State, StopRequested, StoryRequested, VolumeSet
from robot.plumbing.config import Config, ConfigError, check_value
from robot.robot import Robot, StoryGate
from robot.story.safety import SafetyError
from robot.web import parents as pc
from robot.web.history import Entry, History, model_sha256
from robot.web.safety_words import build_filter

log = logging.getLogger(__name__)
audit = logging.getLogger("storybot.audit")
audit.setLevel(logging.INFO)  # one line per change reaches the journal at any -v

MAX_SUBSCRIBERS = 8  # open pages (server-sent event streams) at once
SUBSCRIBER_QUEUE = 64  # events an open page may fall behind by before it is dropped (it reconnects)
MAX_REQUEST_CHARS = 500


class ChangeRefused(ValueError):
    """A change that fails a check; str() says which setting and what was expected."""


class ParentsPage:
    def __init__(
        self,
        config: Config,
        state: Path,
        base_safety,
        model_path: str = "",
        robot: Callable[[], Robot] | None = None,
    ) -> None:
        """robot: the state owner, once it is built (the supervisor builds the page first, for the robot's hooks)."""
        self.config = config
        self._state = state
        self.history = History(state / "web-history.json", config.web.history_stories)
        self.choices = pc.load_choices(state / pc.FILE_NAME, pc.Choices.from_config(config))
        self.limits = pc.Limits(self.choices, config.story.language, state / pc.USAGE_FILE_NAME)
        self._safety = base_safety
        self._apply_safety(self.choices, at_start=True)
        self._model_path = model_path
        self.model_sha256 = ""
        self._get_robot = robot
        self._current: Entry | None = None  # the story being told
        self._open: list[
            tuple[object, Entry, float]
        ] = []  # (prompt, entry, started_at): told, or stopped but not ended
        self._removed_early: list[str] = []  # dropped before the story's entry began (its opening)
        self._subscribers: set[asyncio.Queue] = set()
        self.recent: collections.deque[str] = collections.deque(maxlen=80)  # the sentences of the story now

    @property
    def _robot(self) -> Robot:
        if self._get_robot is None:
            raise RuntimeError("the parents' page has no robot")
        return self._get_robot()

    def status_changed(self) -> None:
        """The robot's on_status hook: open pages see the state and what is degraded."""
        self._publish("state", self.state_view())

    def state_changed(self, state: State) -> None:
        """A story stopped by a press is cancelled without a result: back to idle closes its entry."""
        if state in (State.IDLE, State.STOPPING):
            for _, entry, started_at in list(self._open):
                self._close(entry, started_at, "stopped")
            self._open.clear()

    async def checksum_model(self) -> None:
        self.model_sha256 = await asyncio.to_thread(model_sha256, self._model_path)

    # --- hooks for the supervisor and the robot ------------------------------------------------------------

    def safety_filter(self, sentence: str) -> str | None:
        """The robot's safety filter: the parents' current one; what it drops is kept for the history."""
        safe = self._safety.filter(sentence)
        if safe is None:
            (self._current.removed if self._current is not None else self._removed_early).append(sentence)
        return safe

    def story_gate(self) -> StoryGate:
        refusal, is_bedtime = self.limits.notice()
        return StoryGate(refusal, is_bedtime)

    def volume_factor(self) -> float:
        return self.limits.volume_factor()

    def story_started(self, plan, source: Source, request: str) -> None:
        is_notice = plan.max_tokens == 0 and not plan.prompt.request and not plan.prompt.subject
        entry = self.history.start(
            request, source.value, plan.seed, plan.prompt.is_bedtime, self.model_sha256, is_notice
        )
        entry.removed.extend(self._removed_early)
        self._removed_early.clear()
        self._current = entry
        self._open.append((plan.prompt, entry, time.monotonic()))
        self.recent.clear()
        self._publish("story", self.entry_view(entry))

    def sentence_spoken(self, index: int, sentence: str) -> None:
        if self._current is not None:
            self._current.sentences.append(sentence)
        self.recent.append(sentence)
        self._publish("sentence", {"index": index, "text": sentence})

    def story_ended(self, result) -> None:
        """A story's end; a stopped story's can come after the next one began: the result's prompt tells which."""
        found = next((item for item in self._open if item[0] is result.prompt), None)
        if found is None:
            return
        self._open.remove(found)
        self._close(found[1], found[2], result.outcome)

    def _close(self, entry: Entry, started_at: float, outcome: str) -> None:
        if entry is self._current:
            self._current = None
        entry.outcome = outcome
        if not entry.notice:
            self.limits.story_told(time.monotonic() - started_at, entry.is_bedtime)
        self.history.save()
        self._publish("end", self.entry_view(entry))

    # --- what the page shows -------------------------------------------------------------------------------

    def state_view(self) -> dict:
        robot = self._robot
        settings = robot.settings
        return {
            "state": robot.state.value,
            "status": robot.status_text,  # STATUS's own words
            "problems": dict(sorted(robot.problems.items())),
            "volume": settings.volume,
            "volume_cap": settings.volume_cap,
            "choices": self.choices.as_dict(),
            "limits": self.limits.summary(),
            "story": self.entry_view(self._current) if self._current else None,
        }

    @staticmethod
    def entry_view(entry: Entry) -> dict:
        return asdict(entry)

    def history_view(self) -> dict:
        return {
            "entries": [self.entry_view(e) for e in reversed(self.history.entries)],
            "favourites": [asdict(f) for f in reversed(self.history.favourites)],
        }

    # --- what the page does --------------------------------------------------------------------------------

    def stop(self, who: str) -> None:
        audit.info("audit: %s pressed stop (state %s)", who, self._robot.state.value)
        self._robot.post(StopRequested(Source.TEXT))

    def tell(self, who: str, text: object) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ChangeRefused("text: say what the story is about")
        if len(text) > MAX_REQUEST_CHARS:
            raise ChangeRefused(f"text: at most {MAX_REQUEST_CHARS} characters")
        audit.info("audit: %s asked for a story: %r", who, text)
        self._robot.post(StoryRequested(text, Source.TEXT, time.monotonic()))

    def set_volume(self, who: str, volume: object, cap: object) -> None:
        try:
            volume_set = float(check_value("audio", "volume", volume, "the parents' page: volume"))
            cap_set = float(check_value("web", "volume_cap", cap, "the parents' page: volume_cap"))
        except ConfigError as e:
            raise ChangeRefused(str(e)) from None
        old = self._robot.settings
        audit.info(
            "audit: %s set volume %.2f -> %.2f, cap %.2f -> %.2f",
            who,
            old.volume,
            min(volume_set, cap_set),
            old.volume_cap,
            cap_set,
        )
        self._robot.post(VolumeSet(volume_set, cap_set))  # the state owner saves it (settings.json, atomically)

    def change(self, who: str, changes: object) -> None:
        """Quiet hours, the daily limit, strictness, the parents' words: checked, saved, then in force."""
        if not isinstance(changes, dict) or not changes:
            raise ChangeRefused("expected an object of settings to change")
        try:
            new = pc.checked(self.choices, changes)
        except ConfigError as e:
            raise ChangeRefused(str(e)) from None
        if (new.strictness, new.blocked_words, new.allowed_words) != (
            self.choices.strictness,
            self.choices.blocked_words,
            self.choices.allowed_words,
        ):
            self._apply_safety(new)
        try:
            pc.save_choices(self._state / pc.FILE_NAME, new)
        except OSError as e:
            raise ChangeRefused(f"cannot save the settings: {e.strerror or e}") from None
        for key in sorted(changes):
            audit.info("audit: %s changed %s: %r -> %r", who, key, getattr(self.choices, key), getattr(new, key))
        self.choices = new
        self.limits.choices = new
        self._publish("state", self.state_view())

    def _apply_safety(self, choices: pc.Choices, at_start: bool = False) -> None:
        try:
            self._safety = build_filter(
                self.config.story.language,
                choices.strictness,
                choices.blocked_words,
                choices.allowed_words,
                self._state / "parents-safety",
            )
        except (SafetyError, OSError) as e:
            if at_start:  # the shipped filter goes on; the page shows the saved words failed
                log.error("the parents' safety words cannot be used (%s); the shipped lists alone are in force", e)
                return
            raise ChangeRefused(f"safety words: {e}") from None

    def mark_favourite(self, who: str, entry_id: object) -> dict:
        entry = self.history.find(entry_id) if isinstance(entry_id, int) else None
        if entry is None or entry.notice:
            raise ChangeRefused(f"story {entry_id!r}: no such story in the history")
        try:
            favourite = self.history.mark_favourite(entry)
        except ValueError as e:
            raise ChangeRefused(str(e)) from None
        audit.info(
            "audit: %s marked story %d (%r, seed %d) as favourite %d",
            who,
            entry.id,
            entry.request,
            entry.seed,
            favourite.id,
        )
        return asdict(favourite)

    def remove_favourite(self, who: str, favourite_id: object) -> None:
        if not isinstance(favourite_id, int) or not self.history.remove_favourite(favourite_id):
            raise ChangeRefused(f"favourite {favourite_id!r}: no such favourite")
        audit.info("audit: %s removed favourite %d", who, favourite_id)

    def replay(self, who: str, favourite_id: object) -> str:
        """Tells the favourite again, with its request, seed and bedtime; a warning when the model changed."""
        favourite = self.history.find_favourite(favourite_id) if isinstance(favourite_id, int) else None
        if favourite is None:
            raise ChangeRefused(f"favourite {favourite_id!r}: no such favourite")
        warning = ""
        if favourite.model_sha256 and self.model_sha256 and favourite.model_sha256 != self.model_sha256:
            warning = "the model has changed since this story was told: it will not be the same story"
        audit.info(
            "audit: %s replayed favourite %d (%r, seed %d)", who, favourite.id, favourite.request, favourite.seed
        )
        self._robot.post(
            StoryRequested(favourite.request, Source.TEXT, time.monotonic(), favourite.seed, favourite.is_bedtime)
        )
        return warning

    # --- live events ----------------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue | None:
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            return None
        queue: asyncio.Queue = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    def close_streams(self) -> None:
        for queue in list(self._subscribers):
            _put_dropping(queue, None)

    def _publish(self, kind: str, data: dict) -> None:
        for queue in list(self._subscribers):
            if not _put_dropping(queue, (kind, data)):
                self._subscribers.discard(queue)
                _put_dropping(queue, None)


def _put_dropping(queue: asyncio.Queue, item) -> bool:
    """False when the page fell too far behind: it is dropped (its stream closes, and the browser reconnects)."""
    try:
        queue.put_nowait(item)
        return True
    except asyncio.QueueFull:
        if item is None:
            try:
                queue.get_nowait()
                queue.put_nowait(None)
            except (asyncio.QueueEmpty, asyncio.QueueFull):
                pass
        return False
