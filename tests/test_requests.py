"""Requests only when meant (issue 14): in `run` mode talk that asks for no story starts none."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import time
from pathlib import Path

import pytest

import robot.robot as robot_module
from robot.controls.commands import CommandPhrases
from robot.controls.requests import asks_for_a_story, is_bare_continue
from robot.events import ShutdownRequested, State, TranscriptFinal
from robot.plumbing.config import load_config
from robot.plumbing.settings import RuntimeSettings
from robot.robot import Mode, Robot
from robot.story.resume import StoryStore
from tests.conftest import write_wav
from tests.harness import RecordingTts
from tests.soundroom import Daemon
from tests.test_commands import ScriptedHost, SlowSink, _until

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


@pytest.mark.parametrize(
    ("text", "is_bare"),
    [
        ("go on", True),
        ("please go on", True),
        ("keep going please", True),
        ("tell me more", True),
        ("continue", False),
        ("go on with the story", False),
        ("continue the story please", False),
        ("tell me a story about a cat", False),  # no continue at all
    ],
)
def test_a_bare_continue_names_neither_continue_nor_the_story(text, is_bare):
    assert is_bare_continue(text, "en") is is_bare


def test_in_run_mode_a_bare_go_on_continues_only_soon_after_a_story(tmp_path, monkeypatch):
    """A radio's "go on" starts no story (3 of the 6 false starts of scripts/bench_requests.py were such), nor a
    bare "go on" at start-up; right after a story it continues it, and "continue the story" always does."""
    config = load_config(None, ["engine.max_tokens=40", "engine.seed=3"], use_system=False)
    diag = io.StringIO()
    robot = Robot(
        config,
        Mode.DAEMON,
        engine_host=ScriptedHost(),
        tts=RecordingTts(),
        open_sink=lambda: SlowSink(0.3),
        story_out=io.StringIO(),
        diag_out=diag,
        store=StoryStore(tmp_path / "story.json"),
        commands=CommandPhrases.load("en"),
        settings=RuntimeSettings(0.6),
    )

    async def heard(text: str) -> None:
        before = diag.getvalue().count(f"heard: {text!r}")
        robot.post(TranscriptFinal(text, 0.0))
        await _until(lambda: diag.getvalue().count(f"heard: {text!r}") > before)
        await asyncio.sleep(0.2)

    async def scenario() -> None:
        runner = asyncio.create_task(robot.run())
        try:
            await heard("go on")  # at start-up: nothing told yet
            assert robot.state is State.IDLE and not robot.results
            robot.post(TranscriptFinal("tell me a story about a cat who likes milk", 0.0))
            await _until(lambda: robot.state is State.IDLE and len(robot.results) == 1, 30)
            await heard("go on please")  # right after the story: it goes on
            await _until(lambda: robot.state is State.IDLE and len(robot.results) == 2, 30)
            monkeypatch.setattr(robot_module, "BARE_CONTINUE_WITHIN_S", 0.5)
            await asyncio.sleep(0.8)
            await heard("keep going")  # long after: the radio
            assert robot.state is State.IDLE and len(robot.results) == 2
            await heard("continue the story")  # says what it means: always
            await _until(lambda: robot.state is State.IDLE and len(robot.results) == 3, 30)
        finally:
            robot.post(ShutdownRequested("test"))
            await asyncio.wait_for(runner, 10)
            await robot._engine_host.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))


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
