"""Shared fixtures: real parts (virtual sound room, the default GGUF model, espeak-ng speech).

A test that needs a part this machine lacks skips with the reason, except under CI (CI=true), where the
project's set-up installs every part and a missing one is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
STORYBOT = str(Path(sys.executable).with_name("storybot"))


def need(condition: bool, reason: str) -> None:
    """Skip (or, under CI, fail) unless condition holds."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def default_model() -> str:
    from engines.models import ModelError, ensure_default_model

    try:
        return str(ensure_default_model())
    except ModelError as e:
        need(False, str(e))


@pytest.fixture(scope="session")
def espeak():
    """espeak(text, voice) -> 16 kHz mono int16 samples of espeak-ng saying text."""
    need(shutil.which("espeak-ng") is not None, "espeak-ng is not installed")

    def speak(text: str, voice: str = "en-us", tmp: Path | None = None) -> np.ndarray:
        from audio.speech import read_wav

        out = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
        return read_wav(out).resampled(16000).samples

    return speak


def write_wav(path: Path, samples: np.ndarray, rate_hz: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


class SoundRoom:
    """PulseAudio with two null sinks: `room` (what the robot hears) and `speaker` (what it says)."""

    def env(self) -> dict[str, str]:
        return {**os.environ, "PULSE_SOURCE": "room.monitor", "PULSE_SINK": "speaker"}

    def play_into_room(self, wav: Path) -> None:
        subprocess.run(["paplay", "-d", "room", str(wav)], check=True, timeout=60)

    def record_speaker(self, path: Path) -> subprocess.Popen:
        """Start recording speaker.monitor as raw 16 kHz mono s16le; returns the recorder process."""
        f = open(path, "wb")
        return subprocess.Popen(
            ["parec", "-d", "speaker.monitor", "--format=s16le", "--rate=16000", "--channels=1", "--latency-msec=20"],
            stdout=f,
        )


def _pactl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="session")
def sound_room() -> SoundRoom:
    need(shutil.which("pulseaudio") is not None and shutil.which("parec") is not None,
         "PulseAudio (pulseaudio, pulseaudio-utils) is not installed")
    if _pactl("info").returncode != 0:
        subprocess.run(
            ["pulseaudio", "-D", "--exit-idle-time=-1", "--system=false", "--disallow-exit", "-n",
             "--load=module-native-protocol-unix"],
            capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + 10
        while _pactl("info").returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    need(_pactl("info").returncode == 0, "the PulseAudio server does not start here")
    sinks = _pactl("list", "short", "sinks").stdout
    for name in ("room", "speaker"):
        if f"\t{name}\t" not in sinks:
            _pactl("load-module", "module-null-sink", f"sink_name={name}")
    return SoundRoom()


def speech_frames(raw: np.ndarray, rate_hz: int = 16000, frame_ms: int = 50, threshold: float = 300.0) -> np.ndarray:
    """Per-frame flags: True where the RMS of a frame is at speech level."""
    n = rate_hz * frame_ms // 1000
    frames = raw[: len(raw) // n * n].astype(np.float64).reshape(-1, n)
    return np.sqrt((frames**2).mean(axis=1)) > threshold
