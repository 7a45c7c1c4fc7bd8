#!/usr/bin/env python3
"""Benchmark: the CPU the daemon spends listening to a silent room.

Starts `storybot run` in the virtual sound room (PulseAudio null sinks; the robot hears room.monitor, where
nothing plays), waits until it is listening, then reads the daemon's CPU time (utime + stime, /proc/PID/stat)
and its voluntary context switches (wake-ups) over the window. Its children (the engine) are counted apart.

Usage: .venv/bin/python scripts/bench_idle.py [--seconds 60] [--runs 1] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.soundroom import SoundRoom  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of the process (each one a wake-up after a wait)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU nanoseconds of each thread by name (/proc/PID/task/TID/schedstat: exact, not sampled by ticks)."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue
        key = "main" if task.name == str(pid) else name
        out[key] = out.get(key, 0) + ns
    return out


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def one_run(room: SoundRoom, seconds: float, overrides: list[str]) -> dict:
    storybot = str(Path(sys.executable).with_name("storybot"))
    args = [storybot, "run", "-v"] + [a for o in overrides for a in ("--set", o)]
    with tempfile.TemporaryDirectory() as state:
        robot = subprocess.Popen(
            args,
            env={**room.env(), "STORYBOT_STATE_DIR": state},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(robot.stderr.readline, "")), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 120
            while not any("listening on" in line for line in lines):
                if time.monotonic() > deadline or robot.poll() is not None:
                    raise SystemExit("storybot run did not start listening:\n" + "".join(lines)[-3000:])
                time.sleep(0.1)
            time.sleep(3.0)  # let the start-up settle (engine load, first blocks)
            kids = children(robot.pid)
            cpu0, wake0, threads0 = cpu_s(robot.pid), wakeups(robot.pid), thread_cpu_ns(robot.pid)
            kids0 = sum(cpu_s(k) for k in kids)
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            cpu1, wake1, threads1 = cpu_s(robot.pid), wakeups(robot.pid), thread_cpu_ns(robot.pid)
            kids1 = sum(cpu_s(k) for k in kids if Path(f"/proc/{k}").exists())
        finally:
            robot.terminate()
            try:
                robot.wait(15)
            except subprocess.TimeoutExpired:
                robot.kill()
    return {
        "cpu_s_per_min": (cpu1 - cpu0) * 60 / elapsed,
        "core_pct": 100 * (cpu1 - cpu0) / elapsed,
        "wakeups_per_s": (wake1 - wake0) / elapsed,
        "children_cpu_s_per_min": (kids1 - kids0) * 60 / elapsed,
        "threads_pct": {k: 100 * (v - threads0.get(k, 0)) / 1e9 / elapsed for k, v in threads1.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    room = SoundRoom.start()
    for run in range(args.runs):
        r = one_run(room, args.seconds, args.overrides)
        print(
            f"run {run + 1}: idle listening {r['cpu_s_per_min']:.2f} CPU s per minute = {r['core_pct']:.2f}% of a core, "
            f"{r['wakeups_per_s']:.0f} wake-ups/s; engine and other children {r['children_cpu_s_per_min']:.2f} CPU s/min"
        )
        busy = sorted(r["threads_pct"].items(), key=lambda kv: -kv[1])
        print("  by thread (% of a core): " + ", ".join(f"{name} {pct:.2f}" for name, pct in busy if pct >= 0.005))
    return 0


if __name__ == "__main__":
    sys.exit(main())
