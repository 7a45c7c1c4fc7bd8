"""The robot's event vocabulary. Tasks post these to the one coroutine that owns the robot's state.

Times are time.monotonic() seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    IDLE = "idle"  # waiting for a button press or speech
    LISTENING = "listening"  # taking a request
    THINKING = "thinking"  # a story was asked for; nothing is audible yet
    SPEAKING = "speaking"  # the story is being told
    DEGRADED = "degraded"  # something it needs is missing; it says so and keeps trying
    STOPPING = "stopping"  # shutting down


class Source(enum.Enum):
    TEXT = "text"  # a typed request (storybot tell)
    VOICE = "voice"
    BUTTON = "button"  # a push button, or Enter on a terminal


@dataclass(frozen=True)
class ButtonPressed:
    """Idle: start listening (push-to-talk). Thinking or speaking: stop the story."""

    source: Source


@dataclass(frozen=True)
class ButtonReleased:
    """While listening: the request is over; no need to wait for the silence after it."""

    source: Source


@dataclass(frozen=True)
class ButtonLongPressed:
    """Continue the interrupted story, or tell a new one when there is none."""

    source: Source


@dataclass(frozen=True)
class HeldWithoutSpeech:
    """A long press while listening, and still nothing said a moment later: continue the story."""

    source: Source
    press: int  # which press (a later press makes this one stale)


@dataclass(frozen=True)
class SpeechStarted:
    at: float


@dataclass(frozen=True)
class TranscriptPartial:
    text: str


@dataclass(frozen=True)
class TranscriptFinal:
    text: str
    end_of_speech_at: float  # when the voice-activity detector saw the last speech frame


@dataclass(frozen=True)
class CommandHeard:
    """An utterance heard while the robot was thinking or speaking, decoded with the command grammar only."""

    text: str
    at: float  # the end of the utterance


@dataclass(frozen=True)
class StoryRequested:
    text: str
    source: Source
    at: float


@dataclass(frozen=True)
class StoryAudible:
    """The first sample of the story reached the speaker."""

    at: float


@dataclass(frozen=True)
class StoryEnded:
    result: object  # robot.story.StoryResult
    story: int = 0  # which telling ended: a stopped story's end can arrive after the next one started


@dataclass(frozen=True)
class ListenerFailed:
    message: str


@dataclass(frozen=True)
class ListenerReady:
    """The microphone is open (again)."""

    device: str


@dataclass(frozen=True)
class EngineStatus:
    """What keeps the engine from working ("" when it works)."""

    problem: str


@dataclass(frozen=True)
class MemoryPressure:
    """The memory guard changed level (robot.guard.Level: 0 ok ... 5 canned stories only)."""

    level: int
    description: str


@dataclass(frozen=True)
class ShutdownRequested:
    reason: str


Event = (
    ButtonPressed
    | ButtonReleased
    | ButtonLongPressed
    | HeldWithoutSpeech
    | SpeechStarted
    | TranscriptPartial
    | TranscriptFinal
    | CommandHeard
    | StoryRequested
    | StoryAudible
    | StoryEnded
    | ListenerFailed
    | ListenerReady
    | EngineStatus
    | MemoryPressure
    | ShutdownRequested
)
