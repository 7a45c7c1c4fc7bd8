"""The type check (mypy, configured in pyproject.toml) that `make lint` and scripts/test.sh run: the packages pass
it, and a type error in code that uses them fails it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import PYTHON

ROOT = Path(__file__).resolve().parent.parent


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_robot_audio_and_engines_pass_the_type_check():
    done = _mypy()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    assert "no issues found" in done.stdout


def test_a_type_error_fails_the_check(tmp_path):
    snippet = (
        "from engines import protocol as p\n"
        "from robot.story.session import Sentence\n"
        "request = p.Request(prompt=1)\n"  # a number where the engine needs text
        "line = Sentence('Once upon a time.', is_story=True)\n"
        "line.text + 1\n"
    )
    user = tmp_path / "user_of_storybot.py"
    user.write_text(snippet)
    done = _mypy(str(user))
    assert done.returncode == 1, done.stdout
    assert 'Argument "prompt" to "Request" has incompatible type "int"; expected "str"' in done.stdout
    assert 'Unsupported operand types for + ("str" and "int")' in done.stdout


def test_the_test_command_runs_the_type_check_before_the_tests():
    lines = [line.strip() for line in (ROOT / "scripts" / "test.sh").read_text().splitlines()]
    assert "set -euo pipefail" in lines  # a failing step ends the run with its status
    check = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/mypy"))
    tests = next(i for i, line in enumerate(lines) if "pytest" in line and line.startswith("exec"))
    assert check < tests
    lint = (ROOT / "Makefile").read_text().split("lint:", 1)[1].split("\n\n", 1)[0]
    assert ".venv/bin/mypy" in lint
