#!/usr/bin/env bash
# Set up (idempotent) and tell one story on the embedded default model, to the speaker or to storybot-story.wav.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/storybot tell "${1:-a dragon who loves tea}"
