"""The speech recognizer in its own process (audio/asr_process.py): real PocketSphinx in a child Python."""

from __future__ import annotations

import os
import signal

import pytest

from audio.asr import AsrError
from audio.asr_process import ProcessRecognizer
from robot.controls.commands import Command, CommandPhrases
from tests.conftest import ROOT

PHRASES = CommandPhrases.load("en")


def _arguments(**changes) -> dict:
    return {
        "backend": "pocketsphinx",
        "vosk_model": "",
        "grammar": (),
        "jsgf_file": str(ROOT / "assets" / "asr" / "story-requests.jsgf"),
        "state_dir": None,
        "commands": PHRASES.grammar(),
        **changes,
    }


def _decode(recognizer, samples, is_command: bool) -> str:
    recognizer.use_commands(is_command)
    pcm = samples.astype("<i2").tobytes()
    for i in range(0, len(pcm), 2880):  # three 30 ms frames at a time, as the listener feeds it
        recognizer.accept(pcm[i : i + 2880])
    return recognizer.finish()


def test_the_child_process_hears_a_command_and_a_request(espeak):
    recognizer = ProcessRecognizer(_arguments())
    try:
        assert recognizer.name == "pocketsphinx"
        stop = espeak("stop")
        _decode(recognizer, stop, True)  # the first utterance warms the cepstral mean
        assert PHRASES.match(_decode(recognizer, stop, True)) is Command.STOP
        assert "dragon" in _decode(recognizer, espeak("tell me a story about a dragon"), False)
        assert recognizer._proc is not None and recognizer._proc.pid != os.getpid()
    finally:
        recognizer.close()
    assert recognizer._proc is None


def test_a_killed_child_loses_its_utterance_and_is_started_again(espeak):
    recognizer = ProcessRecognizer(_arguments())
    try:
        first = recognizer._proc
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        first.wait(5)
        assert recognizer.accept(b"\0\0" * 480) is None  # the utterance is lost, not an exception
        stop = espeak("stop")
        _decode(recognizer, stop, True)
        assert PHRASES.match(_decode(recognizer, stop, True)) is Command.STOP
        assert recognizer._proc is not None and recognizer._proc.pid != first.pid
    finally:
        recognizer.close()


def test_a_recognizer_the_child_cannot_build_is_one_clear_error():
    with pytest.raises(AsrError, match="unknown recognizer 'nope'"):
        ProcessRecognizer(_arguments(backend="nope"))
