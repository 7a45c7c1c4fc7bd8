"""The robot's own voice in a leaky room (tests/bargein.py: a loopback plays the speaker back into the room the
microphone hears, at full level), with the echo canceller as the default configuration sets it (audio.echo_cancel =
auto: on on this host, audio/echo.py; the recognizer then runs in its own process, audio/asr_process.py)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.bargein import leaky_loopback, run_trials, stop_words, tell_stories
from tests.conftest import need
from tests.soundroom import Recorder
from tests.voices import CHILD_VOICES, MILD_CHILD_VOICES, missing_tools

STORIES = 20


@pytest.mark.soundroom
@pytest.mark.slow
def test_twenty_stories_told_in_a_leaky_room_trigger_no_command_and_no_request(sound_room, tmp_path):
    """Everything the robot says comes back into the room at full level: none of it may be taken for a voice
    command while it speaks, nor for a story request once it is quiet again (the last words of a story, or its
    speaker's buffer dropped when the story ends)."""
    heard_in_room = Recorder("room.monitor")
    try:
        with leaky_loopback():
            told, log = tell_stories(sound_room, tmp_path / "state", STORIES, "engine.max_tokens=12", "engine.seed=-1")
    finally:
        heard_in_room.stop()
    (tmp_path / "daemon.log").write_text(log)  # for a failure's post-mortem
    assert told == STORIES
    assert heard_in_room.speech_seconds() > 2.0 * STORIES  # the leak is real: every story was loud in the room
    assert "memory plan: echo canceller on" in log, log[-3000:]
    assert log.count("story requested (button)") == STORIES, log[-3000:]
    assert "story requested (voice)" not in log, re.findall(r".*story requested \(voice\).*", log)
    assert "command:" not in log, re.findall(r"command: .*", log)


WAKE_TRIALS = 10


@pytest.mark.soundroom
@pytest.mark.slow
@pytest.mark.parametrize("echo_cancel", ["on", "off"])
def test_the_wake_word_said_over_a_loud_story_stops_it_within_a_second(sound_room, tmp_path, echo_cancel):
    """A child-like "okay nabu" (asr.wake_word, audio/wake.py, at its default cutoffs) said over a story at full
    volume in the leaky room stops it in at least 9 of 10 trials within 1 s of the word's end with the canceller
    (here, with ducking and each utterance heard afresh: 9 or 10 of 10 in 8 of 9 runs, median 0.46 s). Without it
    the same test fails: the robot's own voice drowns the word in some trials (6-7 of 10 heard in three runs with
    ducking off and afresh hearing, 4-5 of 10 before it: child-a never gets through).
    The voices are child-like ones the okay_nabu model hears (scripts/bench_wake_word.py)."""
    need(importlib.util.find_spec("pymicro_wakeword") is not None, "pymicro-wakeword is not installed (the wake extra)")
    need(missing_tools() is None, str(missing_tools()))
    words = stop_words(tmp_path, "okay nah boo", (MILD_CHILD_VOICES[2], CHILD_VOICES[0], CHILD_VOICES[2]))
    with leaky_loopback():
        trials, log = run_trials(
            sound_room, tmp_path / "state", WAKE_TRIALS, echo_cancel, "asr.wake_word='okay_nabu'", words=words
        )
    latencies = [t.latency_s for t in trials]
    print(f"canceller {echo_cancel}: the word's end to silence, s: {latencies}")
    within = [s for s in latencies if s is not None and s <= 1.0]
    if echo_cancel == "on":
        assert len(within) >= 9, f"{latencies}\n{log[-3000:]}"
    else:
        assert len(within) < 9, f"without the canceller the word was heard over the story: {latencies}"


STOP_TRIALS = 10
# The bar: 9 of 10 within 1 s. The stop-word classifier (asr.stop_word, on by default) is asked as soon as a
# word's peak is 0.5 s past (robot/listener.py STOP_WORD_AFTER_PEAK_S); the canceller measures the echo's delay from a
# story's first 0.5 s of speech, and the speaker is ducked 15 dB while a voice is over the story. With all three:
# 10 of 10 within 1 s in every run, alone (four runs, median 0.44 s, worst 0.53 s), beside two CPU hogs (median
# 0.47 s, worst 0.52 s); all 10 stopped in the last full-suite run. Before the ducking and the early delay estimate it was 10, 10, 10 and 9
# alone but 8, 7 and 6 in full-suite runs, when the first trial came in the canceller's first story after start-up.
# Without the canceller: 0 of 10 in every run.
STOP_WITHIN = 9


@pytest.mark.soundroom
@pytest.mark.slow
@pytest.mark.parametrize("echo_cancel", ["on", "off"])
def test_a_childs_stop_said_over_a_loud_story_stops_it_within_a_second(sound_room, tmp_path, echo_cancel):
    """A child-like "stop" (the six child-like voices of tests/voices.py in turn, all held out of the stop-word
    classifier's training) said 2.5 s into a story at full volume in the leaky room stops it within 1 s of the
    word's end in at least STOP_WITHIN of 10 trials with the canceller. Without it the robot's own voice drowns the
    word: fewer than STOP_WITHIN (0 of 10 in every run here)."""
    need(missing_tools() is None, str(missing_tools()))
    words = stop_words(tmp_path, "stop", (*MILD_CHILD_VOICES, *CHILD_VOICES))
    with leaky_loopback():
        trials, log = run_trials(sound_room, tmp_path / "state", STOP_TRIALS, echo_cancel, words=words)
    latencies = [t.latency_s for t in trials]
    print(f"canceller {echo_cancel}: the word's end to silence, s: {latencies}")
    within = [s for s in latencies if s is not None and s <= 1.0]
    assert "stop word classifier on while speaking" in log, log[:3000]
    if echo_cancel == "on":
        assert len(within) >= STOP_WITHIN, f"{latencies}\n{log[-3000:]}"
    else:
        assert len(within) < STOP_WITHIN, f"without the canceller the word was heard over the story: {latencies}"
