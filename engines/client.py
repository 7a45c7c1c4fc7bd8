"""The parent side of the engine protocol: spawn an engine, stream a generation, cancel it, stop it."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
from collections.abc import AsyncIterator, Sequence

from engines import protocol as p

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20


class EngineError(RuntimeError):
    """The engine answered with an error frame, broke the protocol, or stalled."""

    def __init__(self, code: p.ErrorCode | str, message: str) -> None:
        super().__init__(f"{code.value if isinstance(code, p.ErrorCode) else code}: {message}")
        self.code = code
        self.message = message


class EngineExited(EngineError):
    """The engine process ended. `returncode` follows asyncio: negative for a signal."""

    def __init__(self, returncode: int | None, stderr_tail: str) -> None:
        words = describe_exit(returncode)
        super().__init__("exited", f"engine {words}" + (f"; it said: {stderr_tail}" if stderr_tail else ""))
        self.returncode = returncode

    @property
    def is_permanent(self) -> bool:
        """True when starting the engine again with the same model and arguments cannot help."""
        try:
            return self.returncode is not None and p.ExitCode(self.returncode).is_permanent
        except ValueError:
            return False


class EngineStalled(EngineError):
    def __init__(self, what: str, timeout_s: float) -> None:
        super().__init__("stalled", f"no {what} within {timeout_s:g} s")


def describe_exit(returncode: int | None) -> str:
    """An exit status in words, as a person reading a log needs it."""
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
    try:
        return f"exited with status {returncode} ({p.ExitCode(returncode).name.lower().replace('_', ' ')})"
    except ValueError:
        return f"exited with status {returncode}"


class EngineClient:
    """One engine child process. Not shared between concurrent generations: the protocol runs one at a time."""

    def __init__(self, argv: Sequence[str], *, name: str = "engine", env: dict[str, str] | None = None) -> None:
        self._argv = list(argv)
        self._name = name
        self._env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_task: asyncio.Task | None = None
        self._next_id = 1
        self.ready: p.Ready | None = None
        self.chat_template = ""  # set by whoever knows the model: prompts for it are wrapped in this template
        self._stopping: asyncio.Future | None = None  # the one stop in progress or done
        self.was_killed_by_us = False  # stop() had to signal it: its death says nothing about memory

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def wait_exit(self) -> int | None:
        """Until the engine process ends (by itself, killed, or stopped); its exit status as asyncio gives it."""
        if self._proc is None:
            return None
        return await self._proc.wait()

    async def start(self, timeout_s: float) -> p.Ready:
        """Spawn the engine and wait for its Ready frame."""
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            start_new_session=True,  # its own process group, so that stop() ends helpers too
            limit=p.MAX_FRAME_BYTES + 1,
        )
        self._stderr_task = asyncio.create_task(self._log_stderr(), name=f"{self._name}-stderr")
        try:
            frame = await self._read_frame(timeout_s, "ready frame")
        except BaseException:
            await self.stop(0.5)
            raise
        if not isinstance(frame, p.Ready):
            await self.stop(0.5)
            raise EngineError(p.ErrorCode.PROTOCOL, f"expected a ready frame, got {frame.TYPE}")
        self.ready = frame
        log.info(
            "%s ready: %s, context %d, loaded in %.0f ms", self._name, frame.model, frame.context_tokens, frame.load_ms
        )
        return frame

    async def generate(
        self, request_fields: dict, *, first_token_timeout_s: float, token_timeout_s: float
    ) -> AsyncIterator[p.Token | p.Done]:
        """Send one generate request and yield its Token frames and then its Done frame.

        Leaving the iteration early (break, exception, task cancellation) cancels the generation in the engine.
        """
        request = p.Generate(id=self._take_id(), **request_fields)
        await self._send(request)
        is_finished = False
        try:
            timeout_s, what = first_token_timeout_s, "first token"
            while True:
                frame = await self._read_frame(timeout_s, what)
                timeout_s, what = token_timeout_s, "next token"
                if isinstance(frame, p.Error):
                    if frame.id in (request.id, -1):
                        is_finished = frame.id == request.id
                        raise EngineError(frame.code, frame.message)
                    continue
                if getattr(frame, "id", None) != request.id:
                    continue  # a late frame of an earlier, cancelled generation
                if isinstance(frame, p.Done):
                    is_finished = True
                    yield frame
                    return
                if isinstance(frame, p.Token):
                    yield frame
        finally:
            if not is_finished and self.is_running:
                await self._cancel_quietly(request.id)

    async def _cancel_quietly(self, request_id: int) -> None:
        try:
            await self._send(p.Cancel(id=request_id))
        except (ConnectionError, EngineError):
            pass

    async def stop(self, timeout_s: float = 2.0) -> int | None:
        """Ask the engine to exit, then terminate and kill its process group. Returns the exit status.

        Safe to call from several tasks at once (a stalled generation and the supervisor that saw the exit): they
        share one stop, and cancelling one caller does not cancel the stop for the others."""
        if self._proc is None:
            return None
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(timeout_s))
        return await asyncio.shield(self._stopping)

    async def _stop(self, timeout_s: float) -> int | None:
        proc = self._proc
        assert proc is not None
        if proc.returncode is None:
            try:
                await self._send(p.Shutdown())
                proc.stdin.close()
            except (ConnectionError, EngineError):
                pass
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    log.info("%s did not exit; sending %s", self._name, sig.name)
                    _signal_group(proc.pid, sig)
                    self.was_killed_by_us = True
                try:
                    await asyncio.wait_for(proc.wait(), timeout_s)
                    break
                except TimeoutError:
                    continue
        _signal_group(proc.pid, signal.SIGKILL)  # helpers the engine may have left behind in its group
        if self._stderr_task:
            await asyncio.wait([self._stderr_task], timeout=1.0)
            self._stderr_task.cancel()
        return proc.returncode

    def _take_id(self) -> int:
        request_id, self._next_id = self._next_id, self._next_id + 1
        return request_id

    async def _send(self, frame: p.Frame) -> None:
        if not self.is_running or self._proc.stdin is None:
            raise EngineError("exited", "engine is not running")
        self._proc.stdin.write(p.encode(frame))
        try:
            await asyncio.wait_for(self._proc.stdin.drain(), 5.0)
        except TimeoutError:
            raise EngineStalled("read of our request", 5.0) from None

    async def _read_frame(self, timeout_s: float, what: str) -> p.Frame:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout_s)
        except TimeoutError:
            await self.stop(0.5)
            raise EngineStalled(what, timeout_s) from None
        except (ValueError, asyncio.LimitOverrunError):
            await self.stop(0.5)
            raise EngineError(p.ErrorCode.PROTOCOL, f"engine sent a frame over {p.MAX_FRAME_BYTES} bytes") from None
        if not line:
            raise await self._exited()
        try:
            return p.decode(line)
        except p.ProtocolError as e:
            await self.stop(0.5)
            raise EngineError(p.ErrorCode.PROTOCOL, f"engine sent a malformed frame: {e}") from None

    async def _exited(self) -> EngineExited:
        assert self._proc is not None
        try:
            await asyncio.wait_for(self._proc.wait(), 1.0)
        except TimeoutError:
            await self.stop(0.5)
        if self._stderr_task:
            await asyncio.wait([self._stderr_task], timeout=0.5)
        return EngineExited(self._proc.returncode, " | ".join(self._stderr_tail))

    async def _log_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            try:
                line = await self._proc.stderr.readline()
            except ValueError:  # an over-long line: keep its start
                line = b"(over-long line)"
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()[:500]
            if text:
                self._stderr_tail.append(text)
                log.debug("%s: %s", self._name, text)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
