"""The one child-process idiom: every child storybot runs (an engine, the pyttsx3 worker, flite per sentence) is
started in its own process group, has its stderr read into a bounded tail, is stopped with a grace period and then
its group killed, and its exit status is decoded into words through its program's exit table.

Standard library only and no storybot imports: audio/ uses it as well as engines/ (a leaf both may import), so
that neither stack loads anything of the other.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20
STDERR_LINE_CHARS = 500  # a longer line is cut: the tail is for a log line, not a transcript
STREAM_LIMIT_BYTES = 64 * 1024  # asyncio's default line limit for stdout and stderr
PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL


def describe_exit(returncode: int | None, exit_names: Mapping[int, str] | None = None) -> str:
    """An exit status in words, as a person reading a log needs it. returncode follows asyncio: negative for a
    signal. exit_names: the program's own exit table (status -> words)."""
    if returncode is None:
        return "is still running"
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = ", possibly out of memory" if sig == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    words = (exit_names or {}).get(returncode)
    return f"exited with status {returncode}" + (f" ({words})" if words else "")


class Child:
    """One child process. stdin and stdout are pipes unless told otherwise (None: /dev/null); stderr is always
    read, into `stderr_tail` and the debug log, so a chatty child never blocks on a full pipe."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: dict[str, str] | None = None,
        has_stdin: bool = True,
        has_stdout: bool = True,
        stdout_limit_bytes: int = STREAM_LIMIT_BYTES,
        exit_names: Mapping[int, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self._env = env
        self._has_stdin = has_stdin
        self._has_stdout = has_stdout
        self._stdout_limit_bytes = stdout_limit_bytes
        self._exit_names = exit_names
        self._proc: asyncio.subprocess.Process | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_task: asyncio.Task | None = None
        self._stopping: asyncio.Future | None = None  # the one stop in progress or done
        self.was_signalled_by_us = False  # stop() or kill() had to signal it: its death says nothing about memory

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=PIPE if self._has_stdin else DEVNULL,
            stdout=PIPE if self._has_stdout else DEVNULL,
            stderr=PIPE,
            env=self._env,
            start_new_session=True,  # its own process group, so that stopping it ends its helpers too
            limit=self._stdout_limit_bytes,
        )
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"{self.name}-stderr")

    # --- what it is --------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self._proc is not None and self._proc.stdin is not None, f"{self.name} has no stdin pipe"
        return self._proc.stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self._proc is not None and self._proc.stdout is not None, f"{self.name} has no stdout pipe"
        return self._proc.stdout

    @property
    def stderr_tail(self) -> str:
        """The last lines it wrote to stderr, joined for one log line."""
        return " | ".join(self._tail)

    def exit_words(self) -> str:
        """Its exit status in words ("exited with status 65 (bad model)", "was killed by SIGKILL, ...")."""
        return describe_exit(self.returncode, self._exit_names)

    # --- waiting and ending ---------------------------------------------------------------------------

    async def wait(self) -> int | None:
        """Until it ends (by itself, killed, or stopped); its exit status as asyncio gives it."""
        if self._proc is None:
            return None
        return await self._proc.wait()

    async def run_to_end(self, timeout_s: float) -> int:
        """Wait for a one-shot child to end within timeout_s; on the deadline (TimeoutError) or a cancellation its
        group is killed first. The exit status, with stderr read to its end."""
        assert self._proc is not None
        try:
            code = await asyncio.wait_for(self._proc.wait(), timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            await self.kill()
            raise
        await self._drain_stderr(1.0)
        return code

    async def stop(self, grace_s: float, ask: Callable[[], Awaitable[None]] | None = None) -> int | None:
        """Ask it to exit (`ask`, else closing its stdin), wait grace_s, then SIGTERM and SIGKILL its group, grace_s
        each. The exit status.

        Safe to call from several tasks at once (a stalled request and the supervisor that saw the exit): they
        share one stop, and cancelling one caller does not cancel the stop for the others."""
        if self._proc is None:
            return None
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s, ask))
        return await asyncio.shield(self._stopping)

    async def kill(self) -> int | None:
        """SIGKILL its group at once and reap it."""
        if self._proc is None:
            return None
        if self._proc.returncode is None:
            self.was_signalled_by_us = True
        self.kill_now()
        code = await self._proc.wait()
        await self._drain_stderr(0.5)
        return code

    def kill_now(self) -> None:
        """SIGKILL its group without waiting (a shutdown that has no time left)."""
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGKILL)

    async def _stop(self, grace_s: float, ask: Callable[[], Awaitable[None]] | None) -> int | None:
        proc = self._proc
        assert proc is not None
        if proc.returncode is None:
            await self._ask_to_exit(ask)
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    log.info("%s did not exit; sending %s", self.name, sig.name)
                    _signal_group(proc.pid, sig)
                    self.was_signalled_by_us = True
                try:
                    await asyncio.wait_for(proc.wait(), grace_s)
                    break
                except TimeoutError:
                    continue
        _signal_group(proc.pid, signal.SIGKILL)  # helpers it may have left behind in its group
        await self._drain_stderr(1.0)
        return proc.returncode

    async def _ask_to_exit(self, ask: Callable[[], Awaitable[None]] | None) -> None:
        try:
            if ask is not None:
                await ask()
            if self._proc is not None and self._proc.stdin is not None:
                self._proc.stdin.close()
        except (ConnectionError, RuntimeError, TimeoutError):
            pass  # it is gone or not listening: the signals come next

    async def _drain_stderr(self, timeout_s: float) -> None:
        """Let the stderr reader reach the end of the pipe (for the tail), then stop it."""
        if self._stderr_task is None:
            return
        await asyncio.wait([self._stderr_task], timeout=timeout_s)
        self._stderr_task.cancel()

    async def wait_for_stderr(self, timeout_s: float) -> None:
        """After its stdout ended: give its last words on stderr a moment to arrive in the tail."""
        if self._stderr_task is not None:
            await asyncio.wait([self._stderr_task], timeout=timeout_s)

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            try:
                line = await self._proc.stderr.readline()
            except ValueError:  # an over-long line: keep its start
                line = b"(over-long line)"
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()[:STDERR_LINE_CHARS]
            if text:
                self._tail.append(text)
                log.debug("%s: %s", self.name, text)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
