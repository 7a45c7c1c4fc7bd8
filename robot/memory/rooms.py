"""Rooms of a board's size on a bigger machine: cgroup v1 children that hold their processes to a memory limit
with no swap (and, for the CPU, to a share of one core). scripts/bench_boards.py tells stories in them and
tests/test_memory.py runs the daemon's voice rounds in them; both need root and the v1 controllers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
CPU_ROOT = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 100_000
REMOVE_TRIES = 50  # a cgroup can be removed only a moment after its last process is gone
REMOVE_WAIT_S = 0.1


def own_cgroup(controller: str, root: Path) -> Path:
    """This process's cgroup directory under a v1 controller mounted at root (root when it is in none)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return root / path.lstrip("/")
    return root


def make_memory_room(name: str, limit_bytes: int) -> Path:
    """A memory child of our own cgroup: limit_bytes of RAM and page cache, no swap (memory + swap may not exceed
    the limit where the kernel counts swap, and swappiness 0)."""
    path = own_cgroup("memory", MEMORY_ROOT) / name
    path.mkdir()
    try:
        (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        swap_limit = path / "memory.memsw.limit_in_bytes"
        if swap_limit.exists():
            swap_limit.write_text(str(limit_bytes))
        (path / "memory.swappiness").write_text("0")
    except OSError:
        path.rmdir()  # empty still: no room is left behind half made
        raise
    return path


def make_cpu_room(name: str, core_fraction: float) -> Path:
    """A cpu child of our own cgroup whose processes together get core_fraction of one core (CFS quota)."""
    path = own_cgroup("cpu", CPU_ROOT) / name
    path.mkdir()
    try:
        (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(max(1000, int(CFS_PERIOD_US * core_fraction))))
    except OSError:
        path.rmdir()
        raise
    return path


def remove_cgroup(path: Path) -> None:
    """Kill what is left in it and remove it."""
    for _ in range(REMOVE_TRIES):
        for pid in (path / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(REMOVE_WAIT_S)


def oom_kills(path: Path) -> int:
    """How many processes the kernel has OOM-killed in a memory cgroup."""
    fields = dict(line.split() for line in (path / "memory.oom_control").read_text().splitlines())
    return int(fields.get("oom_kill", 0))
