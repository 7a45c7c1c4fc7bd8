"""Giving the C heap's free pages back to the kernel.

Start-up reads and unmarshals a few hundred modules and files; glibc keeps the heap pages they were freed into,
about 3 MiB that a 64 MiB board needs for the engine's weights. glibc's malloc_trim(0) returns every free page;
other C libraries (musl, on buildroot boards) give memory back on their own and have no such call.
"""

from __future__ import annotations

import asyncio


def release_free_heap() -> bool:
    """malloc_trim(0) where the C library has it; whether it did."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return False
    trim(0)
    return True


TRIM_INTERVAL_S = 2.0


async def keep_heap_trimmed(interval_s: float = TRIM_INTERVAL_S) -> None:
    """release_free_heap every interval_s: each sentence's speech passes through the daemon as a few copies of
    its PCM (hundreds of KiB), which glibc keeps as free heap once they are freed. A trim of a heap this small
    takes well under a millisecond."""
    if not release_free_heap():
        return
    while True:
        await asyncio.sleep(interval_s)
        release_free_heap()
