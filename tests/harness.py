"""Stand-ins for the voice, for telling stories as text: used by tests and by scripts/bench_stories.py."""

from __future__ import annotations

import asyncio

import numpy as np

from audio.speech import Audio


class RecordingTts:
    """A synthesizer that records what it was asked to say and returns a moment of silence."""

    name = "recording"

    def __init__(self) -> None:
        self.spoken: list[str] = []

    async def synthesize(self, text: str) -> Audio:
        self.spoken.append(text)
        return Audio(np.zeros(16, dtype=np.int16), 16000)

    async def close(self) -> None:
        pass


class NullSink:
    """A speaker that plays everything at once."""

    rate_hz = 16000
    first_audio_monotonic = None

    async def play(self, audio: Audio) -> bool:
        return True

    def stop(self) -> None:
        pass

    def set_volume(self, volume: float) -> None:
        self.volume = volume

    def duck(self, is_ducked: bool) -> None:
        self.is_ducked = is_ducked

    async def close(self) -> None:
        pass


def resolved(value) -> asyncio.Future:
    """An awaitable that is already done, for StoryTeller.tell's engine and sink."""
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
