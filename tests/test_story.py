"""Stories: windows over a small context, resume after a kill, the saved state, canned stories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from robot.story.canned import canned_story
from robot.story.prompt import is_continue_request
from robot.story.resume import StoryRecord, StoryStore
from robot.story.session import RESUME_BRIDGE, window_prompt
from tests.conftest import STORYBOT

# --- pieces ----------------------------------------------------------------------------------------


def test_a_window_keeps_the_opening_and_the_latest_text():
    opening = "Once upon a time, there was a dragon called Bo who loved tea."
    story = " ".join(f"Sentence number {i} went by." for i in range(100))
    prompt = window_prompt(opening, story, budget_chars=200)
    assert prompt.startswith(opening + " ")
    assert prompt.endswith("Sentence number 99 went by.")
    assert len(prompt) <= 200
    assert prompt[len(opening) + 1 :].split()[0] in story.split()  # starts at a whole word


def test_a_window_with_no_room_is_the_opening():
    assert window_prompt("Once upon a time.", "lots of text", budget_chars=10) == "Once upon a time."


@pytest.mark.parametrize(
    "text,is_continue",
    [
        ("continue the story", True),
        ("go on", True),
        ("please keep going", True),
        ("tell me more", True),
        ("Continue!", True),
        ("what happened next?", True),
        ("tell me a story about a dragon", False),
        ("a story about a dragon who continues to fly", False),
        ("", False),
    ],
)
def test_continue_requests_are_recognised(text, is_continue):
    assert is_continue_request(text) is is_continue


def test_the_saved_story_survives_a_round_trip_and_a_corrupt_file_is_moved_aside(tmp_path):
    store = StoryStore(tmp_path / "story.json")
    record = StoryRecord(
        request="a dragon",
        subject="a dragon",
        opening="Once upon a time.",
        seed=7,
        sentences=["Once upon a time.", "Bo woke up."],
    )
    assert store.save(record)
    assert store.load() == record
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "story.json").write_text('{"version": 1, "request": "x"')  # a write cut by a power loss
    assert store.load() is None
    assert (tmp_path / "story.json.corrupt").exists() and not (tmp_path / "story.json").exists()
    (tmp_path / "story.json").write_text(json.dumps({"version": 1, "request": 3}))
    assert store.load() is None


def test_a_read_only_state_dir_is_reported_once_and_the_story_goes_on(tmp_path, caplog):
    state = tmp_path / "ro"
    state.mkdir()
    state.chmod(0o500)
    store = StoryStore(state / "story.json")
    record = StoryRecord(request="r", subject="s", opening="o", seed=1)
    if os.geteuid() == 0:  # root writes anywhere; a path under a regular file fails for everyone
        store = StoryStore(tmp_path / "file" / "story.json")
        (tmp_path / "file").write_text("")
    assert store.save(record) is False
    assert store.save(record) is False
    assert len([r for r in caplog.records if "cannot save" in r.message]) == 1


def test_canned_stories_follow_the_request_or_the_seed():
    assert "dragon" in canned_story("en", "a dragon who loves tea", 0)[0]
    assert "cat" in canned_story("en", "tell me about my cat", 3)[0]
    chosen = {canned_story("en", "a zebra", seed)[0] for seed in range(10)}
    assert len(chosen) > 1
    assert all(
        story[-1] == "And that is the end of the story." for story in [canned_story("en", "x", s) for s in range(5)]
    )


# --- with the real engine --------------------------------------------------------------------------


def tell(*args: str, state_dir, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STORYBOT, "tell", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "STORYBOT_STATE_DIR": str(state_dir)},
    )


def test_a_story_longer_than_the_context_goes_on_in_windows(tmp_path, default_model):
    timings = tmp_path / "t.json"
    proc = tell(
        "a dragon called Bo who loves tea",
        "--wav",
        str(tmp_path / "s.wav"),
        "-v",
        "--timings-json",
        str(timings),
        "--set",
        "engine.context_tokens=64",
        "--set",
        "engine.max_tokens=150",
        "--set",
        "engine.seed=3",
        "--set",
        "engine.backend='llama.cpp'",  # Gemma; storybot-llama2c shifts its own window, so the story needs none
        state_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("context full") >= 2  # 64 tokens of context, 150 of story
    result = json.loads(timings.read_text())["results"][0]
    assert result["tokens"] >= 140
    assert result["sentences"][-1].endswith((".", "!", "?", '"'))


def test_a_story_killed_mid_way_resumes_where_it_stopped(tmp_path, default_model):
    robot = subprocess.Popen(
        [
            STORYBOT,
            "tell",
            "a dragon who loves tea",
            "--set",
            "engine.max_tokens=300",
            "--set",
            "engine.seed=8",
            "--set",
            "tts.backend=pyttsx3",
            "--wav",
            str(tmp_path / "first.wav"),
        ],
        env={**os.environ, "STORYBOT_STATE_DIR": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    heard = [robot.stdout.readline().strip() for _ in range(3)]
    robot.send_signal(signal.SIGKILL)  # a power cut, as far as the daemon can tell
    robot.wait(10)
    saved = json.loads((tmp_path / "story.json").read_text())
    assert not saved["is_finished"] and saved["sentences"][0] == heard[0]
    assert 1 <= len(saved["sentences"]) <= 3

    proc = tell(
        "continue the story", "--wav", str(tmp_path / "second.wav"), "--set", "engine.max_tokens=40", state_dir=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    told = proc.stdout.splitlines()
    assert told[0] == RESUME_BRIDGE
    assert told[1] == saved["sentences"][-1]  # the last sentence heard, as a reminder
    assert told[2] not in saved["sentences"]  # then the story goes on
    resumed = json.loads((tmp_path / "story.json").read_text())
    assert resumed["sentences"][: len(saved["sentences"])] == saved["sentences"]
    assert resumed["sentences"][len(saved["sentences"]) :] == told[2:]
    assert resumed["is_finished"] and resumed["seed"] == saved["seed"] == 8


def test_continue_with_nothing_saved_tells_a_new_story(tmp_path, default_model):
    proc = tell(
        "continue the story", "--wav", str(tmp_path / "s.wav"), "--set", "engine.max_tokens=20", state_dir=tmp_path
    )
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0].startswith("Once upon a time, there was")


def test_with_no_usable_model_a_canned_story_is_told(tmp_path):
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"not a model at all, just some bytes")
    started = time.monotonic()
    proc = tell(
        "a cat who likes milk", "--wav", str(tmp_path / "s.wav"), "--set", f"engine.model='{model}'", state_dir=tmp_path
    )
    assert proc.returncode == 65  # told, and the bad model is reported for whoever runs the command
    told = proc.stdout.splitlines()
    assert told[0] == "Once upon a time, there was a cat who liked milk."
    assert told[-1] == "And that is the end of the story." and len(told) >= 4
    assert "canned" in proc.stderr or "no engine" in proc.stderr
    assert time.monotonic() - started < 60


def test_an_instruct_model_gets_its_chat_template_with_the_opening_as_its_reply(tmp_path, default_model):
    from tests.test_text import GEMMA_STYLE_TEMPLATE

    chat_model = tmp_path / "gemma-chat.gguf"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "gguf.scripts.gguf_new_metadata",
            default_model,
            str(chat_model),
            "--force",
            "--chat-template",
            GEMMA_STYLE_TEMPLATE,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    timings = tmp_path / "t.json"
    proc = tell(
        "a fox who likes apples",
        "--wav",
        str(tmp_path / "s.wav"),
        "-vv",
        "--timings-json",
        str(timings),
        "--set",
        f"engine.model='{chat_model}'",
        "--set",
        "engine.max_tokens=40",
        "--set",
        "engine.seed=2",
        state_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "chat prompt: '<start_of_turn>user\\nTell a gentle story for a young child about a fox" in proc.stderr
    told = proc.stdout.splitlines()
    assert told[0] == "Once upon a time, there was a fox who liked apples." and len(told) >= 2
    assert not any("<start_of_turn>" in s or "<end_of_turn>" in s for s in told)
    # the markup was parsed as the model's special tokens (49 tokens), not spelled out as text (66)
    chat_tokens = json.loads(timings.read_text())["results"][0]["prompt_tokens"]
    assert chat_tokens == 49, chat_tokens


def test_a_korean_story_is_told_in_korean(tmp_path, default_model):
    import wave

    import numpy as np

    from tests.soundroom import speech_frames

    wav = tmp_path / "ko.wav"
    proc = tell(
        "차를 좋아하는 용 이야기 해 줘",
        "--wav",
        str(wav),
        "--set",
        "story.language=ko",
        "--set",
        "tts.backend=pyttsx3",
        "--set",
        "engine.max_tokens=60",
        "--set",
        "engine.seed=4",
        state_dir=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    told = proc.stdout.splitlines()
    assert told[0] == "옛날 옛적에 차를 좋아하는 용이 살았어요.", proc.stderr[-3000:]
    assert len(told) >= 2
    with wave.open(str(wav)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        seconds = speech_frames(samples, rate_hz=w.getframerate()).sum() * 0.05
    assert seconds >= 3.0


def test_korean_with_flite_is_a_configuration_error(tmp_path):
    proc = tell("용 이야기", "--set", "story.language=ko", state_dir=tmp_path, timeout=60)
    assert proc.returncode == 78 and "needs tts.backend" in proc.stderr


@pytest.mark.parametrize("reason,closing", [("eos", []), ("length", ["The end."])])
def test_an_unfinished_last_sentence_is_dropped_whether_the_model_ended_or_was_cut(reason, closing):
    from robot.story.sentences import SentenceSplitter
    from robot.story.session import StoryTeller

    splitter = SentenceSplitter(8, 300)
    whole = list(splitter.feed("The fox found a red ball in the long grass. She took it home and then"))
    assert whole + StoryTeller._ending(splitter, reason, "The end.") == [
        "The fox found a red ball in the long grass.",
        *closing,
    ]
