"""The engine conformance suite: runs an engine program and checks that it speaks protocol v1 as documented.

    storybot engine-check [--model FILE] [--cancel-ms 200] [--ready-timeout-s 60] -- CMD ARGS...
    python -m engines.conformance ...              (the same, without storybot installed)

CMD ARGS is the engine's whole command line, as storybot would start it. With --model naming the model file
among ARGS, the exit-status checks also start the engine with that file missing and with it empty.

It prints one line per check (PASS, FAIL or SKIP, the check's name, what it saw) and a summary, and exits 0 when
no check failed, 1 when one did, 64 on a bad command line. Each check is a rule of docs/engine-protocol.md;
the reply frames are decoded with the strict decoder (engines/protocol.py), so a frame with a missing, extra or
mistyped field fails the check that received it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from engines import protocol as p
from engines.child import Child
from engines.client import EXIT_NAMES, describe_exit

EXIT_FAILED = 1
EXIT_USAGE = 64
PROMPT = "Once upon a time, there was a little dragon named Bo who loved tea."
LONG_MAX_TOKENS = 100_000  # a generation that is still running when the check acts on it
UNKNOWN_OPTION = "--storybot-conformance-no-such-option"
REPLY_TIMEOUT_S = 5.0  # for an answer that needs no generation (an error frame, an exit)
CANCEL_ATTEMPTS = 3  # a generation that ends by itself before the cancel is tried again with another seed
T = TypeVar("T")


class CheckFailed(Exception):
    """The engine broke a rule; the message says what was seen."""


class CheckSkipped(Exception):
    """The check cannot be made against this engine (the message says why); not a failure."""


@dataclass(frozen=True)
class Options:
    argv: tuple[str, ...]
    model: str | None = None
    cancel_ms: float = 200.0
    ready_timeout_s: float = 60.0
    first_token_timeout_s: float = 30.0
    token_timeout_s: float = 10.0


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str


@dataclass
class Generation:
    tokens: list[p.Token] = field(default_factory=list)
    end: p.Done | p.Error | None = None
    ended_at: float = 0.0  # monotonic seconds when the end frame arrived

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


# ---------------------------------------------------------------------------------------------- the process


class EngineProcess:
    """The engine under test, run by the one child-process class (engines.child.Child: its own process group, a
    bounded stderr tail, its exit in words, the group killed at the end), so that it is started and ended the way
    storybot does. The checks are sequential code with deadlines, not coroutines: the child's event loop runs on a
    thread of its own, where stdout lines are stamped on arrival."""

    def __init__(self, argv: tuple[str, ...]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-check-loop", daemon=True)
        self._thread.start()
        self._child = Child(argv, name="engine", stdout_limit_bytes=p.MAX_FRAME_BYTES + 1, exit_names=EXIT_NAMES)
        try:
            self._call(self._child.start(), REPLY_TIMEOUT_S)
        except OSError as e:
            self._end_loop()
            raise CheckFailed(f"cannot start {argv[0]}: {e.strerror}") from None
        self._lines: collections.deque[tuple[float, bytes] | None] = collections.deque()  # None: end of output
        self._arrived = threading.Condition()
        self._next_id = 1
        self._reader: asyncio.Task = self._call(self._start_reader(), REPLY_TIMEOUT_S)

    async def _start_reader(self) -> asyncio.Task:
        return asyncio.create_task(self._read_stdout(), name="engine-stdout")

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run coro on the child's loop and wait for its result (TimeoutError after timeout_s)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _read_stdout(self) -> None:
        stdout = self._child.stdout
        while True:
            try:
                line = await stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:  # the end of output, perhaps after an unterminated line
                if e.partial:
                    self._append((time.monotonic(), e.partial))
                break
            except asyncio.LimitOverrunError:  # an over-long line: its start, unterminated, fails the check
                line = await stdout.read(p.MAX_FRAME_BYTES + 1)
            self._append((time.monotonic(), line))
        self._append(None)

    def _append(self, item: tuple[float, bytes] | None) -> None:
        with self._arrived:
            self._lines.append(item)
            self._arrived.notify_all()

    def _first(self, timeout_s: float) -> tuple[bool, tuple[float, bytes] | None]:
        """(True, the first unread item) when one is there within timeout_s, else (False, None); not taken."""
        with self._arrived:
            is_there = self._arrived.wait_for(lambda: len(self._lines) > 0, timeout_s)
            return (True, self._lines[0]) if is_there else (False, None)

    def has_output(self, wait_s: float) -> bool:
        """True when a stdout line (not the end of output) is there within wait_s."""
        is_there, item = self._first(wait_s)
        return is_there and item is not None

    @property
    def is_running(self) -> bool:
        return self._child.is_running

    @property
    def stderr_tail(self) -> str:
        """Its last lines on stderr, joined for one line of the report."""
        return self._child.stderr_tail

    def take_id(self) -> int:
        request_id, self._next_id = self._next_id, self._next_id + 1
        return request_id

    def send(self, data: bytes) -> float:
        """Writes raw bytes to the engine's stdin; returns when they were written (monotonic seconds).

        Within a deadline: an engine that stops reading must fail a check, not hang the suite."""
        try:
            self._call(self._write(data), REPLY_TIMEOUT_S + 1.0)
        except TimeoutError:
            raise CheckFailed(f"the engine read none of its stdin for {REPLY_TIMEOUT_S:g} s") from None
        except (BrokenPipeError, ConnectionResetError):
            raise CheckFailed(f"the engine stopped reading its stdin ({self.exit_words()})") from None
        return time.monotonic()

    async def _write(self, data: bytes) -> None:
        stdin = self._child.stdin
        if stdin.is_closing():
            raise BrokenPipeError("stdin is closed")
        stdin.write(data)
        await asyncio.wait_for(stdin.drain(), REPLY_TIMEOUT_S)

    def send_frame(self, **fields) -> float:
        return self.send(json.dumps({"v": p.PROTOCOL_VERSION, **fields}, ensure_ascii=False).encode() + b"\n")

    def close_stdin(self) -> None:
        self._loop.call_soon_threadsafe(self._child.stdin.close)

    def frame(self, timeout_s: float, what: str) -> tuple[float, p.Frame]:
        """The next reply frame and its arrival; CheckFailed on a timeout, end of output or a malformed frame."""
        is_there, item = self._first(timeout_s)
        if not is_there:
            raise CheckFailed(f"nothing within {timeout_s:g} s while {what} was awaited")
        if item is None:  # the end stays in the buffer: later reads see it too
            raise CheckFailed(f"the engine closed its stdout while {what} was awaited ({self.exit_words()})")
        with self._arrived:
            self._lines.popleft()
        arrived, line = item
        if not line.endswith(b"\n"):
            raise CheckFailed(f"a reply line over {p.MAX_FRAME_BYTES} bytes or unterminated, awaiting {what}")
        try:
            return arrived, p.decode(line)
        except p.ProtocolError as e:
            raise CheckFailed(f"a malformed frame while {what} was awaited: {e}: {_clip(line)}") from None

    def wait_exit(self, timeout_s: float) -> int | None:
        """Its exit status once it has ended and its stderr is read to the end; None if it runs on past timeout_s."""
        try:
            return self._call(self._ended(timeout_s), timeout_s + 2.0)
        except TimeoutError:
            return None

    async def _ended(self, timeout_s: float) -> int | None:
        status = await asyncio.wait_for(self._child.wait(), timeout_s)
        await self._child.wait_for_stderr(1.0)  # its last words, for the report
        return status

    def exit_words(self) -> str:
        self.wait_exit(1.0)
        said = self.stderr_tail
        return f"it {self._child.exit_words()}" + (f"; stderr: {said}" if said else "")

    def close(self) -> None:
        try:
            self._call(self._end(), 15.0)
        finally:
            self._end_loop()

    async def _end(self) -> None:
        await self._child.kill()
        await asyncio.wait([self._reader], timeout=1.0)  # the end of its output, read
        self._reader.cancel()
        self._child.stdin.close()
        await asyncio.sleep(0)  # the pipes' transports close

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()


@contextmanager
def started(argv: tuple[str, ...]) -> Iterator[EngineProcess]:
    engine = EngineProcess(argv)
    try:
        yield engine
    finally:
        engine.close()


def _clip(data: bytes, limit: int = 120) -> str:
    return repr(data[:limit]) + ("..." if len(data) > limit else "")


# ---------------------------------------------------------------------------------------------- reading replies


class Session:
    """An engine that has sent its ready frame, with the options the checks need."""

    def __init__(self, engine: EngineProcess, ready: p.Ready, options: Options) -> None:
        self.engine = engine
        self.ready = ready
        self.options = options

    def request(self, **fields) -> tuple[int, float]:
        """Sends a generate frame (every field as given); returns its id and when it was sent."""
        request_id = self.engine.take_id()
        return request_id, self.engine.send_frame(type="generate", id=request_id, prompt=PROMPT, **fields)

    def collect(
        self,
        request_id: int,
        *,
        until_tokens: int | None = None,
        gen: Generation | None = None,
        end_within_s: float | None = None,
    ) -> Generation:
        """Frames of generation request_id until its done or error frame (or until_tokens token frames).

        end_within_s bounds the whole wait (after a cancel: an engine that ignores it streams on for ever)."""
        gen = gen or Generation()
        what = "the first token" if not gen.tokens else "the next token"
        timeout_s = self.options.first_token_timeout_s if not gen.tokens else self.options.token_timeout_s
        deadline = None if end_within_s is None else time.monotonic() + end_within_s
        while gen.end is None and (until_tokens is None or len(gen.tokens) < until_tokens):
            if deadline is not None and time.monotonic() > deadline:
                raise CheckFailed(f"generation {request_id} did not end within {end_within_s:g} s (it streams on)")
            arrived, frame = self.engine.frame(timeout_s, f"{what} of generation {request_id}")
            what, timeout_s = "the next token", self.options.token_timeout_s
            if isinstance(frame, p.Error) and frame.id == -1:
                raise CheckFailed(f"generate {request_id} refused with error {frame.code.value}: {frame.message}")
            if getattr(frame, "id", None) != request_id:
                raise CheckFailed(
                    f"a {frame.TYPE} frame for id {getattr(frame, 'id', None)} while generation {request_id} ran"
                )
            if isinstance(frame, p.Token):
                gen.tokens.append(frame)
            elif isinstance(frame, p.Done | p.Error):
                gen.end, gen.ended_at = frame, arrived
            else:
                raise CheckFailed(f"a {frame.TYPE} frame during generation {request_id}")
        return gen

    def generate(self, **fields) -> Generation:
        request_id, _ = self.request(**fields)
        return self.collect(request_id)

    def done(self, gen: Generation, what: str) -> p.Done:
        if isinstance(gen.end, p.Error):
            raise CheckFailed(f"{what} was answered with error {gen.end.code.value}: {gen.end.message}")
        assert isinstance(gen.end, p.Done)
        return gen.end

    def expect_error(self, code: p.ErrorCode, what: str, request_id: int | None = None) -> p.Error:
        _, frame = self.engine.frame(REPLY_TIMEOUT_S, f"an error frame for {what}")
        if not isinstance(frame, p.Error):
            raise CheckFailed(f"{what}: expected an error frame (code {code.value}), got {frame.TYPE}")
        if frame.code is not code:
            raise CheckFailed(f"{what}: error code {frame.code.value}, expected {code.value} ({frame.message})")
        if request_id is not None and frame.id != request_id:
            raise CheckFailed(f"{what}: the error frame has id {frame.id}, expected {request_id}")
        return frame

    def still_serves(self, after: str) -> None:
        gen = self.generate(max_tokens=2, temperature=0)
        self.done(gen, f"a generate after {after}")


# ---------------------------------------------------------------------------------------------- the checks
# A check returns what it saw (PASS), or raises CheckFailed or CheckSkipped.


def check_handshake(engine: EngineProcess, options: Options) -> tuple[str, p.Ready]:
    started_at = time.monotonic()
    _, frame = engine.frame(options.ready_timeout_s, "the ready frame")
    if not isinstance(frame, p.Ready):
        raise CheckFailed(f"the first frame is {frame.TYPE}, expected ready")
    if frame.context_tokens < 1 or frame.load_ms < 0 or not frame.engine:
        raise CheckFailed(f"implausible ready frame {frame}")
    return (
        f"ready in {time.monotonic() - started_at:.1f} s: engine {frame.engine!r}, "
        f"context {frame.context_tokens} tokens, load {frame.load_ms:.0f} ms"
    ), frame


def check_streaming(s: Session) -> str:
    gen = s.generate(max_tokens=16, temperature=0, seed=1)
    done = s.done(gen, "generate")
    if done.tokens > 16:
        raise CheckFailed(f"{done.tokens} tokens generated, max_tokens was 16")
    if done.reason is p.StopReason.LENGTH and done.tokens != 16:
        raise CheckFailed(f"reason length after {done.tokens} tokens, max_tokens was 16")
    if done.reason not in (p.StopReason.LENGTH, p.StopReason.EOS):
        raise CheckFailed(f"reason {done.reason.value}: no stop string and no cancel were asked for")
    if done.tokens > 0 and not gen.text:
        raise CheckFailed(f"{done.tokens} tokens generated but no text in token frames")
    if done.prompt_tokens < 1 or not 0 <= done.first_token_ms <= done.total_ms:
        raise CheckFailed(f"implausible done frame {done}")
    return f"{len(gen.tokens)} token frames, then done ({done.reason.value}, {done.tokens} tokens): {gen.text[:40]!r}"


def check_documented_fields(s: Session) -> str:
    """Every generate field of the document, given explicitly, is accepted (the special flag both ways)."""
    for special in (False, True):
        gen = s.generate(
            max_tokens=4, temperature=0.7, top_p=0.9, top_k=20, repeat_penalty=1.1, seed=5, stop=["\n\n\n"],
            special=special,
        )  # fmt: skip
        done = s.done(gen, f"a generate with every field (special {special})")
        if done.tokens > 4:
            raise CheckFailed(f"{done.tokens} tokens generated, max_tokens was 4")
    return "a generate carrying all 10 fields accepted, with special false and true"


def check_seed(s: Session) -> str:
    """The same request with the same seed gives the same text, also after another generation."""
    fields = {"max_tokens": 12, "temperature": 0.8, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.2, "seed": 7}
    first = s.generate(**fields)
    s.done(first, "a seeded generate")
    s.done(s.generate(max_tokens=5, temperature=1.0, seed=99), "a generate between the two")
    again = s.generate(**fields)
    s.done(again, "the same seeded generate again")
    if again.text != first.text:
        raise CheckFailed(f"seed 7 gave {first.text!r}, then {again.text!r}")
    return f"seed 7 twice: {first.text[:40]!r}"


def check_stop_strings(s: Session) -> str:
    plain = s.generate(max_tokens=24, temperature=0, seed=1)
    s.done(plain, "a greedy generate")
    text = plain.text
    if len(text) < 6:
        raise CheckSkipped(f"the greedy text {text!r} is too short to take a stop string from")
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text.find(stop)
    stopped = s.generate(max_tokens=24, temperature=0, seed=1, stop=[stop])
    done = s.done(stopped, "a greedy generate with a stop string")
    if done.reason is not p.StopReason.STOP or stopped.text != text[:cut]:
        raise CheckFailed(
            f"stop {stop!r} in {text!r}: got {stopped.text!r} ({done.reason.value}), expected {text[:cut]!r} (stop)"
        )
    return f"stop {stop!r}: the text ends before it, reason stop"


def check_cancel(s: Session) -> str:
    limit_ms = s.options.cancel_ms
    for attempt in range(CANCEL_ATTEMPTS):
        request_id, _ = s.request(max_tokens=LONG_MAX_TOKENS, temperature=1.0, seed=3 + attempt)
        gen = s.collect(request_id, until_tokens=3)
        if gen.end is not None:
            continue  # it ended by itself first: try another seed
        sent = s.engine.send_frame(type="cancel", id=request_id)
        s.collect(request_id, gen=gen, end_within_s=REPLY_TIMEOUT_S)
        done = s.done(gen, "a cancelled generate")
        waited_ms = (gen.ended_at - sent) * 1000.0
        if done.reason is not p.StopReason.CANCELLED:
            raise CheckFailed(f"done with reason {done.reason.value} after cancel, expected cancelled")
        if waited_ms > limit_ms:
            raise CheckFailed(f"done {waited_ms:.0f} ms after the cancel, at most {limit_ms:g} ms")
        s.engine.send_frame(type="cancel", id=request_id)  # no longer running: ignored, never answered
        s.still_serves("a cancel")
        return f"done (cancelled) {waited_ms:.0f} ms after the cancel (at most {limit_ms:g}); a stale cancel ignored"
    raise CheckSkipped(f"{CANCEL_ATTEMPTS} generations of up to {LONG_MAX_TOKENS} tokens ended before 3 tokens")


def check_busy(s: Session) -> str:
    running, second = s.engine.take_id(), s.engine.take_id()
    s.engine.send(
        _frame(type="generate", id=running, prompt=PROMPT, max_tokens=LONG_MAX_TOKENS, temperature=1.0, seed=3)
        + _frame(type="generate", id=second, prompt=PROMPT, max_tokens=4)
    )  # back to back: the second arrives while the first runs
    gen, busy = Generation(), None
    deadline = time.monotonic() + s.options.token_timeout_s
    while busy is None:
        if time.monotonic() > deadline:
            raise CheckFailed(f"no answer to generate {second} within {s.options.token_timeout_s:g} s")
        _, frame = s.engine.frame(s.options.first_token_timeout_s, f"the busy error for generation {second}")
        if isinstance(frame, p.Error) and frame.id == second:
            busy = frame
        elif isinstance(frame, p.Token) and frame.id == running:
            gen.tokens.append(frame)
        elif isinstance(frame, p.Done) and frame.id == running:
            raise CheckFailed(f"generation {running} ended ({frame.reason.value}) before {second} was answered")
        else:
            raise CheckFailed(f"while generation {running} ran, a second generate was answered with {frame}")
    if busy.code is not p.ErrorCode.BUSY:
        raise CheckFailed(f"the second generate got error {busy.code.value}, expected busy")
    s.engine.send_frame(type="cancel", id=running)
    s.collect(running, gen=gen, end_within_s=REPLY_TIMEOUT_S)
    s.done(gen, "the generation that was running")
    s.still_serves("busy")
    return f"a second generate while one ran: error busy (id {second}); the first went on and was cancelled"


MALFORMED = (
    ("not JSON", b"this is not json\n"),
    ("a JSON array", b"[1, 2]\n"),
    ("no version", b'{"type": "cancel", "id": 1}\n'),
    ("no type", b'{"v": 1, "id": 1}\n'),
    ("a reply frame sent as a request", b'{"v": 1, "type": "token", "id": 1, "text": "x"}\n'),
    ("a missing field", b'{"v": 1, "type": "cancel"}\n'),
    ("a string id", b'{"v": 1, "type": "cancel", "id": "1"}\n'),
    ("an empty prompt", b'{"v": 1, "type": "generate", "id": 1, "prompt": ""}\n'),
    ("max_tokens 0", b'{"v": 1, "type": "generate", "id": 1, "prompt": "x", "max_tokens": 0}\n'),
    ("top_p out of range", b'{"v": 1, "type": "generate", "id": 1, "prompt": "x", "top_p": 1.5}\n'),
    ("NaN", b'{"v": 1, "type": "generate", "id": 1, "prompt": "x", "temperature": NaN}\n'),
    ("stop not a list", b'{"v": 1, "type": "generate", "id": 1, "prompt": "x", "stop": "<"}\n'),
    ("not UTF-8", b'{"v": 1, "type": "generate", "id": 1, "prompt": "\xff\xfe"}\n'),
)


def check_malformed_frames(s: Session) -> str:
    for what, line in MALFORMED:
        s.engine.send(line)
        s.expect_error(p.ErrorCode.PROTOCOL, what)
    s.still_serves("malformed frames")
    oversized = b'{"v": 1, "type": "generate", "id": 1, "prompt": "' + b"a" * p.MAX_FRAME_BYTES + b'"}\n'
    s.engine.send(oversized)
    s.expect_error(p.ErrorCode.PROTOCOL, f"a frame of {len(oversized)} bytes")
    s.still_serves("an over-long frame (it is skipped up to its newline, and answered once)")
    return f"{len(MALFORMED) + 1} malformed frames each answered by one protocol error; the engine serves on"


UNKNOWN = (
    ("an unknown generate field", {"type": "generate", "id": 1, "prompt": "x", "colour": "red"}),
    ("an unknown cancel field", {"type": "cancel", "id": 1, "force": True}),
    ("an unknown shutdown field", {"type": "shutdown", "now": True}),
    ("an unknown frame type", {"type": "launch"}),
    ("protocol version 2", {"v": 2, "type": "cancel", "id": 1}),
)


def check_unknown_fields(s: Session) -> str:
    for what, body in UNKNOWN:
        s.engine.send(_frame(**body))
        s.expect_error(p.ErrorCode.PROTOCOL, what)
    s.still_serves("unknown fields")
    return f"{len(UNKNOWN)} frames with unknown fields, types or versions refused with a protocol error"


def check_bad_request(s: Session) -> str:
    words = 2 * s.ready.context_tokens  # at least a token a word, whatever the tokenizer
    if len("tale ") * words > p.MAX_PROMPT_CHARS:
        raise CheckSkipped(f"a context of {s.ready.context_tokens} tokens holds the longest prompt allowed")
    request_id = s.engine.take_id()
    s.engine.send_frame(type="generate", id=request_id, prompt="tale " * words, max_tokens=4)
    s.expect_error(p.ErrorCode.BAD_REQUEST, f"a prompt of {words} words", request_id)
    s.still_serves("a prompt longer than the context")
    return f"a prompt of {words} words (context {s.ready.context_tokens}): error bad_request"


def check_shutdown(s: Session) -> str:
    s.engine.send_frame(type="shutdown")
    status = s.engine.wait_exit(REPLY_TIMEOUT_S)
    if status != 0:
        raise CheckFailed(f"after shutdown the engine {describe_exit(status)} (within {REPLY_TIMEOUT_S:g} s)")
    return "exit 0 after shutdown"


def check_shutdown_while_generating(options: Options) -> str:
    with ready_session(options) as s:
        request_id, _ = s.request(max_tokens=LONG_MAX_TOKENS, temperature=1.0, seed=3)
        s.collect(request_id, until_tokens=1)
        s.engine.send_frame(type="shutdown")
        status = s.engine.wait_exit(REPLY_TIMEOUT_S)
        if status != 0:
            raise CheckFailed(f"after shutdown mid-generation the engine {describe_exit(status)}")
    return "exit 0 after shutdown in the middle of a generation"


def check_stdin_closed(options: Options) -> str:
    with ready_session(options) as s:
        s.engine.close_stdin()
        status = s.engine.wait_exit(REPLY_TIMEOUT_S)
        if status != 0:
            raise CheckFailed(f"with its stdin closed the engine {describe_exit(status)}")
    return "exit 0 when stdin is closed"


def check_bad_command_line(options: Options) -> str:
    return _check_failed_start(options.argv + (UNKNOWN_OPTION,), {p.ExitCode.USAGE}, UNKNOWN_OPTION, options)


def check_missing_model(options: Options) -> str:
    model = _need_model(options)
    with tempfile.TemporaryDirectory() as tmp:
        missing = str(Path(tmp) / "no-such-model")
        argv = tuple(missing if a == model else a for a in options.argv)
        return _check_failed_start(argv, {p.ExitCode.MODEL_MISSING}, missing, options)


def check_empty_model(options: Options) -> str:
    model = _need_model(options)
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / ("empty" + Path(model).suffix)
        empty.write_bytes(b"")
        argv = tuple(str(empty) if a == model else a for a in options.argv)
        allowed = {c for c in p.ExitCode if c.is_permanent} - {p.ExitCode.USAGE, p.ExitCode.MODEL_MISSING}
        return _check_failed_start(argv, allowed, str(empty), options)


def _need_model(options: Options) -> str:
    if options.model is None:
        raise CheckSkipped("no --model: the model file among the engine's arguments is not known")
    if options.model not in options.argv:
        raise CheckSkipped(f"--model {options.model} is not one of the engine's arguments")
    return options.model


def _check_failed_start(argv: tuple[str, ...], allowed: set[p.ExitCode], named: str, options: Options) -> str:
    """The engine must exit with one of `allowed`, say so on stderr naming `named`, and send no frame."""
    wanted = " or ".join(f"{c.value} ({c.name.lower().replace('_', ' ')})" for c in sorted(allowed))
    with started(argv) as engine:
        deadline = time.monotonic() + options.ready_timeout_s
        while engine.is_running and time.monotonic() < deadline:
            if engine.has_output(0.05):
                _, frame = engine.frame(1.0, "an exit")
                raise CheckFailed(f"it sent a {frame.TYPE} frame instead of exiting {wanted}")
        status = engine.wait_exit(1.0)
        said = engine.stderr_tail
        if status not in allowed:
            raise CheckFailed(f"the engine {describe_exit(status)}, expected {wanted}; stderr: {said or '(none)'}")
        if engine.has_output(0.0):
            raise CheckFailed(f"it exited {status} but wrote to stdout first")
        if named not in said:
            raise CheckFailed(f"exit {status}, but stderr does not name {named!r}: {said or '(none)'}")
        return f"exit {status}; stderr: {said[:100]}"


def _frame(**body) -> bytes:
    return json.dumps({"v": p.PROTOCOL_VERSION, **body}).encode() + b"\n"


@contextmanager
def ready_session(options: Options) -> Iterator[Session]:
    with started(options.argv) as engine:
        _, ready = check_handshake(engine, options)
        yield Session(engine, ready, options)


# ---------------------------------------------------------------------------------------------- running them

SESSION_CHECKS: tuple[tuple[str, Callable[[Session], str]], ...] = (
    ("streaming", check_streaming),
    ("documented fields", check_documented_fields),
    ("unknown fields", check_unknown_fields),
    ("malformed frames", check_malformed_frames),
    ("seed", check_seed),
    ("stop strings", check_stop_strings),
    ("cancel", check_cancel),
    ("busy", check_busy),
    ("bad request", check_bad_request),
    ("shutdown", check_shutdown),
)
PROCESS_CHECKS: tuple[tuple[str, Callable[[Options], str]], ...] = (
    ("shutdown mid-generation", check_shutdown_while_generating),
    ("stdin closed", check_stdin_closed),
    ("exit on a bad command line", check_bad_command_line),
    ("exit with the model missing", check_missing_model),
    ("exit with the model empty", check_empty_model),
)


def _run_one(name: str, check: Callable, arg, report: Callable[[Outcome], None]) -> bool:
    """Runs a check and reports it; False when the engine is no longer in a state to go on with."""
    try:
        outcome = Outcome(name, "PASS", check(arg))
    except CheckSkipped as e:
        outcome = Outcome(name, "SKIP", str(e))
    except CheckFailed as e:
        outcome = Outcome(name, "FAIL", str(e))
    report(outcome)
    return outcome.status != "FAIL"


def run_checks(options: Options, report: Callable[[Outcome], None]) -> list[Outcome]:
    outcomes: list[Outcome] = []

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        report(outcome)

    try:
        with started(options.argv) as engine:
            handshake: list[p.Ready] = []

            def shake(e: EngineProcess) -> str:
                detail, ready = check_handshake(e, options)
                handshake.append(ready)
                return detail

            if _run_one("handshake", shake, engine, record):
                session = Session(engine, handshake[0], options)
                for i, (name, check) in enumerate(SESSION_CHECKS):
                    if not _run_one(name, check, session, record):
                        for later, _ in SESSION_CHECKS[i + 1 :]:  # a broken session says nothing about the rest
                            record(Outcome(later, "SKIP", f"not checked: the engine failed {name!r}"))
                        break
            else:
                for name, _ in SESSION_CHECKS:
                    record(Outcome(name, "SKIP", "not checked: no handshake"))
    except CheckFailed as e:  # the engine could not even be started
        record(Outcome("handshake", "FAIL", str(e)))
    for name, process_check in PROCESS_CHECKS:
        _run_one(name, process_check, options, record)
    return outcomes


def print_outcome(outcome: Outcome) -> None:
    print(f"{outcome.status} {outcome.name}: {outcome.detail}", flush=True)


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="storybot engine-check",
        description="Check that an engine program speaks the storybot engine protocol v1 "
        "(docs/engine-protocol.md). Give the engine's whole command line after --.",
        epilog="exit status: 0 every check passed or was skipped, 1 a check failed, 64 bad command line",
    )
    parser.add_argument("--model", metavar="FILE", help="the model file among the engine's arguments")
    parser.add_argument("--cancel-ms", type=float, default=200.0, help="cancel deadline (default 200 ms)")
    parser.add_argument("--ready-timeout-s", type=float, default=60.0, help="load deadline (default 60 s)")
    parser.add_argument("--token-timeout-s", type=float, default=10.0, help="per-token deadline (default 10 s)")
    parser.add_argument("engine", nargs=argparse.REMAINDER, help="-- CMD ARGS...: the engine's command line")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        raise SystemExit(EXIT_USAGE if e.code else 0) from None
    engine = args.engine[1:] if args.engine[:1] == ["--"] else args.engine
    if not engine:
        parser.print_usage(sys.stderr)
        print("storybot engine-check: no engine command line after --", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return Options(
        argv=tuple(engine),
        model=args.model,
        cancel_ms=args.cancel_ms,
        ready_timeout_s=args.ready_timeout_s,
        token_timeout_s=args.token_timeout_s,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    print(f"engine-check: {' '.join(options.argv)}", flush=True)
    outcomes = run_checks(options, print_outcome)
    counts = collections.Counter(o.status for o in outcomes)
    print(f"engine-check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped", flush=True)
    return EXIT_FAILED if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
