"""The command line as a user meets it: help, a story to a WAV file, errors that say what to do."""

from __future__ import annotations

import json
import subprocess
import wave

import numpy as np
import pytest

from tests.conftest import STORYBOT, speech_frames


def storybot(*args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STORYBOT, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env
    )


@pytest.mark.parametrize(
    "command,phrases",
    [
        ([], ["tell", "listen", "run", "devices", "exit status", "78 configuration error"]),
        (["tell"], ["--wav", "--set", "--config", "typed request", "WAV"]),
        (["listen"], ["as long as it", "--wav"]),
        (["run"], ["Enter", "push-to-talk", "SIGTERM"]),
        (["devices"], ["PortAudio"]),
    ],
)
def test_every_command_has_useful_help(command, phrases):
    proc = storybot(*command, "--help")
    assert proc.returncode == 0
    for phrase in phrases:
        assert phrase in proc.stdout, f"{phrase!r} missing from {' '.join(command)} --help"


def test_tell_writes_the_story_to_a_wav_printing_each_sentence(tmp_path, default_model):
    wav = tmp_path / "story.wav"
    timings = tmp_path / "t.json"
    proc = storybot(
        "tell",
        "tell me a story about a dragon who loves tea",
        "--wav",
        str(wav),
        "--timings-json",
        str(timings),
        "--set",
        "engine.max_tokens=60",
        "--set",
        "engine.seed=11",
    )
    assert proc.returncode == 0, proc.stderr
    sentences = proc.stdout.splitlines()
    assert sentences[0] == "Once upon a time, there was a dragon who loved tea."
    assert len(sentences) >= 2 and all(s.strip() for s in sentences)
    assert "timings:" in proc.stderr and "tok/s" in proc.stderr
    with wave.open(str(wav)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        rate = w.getframerate()
    assert rate == 22050
    assert speech_frames(samples, rate_hz=rate).sum() * 0.05 >= 4.0  # seconds of speech
    record = json.loads(timings.read_text())
    result = record["results"][0]
    assert result["sentences"] == sentences
    assert result["tokens"] > 0 and result["tokens_per_s"] > 0
    assert record["engine_peak_rss_kb"] > 10_000 and record["daemon_peak_rss_kb"] > 10_000


def test_with_no_sound_server_the_story_goes_to_the_fallback_wav(tmp_path, default_model):
    # ALSA's default device goes to a PulseAudio server that is not there: a board with no working speaker
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PULSE_SERVER": "unix:/nonexistent",
        "STORYBOT_MODELS_DIR": str(default_model).rsplit("/", 1)[0],
    }
    fallback = tmp_path / "out.wav"
    proc = storybot(
        "tell", "a bear", "--set", f"audio.wav_fallback='{fallback}'", "--set", "engine.max_tokens=16", env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "writing speech to" in proc.stderr
    assert fallback.stat().st_size > 44_000


def test_tell_with_a_corrupt_model_says_why_and_exits_65(tmp_path):
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 100)
    proc = storybot("tell", "a bear", "--wav", str(tmp_path / "x.wav"), "--set", f"engine.model='{model}'")
    assert proc.returncode == 65, proc.stderr
    assert "model rejected" in proc.stderr and "holds no tensors" in proc.stderr and str(model) in proc.stderr


def test_listen_on_a_board_without_microphone_is_a_configuration_error():
    proc = storybot("listen", "--set", "asr.backend=none", timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert 'storybot listen needs a microphone (asr.backend = "none")' in proc.stderr
