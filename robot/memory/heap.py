"""Giving the C heap's free pages back to the kernel.

Start-up reads and unmarshals a few hundred modules and files; glibc keeps the heap pages they were freed into,
about 3 MiB that a 64 MiB board needs for the engine's weights. glibc's malloc_trim(0) returns every free page;
other C libraries (musl, on buildroot boards) give memory back on their own and have no such call.

glibc also gives each thread that allocates its own arena (up to 8 per core), and an arena's scattered live
blocks keep its pages resident. The daemon's threads come and go (a PortAudio thread per output stream, a waiter
per child process, a thread pool), and in the soak (scripts/soak.py, 50 stories) each restart of the TTS worker left
about 1.5 MiB more resident: 5.7 MiB of growth after story 5, against 2.4 MiB, flat after story 23, with two
arenas. limit_heap_arenas caps them for the daemon's life.
"""

from __future__ import annotations


def release_free_heap() -> bool:
    """malloc_trim(0) where the C library has it; whether it did."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return False
    trim(0)
    return True


M_ARENA_MAX = -8  # glibc's mallopt parameter
HEAP_ARENAS = 2  # the main thread's and one for every other thread


def limit_heap_arenas(count: int = HEAP_ARENAS) -> bool:
    """At most count malloc arenas from now on (threads started later share them), where the C library is glibc;
    whether it took."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, count))


TRIM_INTERVAL_S = 2.0


async def keep_heap_trimmed(interval_s: float = TRIM_INTERVAL_S) -> None:
    """release_free_heap every interval_s: each sentence's speech passes through the daemon as a few copies of
    its PCM (hundreds of KiB), which glibc keeps as free heap once they are freed. A trim of a heap this small
    takes well under a millisecond."""
    import asyncio  # here, not at the top: robot/cli.py imports this module before it keeps ssl out of asyncio

    if not release_free_heap():
        return
    while True:
        await asyncio.sleep(interval_s)
        release_free_heap()
