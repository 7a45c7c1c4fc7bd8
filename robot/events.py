"""The robot's event vocabulary. Tasks post these to the one coroutine that owns the robot's state.

Times are time.monotonic() seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: the vocabulary imports nothing of the parts
    from audio.playback import Sink
    from robot.story.session import StoryResult


class State(enum.Enum):
    IDLE = "idle"  # waiting for a button press or speech
    LISTENING = "listening"  # taking a request
    THINKING = "thinking"  # a story was asked for; nothing is audible yet
    SPEAKING = "speaking"  # the story is being told
    DEGRADED = "degraded"  # something it needs is missing; it says so and keeps trying
    STOPPING = "stopping"  # shutting down


class Source(enum.Enum):
    TEXT = "text"  # a typed request (storybot tell, the parents' page)
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
class WakeWordHeard:
    """The wake word (asr.wake_word), a spoken press: idle, listen for a request; thinking or speaking, stop."""

    phrase: str
    at: float


@dataclass(frozen=True)
class VoiceOverStory:
    """Someone began speaking over the robot (is_speaking), or stopped: the story is ducked meanwhile, so that the
    rest of what is said is heard over less of the robot's voice."""

    is_speaking: bool


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
    seed: int = -1  # the engine's seed; -1: engine.seed, or a new one (a favourite replayed gives its own)
    is_bedtime: bool | None = None  # None: as the configuration and the parents' quiet hours say


@dataclass(frozen=True)
class StopRequested:
    """Stop the story being told (the parents' page); nothing when none is."""

    source: Source


@dataclass(frozen=True)
class VolumeSet:
    """A parent set the volume and its cap (0.1-1.0 each; the volume is held at or below the cap)."""

    volume: float
    cap: float


@dataclass(frozen=True)
class SentenceStarted:
    """A sentence of telling `story` starts playing; the first one (index 0) makes the story audible."""

    story: int  # which telling: a stopped story's last sentence can arrive after the next one started
    index: int  # 0 for the first sentence heard
    text: str


@dataclass(frozen=True)
class SpeakerOpened:
    """The speaker of telling `story` is open: the state owner stops it at once and sets its volume."""

    story: int
    sink: Sink


@dataclass(frozen=True)
class EngineGaveUp:
    """The engine a story waited for cannot start with this model at all (a bad model): the exit status says so."""

    message: str


@dataclass(frozen=True)
class StoryEnded:
    result: StoryResult
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
    what: str = "engine"  # the part STATUS names: "engine", or "remote engine" (the server, robot/remote_host.py)


@dataclass(frozen=True)
class MemoryPressure:
    """The memory guard changed level (robot.memory.guard.Level: 0 ok ... 5 canned stories only). The state owner
    alone acts on it: the engine's context, holding the engine stopped (engine_hold non-empty: why) or releasing
    it, and the story being told."""

    level: int
    description: str
    context_tokens: int = 0  # the engine's context from the next story (0: as it is)
    engine_hold: str = ""


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
    | VoiceOverStory
    | WakeWordHeard
    | StoryRequested
    | StopRequested
    | VolumeSet
    | SentenceStarted
    | SpeakerOpened
    | EngineGaveUp
    | StoryEnded
    | ListenerFailed
    | ListenerReady
    | EngineStatus
    | MemoryPressure
    | ShutdownRequested
)
