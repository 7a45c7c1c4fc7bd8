"""Voice-activity detection on 16 kHz int16 frames: an energy detector over a tracked noise floor.

It keeps a pre-roll of the frames before speech, so that the first syllable reaches the recognizer, and ends an
utterance after a stretch of silence or at a length limit.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

import numpy as np

from audio.speech import rms_dbfs


CALIBRATION_FRAMES = 10  # ~0.3 s of room sound before any detection
FLOOR_FALL = 0.2  # per frame, towards a quieter level
FLOOR_RISE = 0.01  # per frame, towards a louder one (a ~3 s time constant at 30 ms frames)


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


class EnergyVad:
    def __init__(self, settings: VadSettings) -> None:
        self._s = settings
        frames = lambda ms: max(1, round(ms / settings.frame_ms))  # noqa: E731
        self._preroll: collections.deque[np.ndarray] = collections.deque(maxlen=frames(settings.preroll_ms) + frames(settings.min_speech_ms))
        self._start_frames = frames(settings.min_speech_ms)
        self._end_frames = frames(settings.end_silence_ms)
        self._max_frames = frames(settings.max_utterance_s * 1000)
        self.noise_floor_dbfs = -70.0
        self._calibration_left = CALIBRATION_FRAMES
        self.is_in_speech = False
        self._voiced_run = 0
        self._silent_run = 0
        self._length = 0

    def reset(self) -> None:
        self._preroll.clear()
        self.is_in_speech = False
        self._voiced_run = self._silent_run = self._length = 0

    def is_voiced(self, level_dbfs: float) -> bool:
        return level_dbfs >= max(self.noise_floor_dbfs + self._s.margin_db, self._s.min_level_dbfs)

    def process(self, frame: np.ndarray) -> VadResult:
        level = rms_dbfs(frame)
        if self._calibration_left > 0:  # the first frames only teach the detector what the room sounds like
            self._calibration_left -= 1
            self.noise_floor_dbfs = level if self._calibration_left == CALIBRATION_FRAMES - 1 else min(
                self.noise_floor_dbfs + 0.3 * (level - self.noise_floor_dbfs), max(level, self.noise_floor_dbfs))
            self._preroll.append(frame)
            return VadResult(VadEvent.NONE, ())
        voiced = self.is_voiced(level)
        if not self.is_in_speech:  # the floor falls to quiet frames quickly and rises to steady noise slowly
            rate = FLOOR_FALL if level < self.noise_floor_dbfs else FLOOR_RISE
            self.noise_floor_dbfs += rate * (level - self.noise_floor_dbfs)
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
