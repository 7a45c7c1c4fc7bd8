"""The remote engine in the daemon, end to end: `storybot run` in the sound room (speech recorded on
speaker.monitor, STATUS read from a real notify socket, the button board on a pty) telling stories from
llama-cpp-python's real OpenAI-compatible server on loopback, with the default model; and three daemons sharing one
server at once."""

from __future__ import annotations

import importlib.util
import subprocess
import time
import wave
from contextlib import ExitStack

import numpy as np
import pytest

from tests.buttonboard import ButtonBoard
from tests.conftest import STORYBOT, need, speech_frames
from tests.notify import NotifyListener, RobotProcess
from tests.remote_servers import API_KEY, LlamaServer, established_on
from tests.soundroom import Recorder

CANCEL_BOUND_S = 0.2  # a press that stops the story closes the server's stream within this
# the longest silence the child hears in a story whose server died mid-way: the local engine reads the story so far
# (one forward pass per prompt token) while the speech already generated plays on. scripts/bench_remote.py --only
# heard measured median 3.1 s, worst 8.3 s over 10 kills with this machine's load average at 9 on 2 cores (the
# server, the daemon, its speech and other work on the same cores); the bound is what such a machine can hold
SILENCE_BOUND_S = 10.0
FAST = ("button.earcon=false", "button.long_press_ms=300", "asr.voice_commands=false")


@pytest.fixture
def stack():
    with ExitStack() as s:
        yield s


