"""Requests only when meant (issue 14): in `run` mode talk that asks for no story starts none."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from robot.controls.requests import asks_for_a_story
from tests.conftest import write_wav
from tests.soundroom import Daemon

SCRIPTED_ENGINE = str(Path(__file__).with_name("scripted_engine.py"))
PIECES = [" He drank warm milk by the fire.", " Then he slept.", " The end."]
# radio-like talk and grown-ups talking: what an always-open microphone hears
AMBIENT = [
    "the weather today will be sunny with a chance of rain in the evening",
    "and now the news at nine o'clock from the city hall",
    "turn left at the next street and then go straight on",
    "I think we should buy more bread and butter tomorrow",
    "the train to the airport leaves from platform two",
]


@pytest.mark.parametrize(
    ("text", "language", "asked"),
    [
        ("tell me a story about a dragon who loves tea", "en", True),
        ("a story about a cat", "en", True),
        ("go on", "en", True),
        ("the wizard and the silly witch that can and some green duck", "en", False),  # a radio, forced on the grammar
        ("a dragon who loves tea", "en", False),  # a bare subject: fine with the button, not from an open room
        ("read short story old bird and car that can my girl", "en", False),  # "buy more bread and butter"
        ("please can you tell me a story", "en", True),
        ("can you read us story with a big kitten and some bird", "en", False),  # a radio song, forced on the grammar
        ("read me a funny story about a fox", "en", True),
        ("story about a cat who likes milk", "en", True),
        ("story of a duck that likes bread", "en", False),  # talk forced onto the grammar, no article, not "about"
        ("용 이야기 해 줘", "ko", True),
        ("오늘 날씨", "ko", False),
    ],
)
def test_a_request_asks_for_a_story_in_words(text, language, asked):
    assert asks_for_a_story(text, language) is asked


@pytest.mark.soundroom
def test_in_run_mode_ambient_talk_starts_no_story_and_a_request_still_does(sound_room, espeak, tmp_path):
    robot = Daemon(
        sound_room,
        tmp_path / "state",
        "engine.backend='command'",
        "engine.command=" + json.dumps([sys.executable, SCRIPTED_ENGINE, json.dumps(PIECES)]),
    )
    try:
        robot.wait_until(lambda: any("listening on" in line for line in robot.stderr), 60, "listening")
        time.sleep(1.0)
        for i, sentence in enumerate(AMBIENT):
            sound_room.play_into_room(write_wav(tmp_path / f"ambient{i}.wav", espeak(sentence), 16000))
            time.sleep(1.5)
        robot.wait_until(lambda: sum("heard: " in line for line in robot.stderr) >= len(AMBIENT) - 1, 30, "talk heard")
        assert not any("story requested" in line for line in robot.stderr), "".join(robot.stderr)[-3000:]
        request = espeak("tell me a story about a dragon who loves tea")
        sound_room.play_into_room(write_wav(tmp_path / "request.wav", request, 16000))
        robot.wait_until(lambda: any("story requested" in line for line in robot.stderr), 60, "the request")
        robot.proc.send_signal(signal.SIGTERM)
        assert robot.proc.wait(15) == 0
    finally:
        robot.proc.kill()
    err = "".join(robot.stderr)
    assert err.count("story requested") == 1 and "dragon" in err, err[-3000:]
