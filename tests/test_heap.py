"""robot/memory/heap.py on the real C library: the arena cap holds for threads that allocate at once."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Eight threads each hold a block from malloc at the same moment; glibc's malloc_stats() then prints one
# "Arena N:" paragraph per arena on stderr.
PROGRAM = """
import ctypes, sys, threading
from robot.memory.heap import limit_heap_arenas
if sys.argv[1] == "limit":
    assert limit_heap_arenas(2)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
held, barrier = [], threading.Barrier(8)
def work():
    held.append(libc.malloc(4096))
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
libc.malloc_stats()
"""


def _arenas(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the arena cap is glibc's (mallopt M_ARENA_MAX)")
def test_threads_share_the_capped_arenas():
    assert _arenas("limit") <= 2
    assert _arenas("free") > 2  # the same threads without the cap: glibc's own limit is 8 per core
