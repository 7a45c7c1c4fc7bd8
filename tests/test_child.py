"""The one child-process idiom (engines/child.py) on real processes: its own group, a bounded stderr tail, a stop
with a grace period that ends the whole group, and exit statuses in words; and flite through it."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from audio.tts import FliteTts, Timeouts, TtsError
from engines.child import STDERR_TAIL_LINES, Child, describe_exit


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()  # a zombie is dead, only not yet reaped


def test_the_stderr_tail_keeps_the_last_lines_only():
    async def go() -> tuple[int | None, str]:
        child = Child(["sh", "-c", "for i in $(seq 1 100); do echo line $i >&2; done; exit 3"], name="chatty")
        await child.start()
        code = await child.run_to_end(10)
        return code, child.stderr_tail

    code, tail = run(go())
    lines = tail.split(" | ")
    assert code == 3
    assert len(lines) == STDERR_TAIL_LINES and lines[-1] == "line 100" and lines[0] == f"line {101 - STDERR_TAIL_LINES}"


def test_a_child_that_ends_on_end_of_input_is_not_signalled():
    async def go() -> tuple[int | None, bool, float]:
        child = Child(["cat"], name="cat")
        await child.start()
        started = time.monotonic()
        code = await child.stop(5.0)
        return code, child.was_signalled_by_us, time.monotonic() - started

    code, signalled, took_s = run(go())
    assert code == 0 and not signalled
    assert took_s < 4.0  # it did not wait out the grace period


def test_a_child_that_ignores_everything_is_killed_with_its_group_after_the_grace_periods(tmp_path):
    helper_pid = tmp_path / "helper.pid"
    script = f"trap '' TERM; sleep 600 & echo $! > {helper_pid}; while true; do sleep 0.05; done"

    async def go() -> tuple[int | None, str, bool, float]:
        child = Child(["sh", "-c", script], name="stubborn")
        await child.start()
        while not helper_pid.exists() or not helper_pid.read_text().strip():
            await asyncio.sleep(0.01)
        started = time.monotonic()
        code = await child.stop(0.3)
        return code, child.exit_words(), child.was_signalled_by_us, time.monotonic() - started

    code, words, signalled, took_s = run(go())
    assert code == -9 and signalled
    assert words == "was killed by SIGKILL, possibly out of memory"
    assert 0.5 <= took_s < 5.0  # end of input, then TERM (ignored), then KILL: two grace periods at least
    helper = int(helper_pid.read_text())
    deadline = time.monotonic() + 5
    while _is_alive(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _is_alive(helper), "the helper left in the child's group survived its stop"


def test_several_stops_share_one():
    async def go() -> list[int | None]:
        child = Child(["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"], name="shared")
        await child.start()
        return list(await asyncio.gather(child.stop(0.2), child.stop(0.2), child.stop(0.2)))

    assert run(go()) == [-9, -9, -9]


def test_a_one_shot_child_past_its_deadline_is_killed():
    async def go() -> tuple[int | None, float]:
        child = Child(["sleep", "60"], name="sleeper", has_stdin=False, has_stdout=False)
        await child.start()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await child.run_to_end(0.3)
        return child.returncode, time.monotonic() - started

    code, took_s = run(go())
    assert code == -9 and took_s < 3.0


def test_exit_statuses_are_decoded_through_the_programs_table():
    table = {65: "bad model"}
    assert describe_exit(65, table) == "exited with status 65 (bad model)"
    assert describe_exit(66, table) == "exited with status 66"
    assert describe_exit(-15) == "was killed by SIGTERM"
    assert describe_exit(None) == "is still running"


def test_a_failing_flite_is_reported_with_its_exit_and_its_last_words(tmp_path):
    """A fake flite that fails: the real one cannot be made to fail on demand."""
    fake = tmp_path / "flite"
    fake.write_text("#!/bin/sh\necho 'flite: unknown voice' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    tts = FliteTts("", Timeouts(5, 0.01), binary=str(fake), spawn=Child)
    with pytest.raises(TtsError, match=r"^flite: exited with status 3: flite: unknown voice$"):
        run(tts.synthesize("Once upon a time."))
