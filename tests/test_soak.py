"""The soak (scripts/soak.py): 50 stories through the button board with seeded faults, then leak checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _kill_daemons_of(state_dir) -> None:
    """The soak's daemon runs in a session of its own: end it (by its state directory) when the soak is cut short."""
    import os
    import signal
    from pathlib import Path

    marker = f"STORYBOT_STATE_DIR={state_dir}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and any(v.startswith(marker) for v in (proc / "environ").read_bytes().split(b"\0")):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.mark.soundroom
@pytest.mark.timeout(600)  # the soak itself takes about 5 minutes
def test_fifty_stories_with_faults_leak_nothing(sound_room, default_model, tmp_path):
    out = tmp_path / "soak.json"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "soak.py"),
                "--stories",
                "50",
                "--seed",
                "1",
                "--max-tokens",
                "24",
                "--json",
                str(out),
                "--state-dir",
                str(tmp_path / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=480,
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the soak took over 8 minutes; output so far: {(e.stdout or b'')[-3000:]!r}")
    finally:
        _kill_daemons_of(tmp_path / "run")
    assert out.exists(), f"no summary (exit {proc.returncode}): {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    s = json.loads(out.read_text())
    where = f"summary (a late story carries its log): {json.dumps(s, indent=1)}\nstderr tail: {proc.stderr[-3000:]}"
    assert s["told"] == 50, where
    assert s["daemon_pid_unchanged"], where
    assert s["failed_stories"] == [], where
    # at most one of each kind: the engine, the TTS worker, and the recognizer's own process (echo canceller on)
    kinds = ("llamacpp_worker", "pyttsx3_worker", "audio.asr_process")
    assert all(sum(kind in c for c in s["children"]) <= 1 for kind in kinds), where
    assert all(any(kind in c for kind in kinds) for c in s["children"]), where
    assert s["fd_drift"] <= 2, where  # fewer descriptors at the end is no leak
    assert s["rss_growth_kb"] < 5 * 1024, where
    assert s["tracebacks"] == 0, where
    assert sum(n for f, n in s["faults"].items() if f != "none") >= 15, where  # the faults really happened
    assert proc.returncode == 0, where
