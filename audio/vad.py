"""Voice-activity detection on 16 kHz int16 frames: an energy detector over a minimum-statistics noise floor.

The noise floor is the quietest frame of the last FLOOR_WINDOW_S outside speech. Speech always has gaps between
words, so the floor finds the room's level even when listening begins in the middle of a sentence, and steady
noise (a fan) sets its own floor instead of passing for speech. (WebRTC's VAD was tried: it takes steady white
noise at -40 dBFS for speech in every frame.)

It keeps a pre-roll of the frames before speech, so that the first syllable reaches the recognizer, and ends an
utterance after a stretch of silence or at a length limit.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

import numpy as np

from audio.speech import rms_dbfs

FLOOR_WINDOW_S = 1.5
INITIAL_FLOOR_DBFS = -70.0


class VadEvent(enum.Enum):
    NONE = "none"  # nothing changed; frames (if any) belong to the ongoing utterance
    STARTED = "started"  # speech began; frames carries the pre-roll and this frame
    ENDED = "ended"  # the utterance ended (silence); frames carries the last frame


@dataclass(frozen=True)
class VadResult:
    event: VadEvent
    frames: tuple[np.ndarray, ...]  # audio for the recognizer, in order
    is_cut_off: bool = False  # ENDED because of the length limit, not silence


@dataclass(frozen=True)
class VadSettings:
    frame_ms: int
    margin_db: float
    min_level_dbfs: float
    preroll_ms: int
    min_speech_ms: int
    end_silence_ms: int
    max_utterance_s: float
    # silence that ends an utterance the recognizer already holds as a complete request (robot/listener.py); 0: off
    complete_silence_ms: int = 0


class EnergyVad:
    def __init__(self, settings: VadSettings) -> None:
        self._s = settings
        frames = lambda ms: max(1, round(ms / settings.frame_ms))  # noqa: E731
        self._preroll: collections.deque[np.ndarray] = collections.deque(
            maxlen=frames(settings.preroll_ms) + frames(settings.min_speech_ms)
        )
        self._start_frames = frames(settings.min_speech_ms)
        self._end_frames = frames(settings.end_silence_ms)
        self._max_frames = frames(settings.max_utterance_s * 1000)
        self._recent_levels: collections.deque[float] = collections.deque(maxlen=frames(FLOOR_WINDOW_S * 1000))
        self.is_in_speech = False
        self._voiced_run = 0
        self._silent_run = 0
        self._length = 0

    @property
    def silence_ms(self) -> int:
        """How long the utterance in progress has been silent (0 outside speech)."""
        return self._silent_run * self._s.frame_ms if self.is_in_speech else 0

    def reset(self) -> None:
        self._preroll.clear()
        self.is_in_speech = False
        self._voiced_run = self._silent_run = self._length = 0

    @property
    def noise_floor_dbfs(self) -> float:
        return min(self._recent_levels, default=INITIAL_FLOOR_DBFS)

    def is_voiced(self, level_dbfs: float) -> bool:
        return level_dbfs >= max(self.noise_floor_dbfs + self._s.margin_db, self._s.min_level_dbfs)

    def take_quiet(self, frames, levels_dbfs: list[float]) -> bool:
        """Outside speech, take a block of frames at once when every one is below min_level_dbfs (so unvoiced
        whatever the floor): the state is then what process() frame by frame would leave. False, and nothing
        taken, otherwise."""
        if self.is_in_speech or max(levels_dbfs, default=0.0) >= self._s.min_level_dbfs:
            return False
        self._recent_levels.extend(levels_dbfs)
        self._preroll.extend(frames)
        self._voiced_run = 0
        return True

    def process(self, frame: np.ndarray, level_dbfs: float | None = None) -> VadResult:
        """level_dbfs: the frame's rms_dbfs when already known (frame_levels_dbfs over a whole block)."""
        level = rms_dbfs(frame) if level_dbfs is None else level_dbfs
        if not self.is_in_speech:  # the floor is learnt outside speech and held during it
            self._recent_levels.append(level)
        voiced = self.is_voiced(level)
        if not self.is_in_speech:
            self._preroll.append(frame)
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self._start_frames:
                self.is_in_speech = True
                self._silent_run, self._length = 0, len(self._preroll)
                frames = tuple(self._preroll)
                self._preroll.clear()
                return VadResult(VadEvent.STARTED, frames)
            return VadResult(VadEvent.NONE, ())
        self._length += 1
        self._silent_run = 0 if voiced else self._silent_run + 1
        if self._silent_run >= self._end_frames or self._length >= self._max_frames:
            is_cut_off = self._silent_run < self._end_frames
            self.reset()
            return VadResult(VadEvent.ENDED, (frame,), is_cut_off)
        return VadResult(VadEvent.NONE, (frame,))
