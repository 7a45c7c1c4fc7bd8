"""Ducking: while someone speaks over the story, the robot's voice is lowered (audio.playback.DUCK_DB), so that the
rest of what is said reaches the recognizers over less of it. The listener says when (VoiceOverStory), the robot
tells its speaker, and the speaker's stream (and the echo canceller's reference with it) plays lower."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

import robot.listener as listener_module
from audio.asr import PocketSphinxRecognizer
from audio.echo import EchoReference
from audio.playback import DUCK_DB, SoundDeviceSink
from audio.speech import Audio
from robot.controls.commands import CommandPhrases
from robot.events import ShutdownRequested, Source, State, StoryRequested, VoiceOverStory
from robot.plumbing.config import load_config
from robot.plumbing.paths import assets_dir
from robot.plumbing.settings import RuntimeSettings
from robot.robot import Mode, Robot
from robot.story.resume import StoryStore
from tests import spoken_requests as spoken
from tests.harness import RecordingTts
from tests.test_answering_sooner import FRAME_SAMPLES, SETTINGS, RecordedMicrophone, listen_through, room_noise, trimmed
from tests.test_commands import ScriptedHost, SlowSink, _until
from tests.voices import CHILD_VOICES

RATE_HZ = 16000


def _voice_over_story_posted(samples: np.ndarray, monkeypatch, hold_off_s: float) -> list[tuple[bool, float]]:
    """VoiceOverStory events a listener in command mode (the robot speaking) posts for samples, each with the
    seconds of samples the microphone had handed over when it was posted."""
    monkeypatch.setattr(listener_module, "COMMAND_HOLD_OFF_S", hold_off_s)
    recognizer = PocketSphinxRecognizer(
        jsgf_file=str(assets_dir() / "asr" / "story-requests.jsgf"), commands=CommandPhrases.load("en").grammar()
    )
    mic = RecordedMicrophone(samples)
    posted: list[tuple[bool, float]] = []

    def post(event) -> None:
        if isinstance(event, VoiceOverStory):
            posted.append((event.is_speaking, mic.frames_read * FRAME_SAMPLES / RATE_HZ))

    listener = listener_module.Listener(
        post, lambda: mic, lambda: recognizer, SETTINGS, is_open=lambda: False, is_command_time=lambda: True
    )
    listen_through(mic, len(samples), listener)
    return posted


def test_the_listener_says_when_someone_speaks_over_the_story_and_when_they_stop(voices_dir, monkeypatch):
    rng = np.random.default_rng(5)
    word = trimmed(spoken.samples("what did you say", CHILD_VOICES[0], voices_dir))
    samples = np.concatenate([room_noise(1.0, rng), word, room_noise(2.0, rng)])
    word_end_s = 1.0 + len(word) / RATE_HZ
    posted = _voice_over_story_posted(samples, monkeypatch, hold_off_s=0.0)
    assert [is_speaking for is_speaking, _ in posted] == [True, False], posted
    began_s, ended_s = posted[0][1], posted[1][1]
    assert 1.0 < began_s < 1.5, posted  # the detector's minimum speech, and a block
    assert word_end_s < ended_s < word_end_s + 1.0, posted
    # within the story-start hold-off what is heard is the robot's own voice as the canceller learns: no ducking
    assert _voice_over_story_posted(samples, monkeypatch, hold_off_s=60.0) == []


def test_the_robot_ducks_its_speaker_while_a_voice_is_over_the_story(tmp_path):
    sink = SlowSink(5.0)
    config = load_config(None, ["engine.max_tokens=40", "engine.seed=3"], use_system=False)
    robot = Robot(
        config,
        Mode.DAEMON,
        engine_host=ScriptedHost(),
        tts=RecordingTts(),
        open_sink=lambda: sink,
        story_out=io.StringIO(),
        diag_out=io.StringIO(),
        store=StoryStore(tmp_path / "story.json"),
        commands=CommandPhrases.load("en"),
        settings=RuntimeSettings(0.6),
    )

    async def scenario() -> None:
        runner = asyncio.create_task(robot.run())
        try:
            robot.post(StoryRequested("a cat", Source.TEXT, 0.0))
            await _until(lambda: robot.state is State.SPEAKING and robot._sink is sink)
            robot.post(VoiceOverStory(True))
            await _until(lambda: getattr(sink, "is_ducked", None) is True)
            robot.post(VoiceOverStory(False))
            await _until(lambda: sink.is_ducked is False)
        finally:
            robot.post(ShutdownRequested("test"))
            await asyncio.wait_for(runner, 10)
            await robot._engine_host.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


class _KeptReference(EchoReference):
    """An EchoReference that also keeps each block it is given, with when it is due."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[np.ndarray] = []

    def write(self, samples: np.ndarray, dac_s: float) -> None:
        self.blocks.append(np.array(samples, dtype=np.int16))
        super().write(samples, dac_s)


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-9)


@pytest.mark.soundroom
def test_a_ducked_stream_plays_lower_on_the_speaker_and_in_the_cancellers_reference(sound_room, monkeypatch):
    """A steady tone on the real speaker path: ducked after 1 s, back after 2 s. The speaker's monitor hears the
    middle second DUCK_DB lower, and the canceller's reference was given the same lowered blocks (else the echo
    canceller would take out more than the room hears)."""
    from tests.soundroom import Recorder

    for key, value in sound_room.env().items():
        monkeypatch.setenv(key, value)
    t = np.arange(int(3.5 * 22050)) / 22050
    tone = Audio((8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), 22050)

    async def go() -> tuple[Recorder, _KeptReference]:
        reference = _KeptReference()
        sink = SoundDeviceSink("", 22050, 1.0, reference)
        recorder = Recorder()
        try:
            await recorder.wait_until_flowing()
            playing = asyncio.create_task(sink.play(tone))
            await asyncio.sleep(1.0)
            sink.duck(True)
            await asyncio.sleep(1.0)
            sink.duck(False)
            assert await playing is True
        finally:
            recorder.stop()
            await sink.close()
        return recorder, reference

    recorder, reference = asyncio.run(go())
    levels = np.array([_rms_db(c) for _, c in recorder.chunks if len(c)])
    loud = levels[levels > levels.max() - 30]  # the tone, full and ducked (not the silence around it)
    full, ducked = np.percentile(loud, 90), np.percentile(loud, 10)
    assert full - ducked == pytest.approx(DUCK_DB, abs=2.0), (full, ducked)
    heard_ducked = np.mean(np.abs(loud - ducked) < 2.0) * len(loud) * 0.05  # chunks of 50 ms
    assert 0.7 <= heard_ducked <= 1.3, f"{heard_ducked:.2f} s ducked on the speaker for 1 s asked"
    given = np.array([_rms_db(b) for b in reference.blocks if np.abs(b).max() > 0])
    assert np.percentile(given, 90) - np.percentile(given, 10) == pytest.approx(DUCK_DB, abs=2.0)
