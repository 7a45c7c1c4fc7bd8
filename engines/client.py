"""The parent side of the engine protocol: spawn an engine, stream a generation, cancel it, stop it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from engines import child
from engines import protocol as p

log = logging.getLogger(__name__)

EXIT_NAMES = {int(code): code.name.lower().replace("_", " ") for code in p.ExitCode}  # the engines' exit table


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
    """An engine's exit status in words, as a person reading a log needs it."""
    return child.describe_exit(returncode, EXIT_NAMES)


class EngineClient:
    """One engine child process. Not shared between concurrent generations: the protocol runs one at a time."""

    def __init__(self, argv: Sequence[str], *, name: str = "engine", env: dict[str, str] | None = None) -> None:
        self._name = name
        self._child = child.Child(
            argv, name=name, env=env, stdout_limit_bytes=p.MAX_FRAME_BYTES + 1, exit_names=EXIT_NAMES
        )
        self._next_id = 1
        self.ready: p.Ready | None = None
        self.chat_template = ""  # set by whoever knows the model: prompts for it are wrapped in this template

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def is_running(self) -> bool:
        return self._child.is_running

    @property
    def was_killed_by_us(self) -> bool:
        """stop() had to signal it: its death says nothing about memory."""
        return self._child.was_signalled_by_us

    async def wait_exit(self) -> int | None:
        """Until the engine process ends (by itself, killed, or stopped); its exit status as asyncio gives it."""
        return await self._child.wait()

    async def start(self, timeout_s: float) -> p.Ready:
        """Spawn the engine and wait for its Ready frame."""
        await self._child.start()
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
        self, asked: p.Request, *, first_token_timeout_s: float, token_timeout_s: float
    ) -> AsyncIterator[p.Token | p.Done]:
        """Send one generate request and yield its Token frames and then its Done frame.

        Leaving the iteration early (break, exception, task cancellation) cancels the generation in the engine.
        """
        request = p.Generate.of(asked, self._take_id())
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
        """Ask the engine to exit (a shutdown frame, then end of input), then terminate and kill its process group,
        timeout_s each. Returns the exit status.

        Safe to call from several tasks at once (a stalled generation and the supervisor that saw the exit): they
        share one stop, and cancelling one caller does not cancel the stop for the others."""
        return await self._child.stop(timeout_s, ask=lambda: self._send(p.Shutdown()))

    def kill_now(self) -> None:
        """SIGKILL the engine's process group, for when a polite stop has stalled."""
        self._child.kill_now()

    def _take_id(self) -> int:
        request_id, self._next_id = self._next_id, self._next_id + 1
        return request_id

    async def _send(self, frame: p.Frame) -> None:
        if not self.is_running:
            raise EngineError("exited", "engine is not running")
        self._child.stdin.write(p.encode(frame))
        try:
            await asyncio.wait_for(self._child.stdin.drain(), 5.0)
        except TimeoutError:
            raise EngineStalled("read of our request", 5.0) from None

    async def _read_frame(self, timeout_s: float, what: str) -> p.Frame:
        try:
            line = await asyncio.wait_for(self._child.stdout.readline(), timeout_s)
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
        try:
            await asyncio.wait_for(self._child.wait(), 1.0)
        except TimeoutError:
            await self.stop(0.5)
        await self._child.wait_for_stderr(0.5)
        return EngineExited(self._child.returncode, self._child.stderr_tail)
