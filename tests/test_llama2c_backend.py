"""The robot tells stories through storybot-llama2c (engine.backend = "llama2c"), selected by configuration."""

from __future__ import annotations

import json
import os
import struct
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


def _tell(tmp_path, model, *more: str, request: str = "a cat") -> subprocess.CompletedProcess:
    args = ["--set", "engine.backend='llama2c'", "--set", f"engine.model='{model}'", "--set", "engine.max_tokens=60"]
    return subprocess.run(
        [STORYBOT, "tell", request, "-v", "--wav", str(tmp_path / "s.wav"), "--timings-json",
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


def test_llama2c_with_a_missing_checkpoint_is_reported(tmp_path):
    """(engine.model "" is the default model, SmolLM2 v3: tests/test_default_model.py.)"""
    proc = subprocess.run(
        [STORYBOT, "tell", "a cat", "--wav", str(tmp_path / "s.wav"), "--set", "engine.backend='llama2c'",
         "--set", f"engine.model='{tmp_path / 'absent.bin'}'"],
        env={**os.environ, "STORYBOT_STATE_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 78  # a configuration error, not a restart loop
    assert "engine.model" in proc.stderr and "absent.bin: no such file" in proc.stderr


# The daemon's own check of a v0-v2 checkpoint and its tokenizer (engines/backends/llama2c.py: struct, no numpy)
# against the reference's (engines.llama2c_ref, the contract's checker): the same files pass, the same fail.


def _put(offset: int, fmt: str, value):
    def edit(data: bytes) -> bytes:
        b = bytearray(data)
        struct.pack_into(fmt, b, offset, value)
        return bytes(b)

    return edit


CHECKPOINT_EDITS = {
    "as written": lambda d: d,
    "truncated": lambda d: d[:-1],
    "a trailing byte": lambda d: d + b"\0",
    "group size 0": _put(37, "<i", 0),
    "group size not dividing the tensors": _put(37, "<i", 48),
    "odd head size": _put(8, "<i", 72),  # dim 72 over 8 heads: 9
    "shared flag 7": _put(36, "<B", 7),
    "vocab 0": _put(28, "<i", 0),
    "version 9": _put(4, "<i", 9),
}
TOKENIZER_EDITS = {
    "as written": lambda d: d,
    "truncated": lambda d: d[:-3],
    "a trailing byte": lambda d: d + b"x",
    "max_token_length 0": _put(0, "<i", 0),
    "a token longer than max_token_length": _put(8, "<i", 1 << 20),
}


@pytest.mark.parametrize("edit", CHECKPOINT_EDITS)
def test_the_daemons_checkpoint_check_agrees_with_the_reference(tmp_path, edit):
    from engines import llama2c_ref as ref
    from engines.backends import llama2c

    model = _checkpoint(tmp_path)
    model.write_bytes(CHECKPOINT_EDITS[edit](model.read_bytes()))
    try:
        ref.check_checkpoint(model)
        ref_ok = True
    except ref.FormatError:
        ref_ok = False
    try:
        llama2c.check_header(str(model))
        ours_ok = True
    except llama2c.ModelFileError as e:
        ours_ok = False
        assert str(model) in str(e)
    assert ours_ok == ref_ok == (edit == "as written")


@pytest.mark.parametrize("edit", TOKENIZER_EDITS)
def test_the_daemons_tokenizer_check_agrees_with_the_reference(tmp_path, edit):
    from engines import llama2c_ref as ref
    from engines.backends import llama2c

    _checkpoint(tmp_path)
    tok = tmp_path / "tokenizer.bin"
    tok.write_bytes(TOKENIZER_EDITS[edit](tok.read_bytes()))
    vocab = ref.SHAPES["stories260K"].vocab_size
    try:
        ref.check_tokenizer(tok, vocab)
        ref_ok = True
    except ref.FormatError:
        ref_ok = False
    try:
        llama2c.validate_tokenizer(str(tok), vocab)
        ours_ok = True
    except llama2c.ModelFileError as e:
        ours_ok = False
        assert str(tok) in str(e)
    assert ours_ok == ref_ok == (edit == "as written")


def test_the_daemons_model_check_loads_neither_numpy_nor_the_reference(tmp_path):
    model = _checkpoint(tmp_path)
    probe = (
        "import sys\n"
        "from engines.backends.llama2c import BACKEND\n"
        "class S: backend='llama2c'; model=sys.argv[1]; tokenizer=''; command=(); threads=1; context_tokens=64\n"
        "checked = BACKEND.check_model(S())\n"
        "print(checked.extra_args[0], sorted(m for m in ('numpy', 'engines.llama2c_ref', 'engines.models')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(model)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["-z", "[]"]


def test_a_prompt_too_long_for_a_small_context_is_cut_to_fit_and_the_story_still_told(tmp_path):
    """A tokenizer that spends a token on every byte (the reference's random one) fills a 64-token context with the
    opening alone: the engine refuses that prompt, and the daemon asks again with the prompt's tail until it fits,
    instead of giving up on the story."""
    if not os.path.exists(ENGINE):
        pytest.fail(f"{ENGINE} is not installed: scripts/setup.sh builds it (make -C engines/llama2c install)")
    request = "a story about a small grey cat who could not find her way home from the moon over the tall dark hills"
    proc = _tell(tmp_path, _checkpoint(tmp_path), "--set", "engine.context_tokens=64", request=request)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the engine refused the prompt (prompt is " in proc.stderr, proc.stderr[-2000:]  # the long one was asked
    result = json.loads((tmp_path / "t.json").read_text())["results"][0]
    assert result["outcome"] == "finished" and result["tokens"] > 0, result
