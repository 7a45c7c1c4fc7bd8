"""Shared fixtures: real parts (virtual sound room, the default models, espeak-ng speech).

A test that needs a part this machine lacks skips with the reason, except under CI (CI=true), where the
project's set-up installs every part and a missing one is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.soundroom import SoundRoom, SoundRoomError, speech_frames  # noqa: F401  (speech_frames for tests)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
STORYBOT = str(Path(sys.executable).with_name("storybot"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets its own PulseAudio server (its own sound room), so that real-time
    sound tests can run side by side without hearing each other."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    base = os.environ.get("PULSE_RUNTIME_PATH") or str(Path(tempfile.gettempdir()) / "storybot-pulse")
    runtime = Path(f"{base.rstrip('/')}-{worker}")
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["PULSE_RUNTIME_PATH"] = str(runtime)


def need(condition: bool, reason: str) -> None:
    """Skip (or, under CI, fail) unless condition holds."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def default_model() -> str:
    """Gemma 3 270M, the GGUF llama.cpp runs when engine.backend = "llama.cpp" and engine.model is ""."""
    from engines.models import ModelError, ensure_default_model

    try:
        return str(ensure_default_model("llama.cpp"))
    except ModelError as e:
        need(False, str(e))


@pytest.fixture(scope="session")
def smollm2_model() -> str:
    """The default model: SmolLM2-135M-Instruct converted to v3 for storybot-llama2c (set-up makes it)."""
    from engines.models import ModelError, ensure_default_model

    try:
        return str(ensure_default_model("llama2c"))
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


@pytest.fixture(scope="session")
def sound_room() -> SoundRoom:
    need(
        shutil.which("pulseaudio") is not None and shutil.which("parec") is not None,
        "PulseAudio (pulseaudio, pulseaudio-utils) is not installed",
    )
    try:
        return SoundRoom.start()
    except SoundRoomError as e:
        need(False, str(e))


@pytest.fixture(scope="session")
def voices_dir(tmp_path_factory) -> Path:
    """Where sayings in tests/voices.py's voices are made once (tests/spoken_requests.py samples)."""
    from tests.voices import missing_tools

    need(missing_tools() is None, str(missing_tools()))
    return tmp_path_factory.mktemp("voices")
