"""The conformance suite (storybot engine-check): our two engines and the example engine pass every check; an
engine broken in any one way fails the check for that rule (and so the suite's exit status)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engines import llama2c_ref as R
from tests.conftest import PYTHON, ROOT, STORYBOT, need

CHECKS = (
    "handshake", "streaming", "documented fields", "unknown fields", "malformed frames", "seed", "stop strings",
    "cancel", "busy", "bad request", "shutdown", "shutdown mid-generation", "stdin closed",
    "exit on a bad command line", "exit with the model missing", "exit with the model empty",
)  # fmt: skip
EXAMPLE = ROOT / "examples" / "echo_engine.py"
BROKEN = ROOT / "tests" / "broken_engine.py"
LLAMA2C = (ROOT / ".venv" / "bin" / "storybot-llama2c", ROOT / "engines" / "llama2c" / "build" / "storybot-llama2c")


def engine_check(*args: str, timeout_s: float = 900) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Runs storybot engine-check; (exit status, {check: (PASS|FAIL|SKIP, detail)}, the whole output)."""
    proc = subprocess.run(
        [STORYBOT, "engine-check", *args], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
    )
    lines = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(PASS|FAIL|SKIP) ([^:]+): (.*)", line)
        if m:
            lines[m.group(2)] = (m.group(1), m.group(3))
    return proc.returncode, lines, proc.stdout + proc.stderr


def assert_all_pass(status: int, lines: dict, output: str) -> None:
    assert set(lines) == set(CHECKS), output
    failed = {name: detail for name, (verdict, detail) in lines.items() if verdict != "PASS"}
    assert not failed and status == 0, output


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("echo") / "words.txt"
    path.write_text("the little dragon drank warm tea and then slept under the old oak tree\n")
    return path


def test_the_example_engine_passes_every_check(words):
    imported = {  # the standard library only: a vendor's starting point, runnable without storybot
        (alias.name if isinstance(node, ast.Import) else node.module).split(".")[0]
        for node in ast.walk(ast.parse(EXAMPLE.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    assert_all_pass(*engine_check("--model", str(words), "--", PYTHON, str(EXAMPLE), "--model", str(words)))


def test_the_llamacpp_engine_passes_every_check(default_model):
    argv = [PYTHON, "-m", "engines.llamacpp_worker", "--model", default_model, "--threads", "2", "--context", "512"]
    assert_all_pass(*engine_check("--model", default_model, "--", *argv))


def test_the_llama2c_engine_passes_every_check(tmp_path):
    binary = next((b for b in LLAMA2C if b.exists()), None)
    need(binary is not None, "storybot-llama2c is not built (make -C engines/llama2c install BINDIR=.venv/bin)")
    weights = R.random_weights("stories260K", seed=1, shared_classifier=True, gain=1.5)
    model = tmp_path / "model.bin"
    R.write_checkpoint(model, weights, 2)
    R.write_tokenizer(tmp_path / "tokenizer.bin", R.small_vocab(weights.config.vocab_size))
    argv = [str(binary), str(model), "--serve", "-z", str(tmp_path / "tokenizer.bin"), "--context", "512"]
    assert_all_pass(*engine_check("--model", str(model), "--", *argv))


BROKEN_CASES = [
    ("ignores-cancel", "cancel", "did not end within"),
    ("slow-cancel", "cancel", "at most 200 ms"),
    ("wrong-handshake", "handshake", "missing field 'context_tokens'"),
    ("garbage", "streaming", "frame is not JSON"),
    ("crashes", "streaming", "killed by SIGABRT"),
    ("rejects-special", "documented fields", "unknown field(s) ['special']"),
    ("accepts-unknown", "unknown fields", "expected an error frame (code protocol), got token"),
    ("no-busy", "busy", "no answer to generate"),
    ("ignores-shutdown", "shutdown", "still running"),
    ("usage-is-2", "exit on a bad command line", "exited with status 2, expected 64"),
    ("seed-drifts", "seed", "seed 7 gave"),
]


@pytest.mark.parametrize("defect,check,why", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
def test_a_broken_engine_fails_the_check_for_its_defect(words, defect, check, why):
    argv = [PYTHON, str(BROKEN), defect, "--model", str(words)]
    status, lines, output = engine_check("--model", str(words), "--", *argv)
    assert status == 1, output
    verdict, detail = lines.get(check, ("missing", ""))
    assert verdict == "FAIL" and why in detail, output


def test_a_slow_load_fails_the_handshake_deadline(words):
    argv = [PYTHON, str(BROKEN), "slow-ready", "--model", str(words)]
    status, lines, output = engine_check("--ready-timeout-s", "1", "--", *argv)
    assert status == 1 and lines["handshake"][0] == "FAIL" and "within 1 s" in lines["handshake"][1], output
    assert lines["exit with the model missing"][0] == "SKIP", output  # no --model: not known which argument it is


def test_a_program_that_is_no_engine_fails(tmp_path):
    status, lines, output = engine_check("--", "/bin/echo", "hello")
    assert status == 1 and lines["handshake"][0] == "FAIL" and "not JSON" in lines["handshake"][1], output


def test_engine_check_without_a_command_line_is_a_usage_error():
    status, _, output = engine_check()
    assert status == 64 and "no engine command line" in output, output
