"""The robot's own voice in a leaky room (tests/bargein.py: a loopback plays the speaker back into the room the
microphone hears, at full level), with the echo canceller as the default configuration sets it (audio.echo_cancel =
auto: on on this host, audio/echo.py; the recognizer then runs in its own process, audio/asr_process.py)."""

from __future__ import annotations

import re

import pytest

from tests.bargein import leaky_loopback, tell_stories
from tests.soundroom import Recorder

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
