"""The stop-word classifier (asr.stop_word, on by default; audio/stop_word.py) on real synthesized speech: the voices
here (tests/voices.py) were held out of its training (scripts/train_stop_word.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import robot.listener as listener_module
from audio.asr import PocketSphinxRecognizer
from audio.stop_word import SIZE, StopWord, StopWordError
from robot.controls.commands import CommandPhrases
from robot.events import CommandHeard
from robot.plumbing.config import load_config
from robot.plumbing.paths import assets_dir
from robot.supervisor import _stop_word
from tests import spoken_requests as spoken
from tests.test_answering_sooner import (
    FRAME_SAMPLES,
    SETTINGS,
    RecordedMicrophone,
    listen_through,
    recording,
    room_noise,
    trimmed,
)
from tests.voices import ADULT_VOICE, CHILD_VOICES, MILD_CHILD_VOICES

OTHER_COMMANDS = ("louder", "another story", "what did you say", "again", "softer")


def test_the_shipped_classifier_hears_stop_and_not_the_other_commands(voices_dir):
    model = StopWord.load()
    rng = np.random.default_rng(4)
    for voice in (ADULT_VOICE, *MILD_CHILD_VOICES):
        assert model.is_stop(recording(rng, spoken.samples("stop", voice, voices_dir), 0.3)), voice.describe()
        taken = [t for t in OTHER_COMMANDS if model.is_stop(recording(rng, spoken.samples(t, voice, voices_dir), 0.3))]
        assert taken == [], f"{voice.describe()}: {taken} taken for stop"
    assert model.about["held_out"].keys() >= {"adult", "child-mild-a", "child-a"}  # the training said what it kept out


def _commands_heard(samples: np.ndarray, stop_word: StopWord | None, monkeypatch) -> list[str]:
    """What a listener in command mode (the robot speaking) posts for samples, with real PocketSphinx."""
    return [text for text, _ in _commands_posted(samples, stop_word, monkeypatch)]


def _commands_posted(samples: np.ndarray, stop_word: StopWord | None, monkeypatch) -> list[tuple[str, float]]:
    """The same, each with the seconds of samples the microphone had handed over when it was posted."""
    monkeypatch.setattr(listener_module, "COMMAND_HOLD_OFF_S", 0.0)  # the recording is read faster than real time
    recognizer = PocketSphinxRecognizer(
        jsgf_file=str(assets_dir() / "asr" / "story-requests.jsgf"), commands=CommandPhrases.load("en").grammar()
    )
    mic = RecordedMicrophone(samples)
    heard: list[tuple[str, float]] = []
    listener = listener_module.Listener(
        lambda e: (
            heard.append((e.text, mic.frames_read * FRAME_SAMPLES / 16000)) if isinstance(e, CommandHeard) else None
        ),
        lambda: mic,
        lambda: recognizer,
        SETTINGS,
        is_open=lambda: False,
        is_command_time=lambda: True,
        stop_word=stop_word,
    )
    listen_through(mic, len(samples), listener)
    return heard


@pytest.mark.parametrize("voice", MILD_CHILD_VOICES, ids=lambda v: v.name)
def test_a_stop_the_command_grammar_misses_is_heard_by_the_classifier(voice, voices_dir, monkeypatch):
    """A child-like "stop" that a cold PocketSphinx command grammar makes only [unk]s of becomes the command "stop"
    with the classifier; "what did you say", which the grammar decodes, stays what it is."""
    stop = recording(np.random.default_rng(1), spoken.samples("stop", voice, voices_dir), 1.0)
    without = _commands_heard(stop, None, monkeypatch)
    assert without and all(set(t.split()) == {"[unk]"} for t in without), without  # the grammar's miss
    assert _commands_heard(stop, StopWord.load(), monkeypatch) == ["stop"]
    repeat = recording(np.random.default_rng(2), spoken.samples("what did you say", voice, voices_dir), 1.0)
    assert _commands_heard(repeat, StopWord.load(), monkeypatch) == ["what did you say"]


@pytest.mark.parametrize("voice", (MILD_CHILD_VOICES[0], CHILD_VOICES[2]), ids=lambda v: v.name)
def test_a_stop_with_the_robots_voice_after_it_stops_the_story_without_waiting_for_the_utterances_end(
    voice, voices_dir, monkeypatch
):
    """A child-like "stop" with what the canceller leaves of the robot's voice right after it (the adult voice,
    -28 dBFS: over the command floor, so one utterance goes on through it): the classifier is asked
    STOP_WORD_AFTER_PEAK_S after the word's loudest frame and the stop is posted then, within 0.7 s of the word's
    end, not at the utterance's end 1.5 s later. Asked only at the end, the 2.4 s utterance is no "stop" at all."""
    rng = np.random.default_rng(3)
    stop = trimmed(spoken.samples("stop", voice, voices_dir))
    story = trimmed(
        spoken.samples("once upon a time there was a little bear who wanted to see the sea", ADULT_VOICE, voices_dir)
    )
    residual = story[: int(1.5 * 16000)].astype(np.float64)
    residual *= 32768 * 10 ** (-28 / 20) / np.sqrt(np.mean(residual**2))
    samples = np.concatenate([room_noise(0.6, rng), stop, residual.astype(np.int16), room_noise(3.0, rng)])
    word_end_s = 0.6 + len(stop) / 16000
    posted = _commands_posted(samples, StopWord.load(), monkeypatch)
    assert posted and posted[0][0] == "stop", posted
    assert posted[0][1] - word_end_s < 0.7, (posted, word_end_s)
    monkeypatch.setattr(listener_module, "STOP_WORD_AFTER_PEAK_S", 99.0)  # asked at the utterance's end only
    assert "stop" not in [text for text, _ in _commands_posted(samples, StopWord.load(), monkeypatch)]