@pytest.fixture
def server(tmp_path):
    need(importlib.util.find_spec("uvicorn") is not None, "llama-cpp-python[server] is not installed (setup.sh --test)")
    server = LlamaServer(log_dir=tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "remote.key"
    path.write_text(API_KEY + "\n")
    return path


def remote_overrides(url: str, key_file, *more: str) -> tuple[str, ...]:
    # the server shares this machine's 2 cores with the daemon and its speech: its first token may come late here
    return ("engine.backend=remote", f"engine.remote_url={url}", "engine.remote_model=smollm2",
            f"engine.remote_api_key_file={key_file}", "engine.remote_first_token_timeout_s=120", *more)  # fmt: skip


def launch(sound_room, tmp_path, stack, *overrides: str) -> tuple[RobotProcess, NotifyListener, ButtonBoard]:
    notify = NotifyListener(tmp_path / "notify")
    stack.callback(notify.close)
    board = ButtonBoard()
    stack.callback(board.close)
    robot = RobotProcess(sound_room.env(), tmp_path / "state", f"button.serial_port='{board.path}'", *FAST,
                         *overrides, env=notify.env())  # fmt: skip
    stack.callback(robot.kill)
    notify.wait_for("READY", "1", 120)
    return robot, notify, board


def long_press(board: ButtonBoard) -> float:
    at = board.press()
    time.sleep(0.55)
    board.release()
    return at


def longest_silence_s(recorder: Recorder, start: float, end: float) -> float:
    """The longest run of silent 50 ms chunks between start and end (monotonic arrival times)."""
    return longest_silence(recorder, start, end)[0]


def longest_silence(recorder: Recorder, start: float, end: float) -> tuple[float, float]:
    """(seconds, when it began) of the longest run of silent 50 ms chunks between start and end."""
    chunks = [(t, c) for t, c in list(recorder.chunks) if start <= t <= end and len(c)]
    longest, began, run_started = 0.0, start, None
    for t, chunk in chunks:
        is_loud = bool(speech_frames(chunk, frame_ms=max(1, len(chunk) * 1000 // 16000)).any())
        if is_loud:
            if run_started is not None and t - run_started > longest:
                longest, began = t - run_started, run_started
            run_started = None
        elif run_started is None:
            run_started = t
    return longest, began


@pytest.mark.soundroom
@pytest.mark.slow
def test_a_story_told_through_the_server_and_a_press_closes_its_stream_within_200_ms(
    sound_room, server, key_file, tmp_path, stack
):
    recorder = Recorder()
    stack.callback(recorder.stop)
    robot, notify, board = launch(sound_room, tmp_path, stack, *remote_overrides(server.url, key_file),
                                  "engine.max_tokens=120", "engine.remote_fallback=none")  # fmt: skip
    assert any("answers in" in line for line in robot.stderr), robot.log_tail()
    # a story stopped by a press while its stream is open: the server sees the connection closed
    closed_s = None
    for _ in range(3):  # a story that ended before the press leaves nothing to stop: another try
        since = long_press(board)
        robot.wait_until(lambda: established_on(server.port) >= 1 or None, 60, "the story's stream")
        time.sleep(1.0)  # the server is reading the prompt or sending tokens
        if robot.err_lines("speaking -> idle", since) or not established_on(server.port):
            robot.wait_err("speaking -> idle", 120, since)
            continue
        pressed = board.press()
        time.sleep(0.05)  # held past button.debounce_ms (30), as a finger does
        board.release()
        while established_on(server.port) and time.monotonic() - pressed < 5:
            time.sleep(0.002)
        closed_s = time.monotonic() - pressed
        robot.wait_err("-> idle", 10, since)
        break
    assert closed_s is not None, f"no story's stream was open long enough to be stopped: {robot.log_tail()}"
    # the same story, continued through the server and heard to its end
    since = long_press(board)
    robot.wait_err("speaking -> idle", 300, since)
    told = [line for _, line in robot.out_lines("", since)]
    robot.stop()
    # told[0] is the last sentence heard, said again; what follows is new. The model may end the story after one
    # more sentence (CI once heard one of 16 words and the end), so a whole new sentence is what is asked for
    assert len(told) >= 2 and len(" ".join(told[1:]).split()) >= 8, told
    assert recorder.speech_seconds() >= 4.0
    assert not robot.err_lines("WARNING robot.remote_host"), robot.log_tail()
    assert closed_s < CANCEL_BOUND_S, f"the server saw the stream closed {closed_s * 1000:.0f} ms after the press"
    assert not robot.err_lines("the story goes on with the local engine"), "the server did not fail here"
    assert API_KEY not in "\n".join(robot.stderr + robot.stdout)


@pytest.mark.soundroom
@pytest.mark.slow
def test_a_server_killed_mid_story_the_child_hears_the_story_go_on(sound_room, server, key_file, tmp_path, stack):
    recorder = Recorder()
    stack.callback(recorder.stop)
    robot, notify, board = launch(sound_room, tmp_path, stack, *remote_overrides(server.url, key_file),
                                  "engine.max_tokens=160", "engine.remote_api=completions",
                                  "engine.remote_fallback=llama2c")  # fmt: skip
    assert "degraded" not in (notify.status_at(time.monotonic()) or "")
    # unthrottled, the server told a whole 67-token story in 2.4 s, before the speech of its first sentences ended:
    # the kill then came after the story's last token and there was nothing left to go on with. A quarter of a core
    # was not enough on a faster CI machine (69 tokens at 19 tok/s, the story generated before its second sentence
    # was heard); a tenth is, and the kill waits for a stream still open
    server.throttle(running_share=0.1)
    since = long_press(board)
    robot.wait_until(lambda: len(robot.out_lines("", since)) >= 2 or None, 120, "two sentences")
    assert recorder.wait_for_sound(10)
    assert server.established_connections(), f"the server had told the whole story before the kill: {robot.log_tail()}"
    killed = time.monotonic()
    server.kill()
    robot.wait_err("the story goes on with the local engine", 30, since)
    ended = robot.wait_err("speaking -> idle", 180, since)
    status = notify.wait_for_status(lambda s: "degraded: remote engine:" in s, 10, killed)
    told = [line for _, line in robot.out_lines("", since)]
    robot.stop()
    after_kill = [line for t, line in robot.out_lines("", killed)]
    assert len(after_kill) >= 2, f"the story did not go on after the server died: {told}"
    assert "I lost my place" not in " ".join(told) and "story book closed" not in " ".join(told), told
    # from the kill: a silence before it is the server's own pace on these shared cores, not the failover
    silence_s, began = longest_silence(recorder, killed, min(ended, recorder.last_speech_arrival()))
    print(f"longest silence after the kill: {silence_s:.2f} s, from {began - killed:+.2f} s")
    assert silence_s < SILENCE_BOUND_S, f"the child heard {silence_s:.2f} s of silence at the failover"
    assert "cannot connect" in status or "broke the connection" in status, status
    failure_lines = robot.err_lines("remote engine: ")
    assert len([line for _, line in failure_lines if "WARNING" in line]) == 1, failure_lines


@pytest.mark.slow
def test_three_daemons_share_one_server_and_their_stories_do_not_mix(server, key_file, tmp_path):
    subjects = {"dragon": "a dragon who loves tea", "penguin": "a penguin who plays the drum",
                "turtle": "a turtle who builds boats"}  # fmt: skip
    procs = {}
    for word, request in subjects.items():
        argv = [STORYBOT, "tell", request, "--wav", str(tmp_path / f"{word}.wav"), "-v"]
        # llama-cpp-python's server answers one request at a time: the last story waits for the other two
        for o in remote_overrides(server.url, key_file, "engine.max_tokens=60", "engine.remote_fallback=none",
                                  "engine.seed=3", "engine.remote_first_token_timeout_s=300",
                                  "engine.first_token_timeout_s=300"):  # fmt: skip
            argv += ["--set", o]
        env = {"STORYBOT_STATE_DIR": str(tmp_path / f"state-{word}"), "PATH": "/usr/bin:/bin"}
        procs[word] = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       stdin=subprocess.DEVNULL)  # fmt: skip
    results = {word: proc.communicate(timeout=600) for word, proc in procs.items()}
    for word, (out, err) in results.items():
        assert procs[word].returncode == 0, err[-3000:]
        story = out.splitlines()
        assert story and word in story[0], story
        assert "story finished" in err, err[-2000:]
        assert "the story goes on with the local engine" not in err and "canned" not in err, err[-2000:]
        assert len(" ".join(story[1:]).split()) >= 5, story
        others = [w for w in subjects if w != word]
        assert not any(w in out.lower() for w in others), f"the {word} story has another's words: {out}"
        with wave.open(str(tmp_path / f"{word}.wav")) as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            rate_hz = w.getframerate()
        assert speech_frames(samples, rate_hz).sum() > 20, "no speech in the story's WAV"
