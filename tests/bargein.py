"""Spoken barge-in trials in the leaky sound room, for tests/test_barge_in.py and scripts/bench_echo.py.

The room leaks: a loopback (module-loopback, speaker.monitor -> room, 30 ms) plays everything the robot says back
into the room it listens to, at full level, as a speaker beside the microphone would. One daemon tells a story per
trial (a long press on a serial button board: "continue the story", so no spoken request is needed); once the
story is heard, a child-like "stop" is played into the room, and the trial measures when the speaker fell silent
after the word's end (recorded from speaker.monitor, where the child's word never is).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.buttonboard import ButtonBoard
from tests.soundroom import Daemon, Recorder, SoundRoom, speech_frames
from tests.voices import MILD_CHILD_VOICES, Voice, say

LOOPBACK_MS = 30
STOP_AFTER_S = 2.5  # the word comes this long after the story is first heard: while the canceller still learns
QUIET_S = 0.6  # the speaker must stay silent this long once the robot says it stopped
WATCH_S = 3.0  # how long after the word a trial watches for the story to stop


@contextlib.contextmanager
def leaky_loopback():
    """The speaker leaks into the microphone's room while inside."""
    loaded = subprocess.run(
        [
            "pactl",
            "load-module",
            "module-loopback",
            "source=speaker.monitor",
            "sink=room",
            f"latency_msec={LOOPBACK_MS}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if loaded.returncode != 0:
        raise RuntimeError(f"module-loopback does not load: {loaded.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["pactl", "unload-module", loaded.stdout.strip()], capture_output=True, timeout=10)


@dataclass
class Trial:
    voice: str
    latency_s: float | None  # the word's end to the speaker's silence; None: the story went on past WATCH_S


def stop_words(
    directory: Path, text: str = "stop", voices: Sequence[Voice] = MILD_CHILD_VOICES
) -> list[tuple[str, Path]]:
    """text said in each of voices, as (voice name, WAV file)."""
    return [(v.name, say(text, v, directory / f"{text.replace(' ', '_')}-{v.name}.wav")) for v in voices]


def run_trials(
    room: SoundRoom,
    state_dir: Path,
    count: int,
    echo_cancel: str,
    *extra: str,
    words: list[tuple[str, Path]] | None = None,
) -> tuple[list[Trial], str]:
    """count trials with one daemon (audio.echo_cancel = echo_cancel), each saying the next of words (default: a
    child-like "stop", stop_words()); the trials and the daemon's log."""
    board = ButtonBoard()
    words = words or stop_words(state_dir.parent)
    recorder = Recorder()
    robot = Daemon(
        room,
        state_dir,
        f"button.serial_port='{board.path}'",
        "engine.max_tokens=300",
        "engine.seed=9",
        "button.earcon=false",  # a press only starts the story: no chime for the room to hear
        f"audio.echo_cancel='{echo_cancel}'",
        *extra,
        verbosity="-vv",  # the listener's command-mode decisions, for a failure's post-mortem
    )
    trials = []
    try:
        robot.wait_until(lambda: any("listening on" in line for line in robot.stderr), 60, "listening")
        board.wait_for_led("LED IDLE", 10)
        for i in range(count):
            voice, word = words[i % len(words)]
            trials.append(Trial(voice, _one_trial(room, robot, board, recorder, word)))
    finally:
        robot.terminate()
        recorder.stop()
        board.close()
        (state_dir.parent / "daemon.log").write_text("".join(robot.stderr))  # for a failure's post-mortem
    return trials, "".join(robot.stderr)


def _one_trial(room: SoundRoom, robot: Daemon, board: ButtonBoard, recorder: Recorder, word: Path) -> float | None:
    speaking = len([line for _, line in board.leds if line == "LED SPEAKING"])
    start_story(board)
    deadline = time.monotonic() + 60
    while len([line for _, line in board.leds if line == "LED SPEAKING"]) <= speaking:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no story within 60 s; log: {''.join(robot.stderr)[-2000:]}")
        board.read_leds(0.05)
    if not recorder.wait_for_sound(15.0):
        raise TimeoutError("the story is not heard from the speaker")
    time.sleep(STOP_AFTER_S)
    began = time.monotonic()
    room.play_into_room(word)  # returns once the sound server has drained it, a while after the word's end
    said_end = began + _speech_end_s(word)
    latency_s = _silent_after(board, recorder, said_end)
    for _ in range(3 if latency_s is None else 0):  # not heard: the button stops it, for the next trial
        board.read_leds(0.05)
        if board.leds[-1][1] == "LED IDLE":
            break
        board.press()
        time.sleep(0.1)  # a press, not a bounce
        board.release()
        try:
            _wait_until_idle(board, 3)
            break
        except TimeoutError:
            continue
    _wait_until_idle(board, 10)
    time.sleep(1.0)  # the loopback's last echo gone before the next press listens
    return latency_s


def _speech_end_s(wav: Path) -> float:
    """Where the word in wav ends (its last loud 10 ms), in seconds from its start."""
    from audio.speech import read_wav

    samples = read_wav(wav.read_bytes()).samples
    frames = speech_frames(samples, frame_ms=10)
    return (int(np.flatnonzero(frames)[-1]) + 1) * 0.01 if frames.any() else len(samples) / 16000


def _wait_until_idle(board: ButtonBoard, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not board.leds or board.leds[-1][1] != "LED IDLE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"not idle within {timeout_s} s; LEDs {[line for _, line in board.leds]}")
        board.read_leds(0.05)


def _silent_after(board: ButtonBoard, recorder: Recorder, since: float) -> float | None:
    """The time from since to the robot going idle (its LED), when that comes within WATCH_S and the speaker is
    silent from then on (a pause between sentences is no stop: only the robot's state tells the two apart)."""
    idle_at: float | None = None
    deadline = since + WATCH_S
    while idle_at is None and time.monotonic() < deadline:
        board.read_leds(0.05)
        idle_at = next((at for at, line in board.leds if line == "LED IDLE" and at >= since), None)
    if idle_at is None:
        return None
    time.sleep(QUIET_S + 0.3)
    after = [c for at, c in list(recorder.chunks) if at > idle_at + 0.3]
    if any(len(c) and speech_frames(c, frame_ms=len(c) * 1000 // 16000 or 1).any() for c in after):
        return None  # idle, but the speaker still talks
    return max(0.0, idle_at - since)


def start_story(board: ButtonBoard) -> None:
    """A long press on the board: "continue the story" (a new one when there is none to continue)."""
    board.press()
    time.sleep(0.1)  # past the debounce time: each edge counts
    os.write(board.master, b"LONG\n")
    time.sleep(0.1)
    board.release()


def tell_stories(room: SoundRoom, state_dir: Path, count: int, *extra: str) -> tuple[int, str]:
    """count short stories told one after another by one daemon; how many were told, and its log."""
    board = ButtonBoard()
    robot = Daemon(
        room,
        state_dir,
        f"button.serial_port='{board.path}'",
        "button.earcon=false",
        *extra,
        verbosity="-vv",  # the listener's command-mode decisions, for a failure's post-mortem
    )
    told = 0
    try:
        robot.wait_until(lambda: any("listening on" in line for line in robot.stderr), 60, "listening")
        board.wait_for_led("LED IDLE", 10)
        for _ in range(count):
            speaking = len([line for _, line in board.leds if line == "LED SPEAKING"])
            start_story(board)
            deadline = time.monotonic() + 60
            while len([line for _, line in board.leds if line == "LED SPEAKING"]) <= speaking:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no story within 60 s; log: {''.join(robot.stderr)[-2000:]}")
                board.read_leds(0.05)
            _wait_until_idle(board, 120)
            told += 1
            time.sleep(1.0)  # the room quiet again: an echo heard now would start a story of its own
    finally:
        robot.terminate()
        board.close()
    return told, "".join(robot.stderr)
