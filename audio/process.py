"""The port through which audio/ runs its children (flite or espeak-ng per sentence, the pyttsx3 worker, aplay).

audio/ and engines/ never import each other, yet both need the one child-process idiom (its own process group, a
stderr tail, a decoded exit, stop with a deadline then kill the group). The idiom lives in engines.child; audio/
states here only what it needs of a child, and whoever builds a synthesizer or a speaker (robot's supervisor,
a test) hands it the class as `spawn`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol


class ChildProcess(Protocol):
    """One started-or-not child: what audio/ calls on it."""

    @property
    def is_running(self) -> bool: ...

    @property
    def stdin(self) -> asyncio.StreamWriter: ...

    @property
    def stdout(self) -> asyncio.StreamReader: ...

    @property
    def stderr_tail(self) -> str: ...

    def exit_words(self) -> str: ...

    async def start(self) -> None: ...

    async def wait(self) -> int | None: ...

    async def wait_for_stderr(self, timeout_s: float) -> None: ...

    async def run_to_end(self, timeout_s: float) -> int: ...

    async def stop(self, grace_s: float) -> int | None: ...

    async def kill(self) -> int | None: ...

    def kill_now(self) -> None: ...


class SpawnChild(Protocol):
    """Makes a child for argv (not started yet): engines.child.Child fits."""

    def __call__(
        self, argv: Sequence[str], *, name: str, has_stdin: bool = True, has_stdout: bool = True
    ) -> ChildProcess: ...