def test_a_file_that_is_no_classifier_is_refused_by_name(tmp_path):
    garbage = tmp_path / "stop-word.npz"
    garbage.write_bytes(b"not a numpy archive")
    with pytest.raises(StopWordError, match="stop-word.npz: not a stop-word classifier"):
        StopWord.load(garbage)
    with pytest.raises(StopWordError, match="is missing"):
        StopWord.load(tmp_path / "absent.npz")
    other = tmp_path / "other.npz"
    np.savez(other, mean=np.zeros(3))
    with pytest.raises(StopWordError, match=r"\(no about, cutoff, hidden_bias"):
        StopWord.load(other)
    model = StopWord.load()
    small = tmp_path / "small.npz"
    StopWord(**{**model.__dict__, "mean": model.mean[:10], "hidden_weights": model.hidden_weights[:10]}).save(small)
    with pytest.raises(StopWordError, match=f"made for 10 features, this code makes {SIZE}"):
        StopWord.load(small)


def test_the_daemon_runs_on_without_an_unusable_classifier(tmp_path, monkeypatch, caplog):
    import robot.plumbing.paths

    assert _stop_word(load_config(None, [], use_system=False)) is not None  # on by default
    assert _stop_word(load_config(None, ["asr.stop_word=false"], use_system=False)) is None
    assert _stop_word(load_config(None, ["story.language='ko'"], use_system=False)) is None  # English only
    config = load_config(None, ["asr.stop_word_cutoff=0.9"], use_system=False)
    assert _stop_word(config).cutoff == pytest.approx(0.9)
    broken = tmp_path / "asr" / "stop-word.npz"
    broken.parent.mkdir()
    broken.write_bytes(b"\x00" * 10)
    monkeypatch.setattr(robot.plumbing.paths, "assets_dir", lambda: tmp_path)
    with caplog.at_level(logging.WARNING):
        assert _stop_word(config) is None
    assert "voice commands are heard without it" in caplog.text and str(broken) in caplog.text


def test_the_memory_plan_counts_the_classifier_where_the_daemon_loads_it():
    from robot.memory.plan import Footprints, settings_from_config

    def microphone(*overrides: str) -> int:
        return settings_from_config(load_config(None, list(overrides), use_system=False)).microphone_bytes

    extra = Footprints().stop_word_bytes
    assert microphone() - microphone("asr.stop_word=false") == extra > 2 * 2**20  # measured: 2.49 MiB
    assert microphone("story.language='ko'") == microphone("asr.stop_word=false", "story.language='ko'")
    assert microphone("asr.voice_commands=false") == microphone("asr.stop_word=false", "asr.voice_commands=false")
