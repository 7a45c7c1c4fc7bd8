#!/usr/bin/env bash
# Set up everything the tests need (idempotent), then run the whole suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
