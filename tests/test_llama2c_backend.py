"""The robot tells stories through storybot-llama2c (engine.backend = "llama2c"), selected by configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import STORYBOT

ENGINE = os.path.join(os.path.dirname(sys.executable), "storybot-llama2c")


def _checkpoint(tmp_path, version: int = 2):
    model = tmp_path / "m.bin"
    subprocess.run(
        [sys.executable, "-m", "engines.llama2c_ref", "write", "--shape", "stories260K", "--version", str(version),
         "--seed", "1", "--tokenizer", str(tmp_path / "tokenizer.bin"), str(model)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return model


def _tell(tmp_path, model, *more: str) -> subprocess.CompletedProcess:
    args = ["--set", "engine.backend='llama2c'", "--set", f"engine.model='{model}'", "--set", "engine.max_tokens=60"]
    return subprocess.run(
        [STORYBOT, "tell", "a cat", "-v", "--wav", str(tmp_path / "s.wav"), "--timings-json",
         str(tmp_path / "t.json"), *args, *more],
        env={**os.environ, "STORYBOT_STATE_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("version", [0, 2])
def test_a_story_is_generated_by_the_native_engine(tmp_path, version):
    if not os.path.exists(ENGINE):
        pytest.fail(f"{ENGINE} is not installed: scripts/setup.sh builds it (make -C engines/llama2c install)")
    proc = _tell(tmp_path, _checkpoint(tmp_path, version))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "llama2c ready" in proc.stderr
    result = json.loads((tmp_path / "t.json").read_text())["results"][0]
    assert result["tokens"] > 0  # the engine generated them (random weights: the text is not a story)
    assert proc.stdout.splitlines()[0] == "Once upon a time, there was a cat."


def test_a_checkpoint_that_does_not_match_its_tokenizer_is_refused_before_any_spawn(tmp_path):
    model = _checkpoint(tmp_path)
    (tmp_path / "tokenizer.bin").write_bytes((tmp_path / "tokenizer.bin").read_bytes()[:100])  # truncated
    proc = _tell(tmp_path, model)
    assert proc.returncode == 65, proc.stderr[-2000:]  # told (canned), and the bad model reported
    assert "tokenizer.bin" in proc.stderr and "llama2c ready" not in proc.stderr
    assert proc.stdout.splitlines()[-1] == "And that is the end of the story."


def test_llama2c_without_a_checkpoint_is_reported(tmp_path):
    proc = subprocess.run(
        [STORYBOT, "tell", "a cat", "--wav", str(tmp_path / "s.wav"), "--set", "engine.backend='llama2c'"],
        env={**os.environ, "STORYBOT_STATE_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 78  # a configuration error, not a restart loop
    assert 'engine.model: required when engine.backend = "llama2c"' in proc.stderr
