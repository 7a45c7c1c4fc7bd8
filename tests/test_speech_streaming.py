"""Answering sooner (issue 14): the opening's speech plays as it is made, its first piece before the rest exists."""

from __future__ import annotations

import asyncio
import shutil
import time
import wave

import numpy as np

from audio.playback import SoundDeviceSink, WavSink
from audio.speech import Audio, rms_dbfs
from audio.tts import EspeakNgTts, FliteTts, Timeouts, TtsError, first_clause, speech_chunks
from engines.child import Child
from robot.plumbing.config import Config
from robot.story.prompt import build_prompt
from robot.story.session import StoryPlan, StoryTeller, keep_opening_speech
from tests.conftest import need
from tests.harness import resolved

OPENING = "Once upon a time, there was a dragon who loved tea."


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def pieces_of(tts, text: str) -> list[Audio]:
    return [piece async for piece in speech_chunks(tts, text)]


def test_espeak_ng_hands_its_speech_over_in_pieces_as_it_makes_it():
    need(shutil.which("espeak-ng") is not None, "espeak-ng is not installed")

    async def go():
        tts = EspeakNgTts("", 150, Timeouts(5, 0.05), spawn=Child)
        try:
            return await pieces_of(tts, OPENING), await tts.synthesize(OPENING)
        finally:
            await tts.close()

    pieces, whole = run(go())
    assert len(pieces) >= 2, "the sentence came in one piece"
    streamed = np.concatenate([p.samples for p in pieces])
    assert {p.rate_hz for p in pieces} == {whole.rate_hz}
    # the same synthesizer, the same sentence: the pieces are the whole sentence's speech
    assert abs(len(streamed) - whole.frame_count) <= whole.rate_hz // 100
    assert rms_dbfs(streamed) > -35.0, "the pieces are near silence"


def test_flite_makes_the_first_clause_first_and_a_kept_clause_needs_no_synthesis():
    need(shutil.which("flite") is not None, "flite is not installed")
    head, tail = first_clause(OPENING)
    assert (head, tail) == ("Once upon a time,", "there was a dragon who loved tea.")

    async def go():
        tts = FliteTts("", Timeouts(5, 0.05), spawn=Child)
        try:
            pieces = await pieces_of(tts, OPENING)
            whole = await tts.synthesize(OPENING)
            await keep_opening_speech(tts, "en")  # what the daemon does at start-up
            tts._binary = shutil.which("false")  # from now on flite fails: a piece that comes was kept
            stream = speech_chunks(tts, OPENING)
            kept = await anext(stream)
            try:
                await anext(stream)
                rest_failed = False
            except TtsError:
                rest_failed = True
            return pieces, whole, kept, rest_failed
        finally:
            await tts.close()

    pieces, whole, kept, rest_failed = run(go())
    assert len(pieces) == 2
    first_s, rest_s = pieces[0].duration_s, pieces[1].duration_s
    assert 0.5 < first_s < whole.duration_s * 0.6, f"first piece {first_s:.2f} s of {whole.duration_s:.2f} s"
    assert rms_dbfs(pieces[0].samples) > -35.0 and rms_dbfs(pieces[1].samples) > -35.0
    assert abs(first_s + rest_s - whole.duration_s) < 0.6, "the clauses together are not the sentence"
    assert rest_failed, "the rest of the sentence did not need flite"
    assert abs(kept.duration_s - first_s) < 0.05, "the kept piece is not the first clause's speech"


class GatedTts:
    """Makes the first sentence in two pieces, the second only once the speaker has begun playing the first:
    a story that waited for the whole sentence before playing would never get it (the test times out)."""

    name = "gated"

    def __init__(self, first_played: asyncio.Event) -> None:
        self._first_played = first_played
        self.made_at: list[float] = []

    async def synthesize(self, text: str) -> Audio:
        return tone(0.2)

    async def stream(self, text: str):
        self.made_at.append(time.monotonic())
        yield tone(0.3)
        await asyncio.wait_for(self._first_played.wait(), 10)
        self.made_at.append(time.monotonic())
        yield tone(0.3)


class WatchedWavSink(WavSink):
    def __init__(self, path, first_played: asyncio.Event) -> None:
        super().__init__(path, 16000)
        self._first_played = first_played
        self.played_at: list[float] = []

    async def play(self, audio: Audio) -> bool:
        self.played_at.append(time.monotonic())
        self._first_played.set()
        return await super().play(audio)


def tone(seconds: float, rate_hz: int = 16000) -> Audio:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return Audio((np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16), rate_hz)


def test_the_first_sentence_starts_playing_before_its_speech_is_all_made(tmp_path):
    async def go():
        first_played = asyncio.Event()
        tts = GatedTts(first_played)
        sink = WatchedWavSink(tmp_path / "story.wav", first_played)
        teller = StoryTeller(Config(), tts, lambda index, sentence: None)
        prompt = build_prompt("a dragon who loves tea")
        plan = StoryPlan(prompt, seed=1, max_tokens=0, told=(prompt.opening,), bridge="")
        result = await teller.tell(plan, resolved(None), resolved(sink), time.monotonic())
        await sink.close()
        return tts, sink, result

    tts, sink, result = run(go())
    assert result.sentences, result.outcome
    assert len(tts.made_at) == 2 and len(sink.played_at) >= 2
    assert sink.played_at[0] < tts.made_at[1], "the first piece waited for the rest of the sentence"
    assert result.timings.first_speech_at is not None and result.timings.first_speech_at <= sink.played_at[0]
    with wave.open(str(tmp_path / "story.wav")) as w:
        assert w.getnframes() >= int(0.6 * 16000), "a piece of the sentence was not played"


def test_pieces_played_on_the_speaker_as_they_come_leave_no_gap(sound_room, monkeypatch):
    """Three 0.4 s pieces, each made 0.25 s after the one before: the speaker plays 1.2 s of sound without a
    silent 50 ms between them."""
    from tests.soundroom import Recorder

    for key, value in sound_room.env().items():
        monkeypatch.setenv(key, value)

    async def pieces():
        for i in range(3):
            if i:
                await asyncio.sleep(0.25)
            yield tone(0.4, 22050)

    async def go():
        sink = SoundDeviceSink("", 22050, 1.0)
        recorder = Recorder()
        try:
            await recorder.wait_until_flowing()
            assert await sink.play_chunks(pieces()) is True
            await asyncio.sleep(0.5)
        finally:
            recorder.stop()
            await sink.close()
        return recorder

    recorder = run(go())
    loud = [rms_dbfs(chunk) > -40.0 for _, chunk in recorder.chunks]
    assert any(loud), "nothing was heard"
    first, last = loud.index(True), len(loud) - 1 - loud[::-1].index(True)
    heard = loud[first : last + 1]
    assert all(heard), f"a gap in the speech: {''.join('#' if x else '.' for x in heard)}"
    assert 1.0 <= len(heard) * 0.05 <= 1.6, f"{len(heard) * 0.05:.2f} s of sound for 1.2 s of pieces"
