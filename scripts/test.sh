#!/usr/bin/env bash
# Set up everything the tests need (idempotent), then run the whole suite. CI runs exactly this.
# The suite runs on STORYBOT_TEST_WORKERS pytest-xdist workers (default 2), each with its own PulseAudio
# server (tests/conftest.py), since most of its time is real-time sound; STORYBOT_TEST_WORKERS=1 runs it serially.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/mypy  # the type check (configured in pyproject.toml): a type error fails the run before any test
workers="${STORYBOT_TEST_WORKERS:-2}"
parallel=()
[ "$workers" -gt 1 ] && parallel=(-n "$workers" --dist loadfile)
exec .venv/bin/python -m pytest "${parallel[@]}" "$@"
