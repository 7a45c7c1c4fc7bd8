"""The serial push-button: a microcontroller board sends DOWN / UP lines, the robot sends LED commands back.

The protocol is docs/button-protocol.md; a board's firmware is assets/button/storybot_button.ino.

Everything a serial line can do is expected here, not exceptional: the board is unplugged and plugged in again
(perhaps as another /dev/ttyUSBn), another program holds the port, the line carries noise, a board prints debug
output without newlines, a worn button chatters, a broken board floods. One daemon thread owns the port: it opens
it exclusively, reads, parses, writes the LED state and reopens with backoff, and nothing it reads can make it
grow, spin or stop.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import serial

from robot.plumbing.backoff import Backoff

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 32  # the longest frame, counting its "\n" (and a "\r" before it)
LED_STATES = ("idle", "listening", "thinking", "speaking", "error")
EVENT_KINDS = ("press", "release", "long_press")

_READ_CHUNK_BYTES = 1024  # read per wake-up at most; 115200 baud is about 11.5 KB/s
_IDLE_WAKE_S = 1.0  # the reader wakes at least this often even when nothing is due (stop() wakes it at once)
_WRITE_TIMEOUT_S = 0.25  # a board that stops reading must not hold the reader (stop() promises 1 s)
_LED_RETRY_S = 1.0  # after a write timed out, the LED state is written again this much later
_HEALTHY_AFTER_S = 5.0  # a connection that lasted this long starts the reopen backoff again from its first step
_RATE_WINDOW_S = 1.0
_STOP_JOIN_S = 0.9

_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
_MISSING_ERRNOS = (errno.ENOENT, errno.ENODEV, errno.ENXIO)
_BUSY_ERRNOS = (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK)  # EAGAIN: pyserial's flock(LOCK_EX | LOCK_NB)
_DENIED_ERRNOS = (errno.EACCES, errno.EPERM)


@dataclass(frozen=True)
class ButtonEvent:
    kind: str  # "press" | "release" | "long_press"
    at: float  # time.monotonic() seconds when the robot recognised it


@dataclass
class ButtonStats:
    """Counters for diagnostics and tests; written by the reader thread only."""

    frames_ok: int = 0  # well-formed frames (DOWN, UP, LONG, HELLO), used or not
    frames_bad: int = 0  # lines that were not frames, over-long lines included
    bytes_discarded: int = 0  # bytes that belonged to no frame: bad lines and partial lines cut by a reopen
    debounced: int = 0  # DOWN / UP frames within debounce_ms of an accepted edge
    rate_limited: int = 0  # events dropped because the button went over max_events_per_s
    reopens: int = 0  # successful opens after the first
    open_attempts: int = 0  # every try to open the port, successful or not
    line_buffer_peak_bytes: int = 0  # the most the line buffer ever held (never above MAX_LINE_BYTES)
    callback_errors: int = 0  # exceptions raised by on_event / on_status (logged, then swallowed)


@dataclass(frozen=True)
class Frame:
    """One well-formed line from the board, without its terminator."""

    command: str  # "DOWN" | "UP" | "LONG" | "HELLO" | "" (an empty line: ignored, it only resynchronises)
    text: str = ""  # what follows "HELLO "


def parse_frame(line: bytes) -> Frame | None:
    """The frame in one "\\n"-terminated line, or None when the line is not a frame.

    Strict on purpose: a line that is nearly a command (lower case, a trailing blank, a stray control byte) is noise
    or a broken board, and guessing would turn noise into presses.
    """
    if line.endswith(b"\r\n"):
        body = line[:-2]
    elif line.endswith(b"\n"):
        body = line[:-1]
    else:
        return None
    if len(line) > MAX_LINE_BYTES or body.translate(None, _PRINTABLE_ASCII):
        return None  # too long, or something outside printable ASCII (NUL, "\r", invalid UTF-8, ...)
    text = body.decode("ascii")
    if text in ("DOWN", "UP", "LONG", "HELLO", ""):
        return Frame(text)
    if text.startswith("HELLO "):
        return Frame("HELLO", text[len("HELLO ") :])
    return None


class LineSplitter:
    """Cuts the byte stream into lines of at most MAX_LINE_BYTES and resynchronises on "\\n".

    Bounded because the board end is a stranger (a wrong baud rate, a sketch printing debug output, a floating RX
    pin): a line that grows past the longest frame is thrown away as it arrives, up to its newline, so the buffer
    never holds more than one frame whatever comes in.
    """

    def __init__(self, stats: ButtonStats, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._stats = stats
        self._max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._skipping = False  # inside an over-long line, until its "\n"

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def reset(self) -> None:
        """Forget a partial line: after a reopen, what arrives is not its continuation."""
        self._stats.bytes_discarded += len(self._buffer)
        self._buffer.clear()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines (each with its "\\n") that data finishes; an over-long line is counted, not returned."""
        lines = []
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline + 1
            line = self._take(data[start:end], complete=newline >= 0)
            if line is not None:
                lines.append(line)
            start = end
        return lines

    def _take(self, piece: bytes, complete: bool) -> bytes | None:
        if self._skipping:
            self._stats.bytes_discarded += len(piece)
            self._skipping = not complete
            return None
        size = len(self._buffer) + len(piece)
        if size > self._max_line_bytes or (not complete and size >= self._max_line_bytes):
            self._stats.frames_bad += 1
            self._stats.bytes_discarded += size
            self._buffer.clear()
            self._skipping = not complete
            return None
        self._buffer += piece
        self._stats.line_buffer_peak_bytes = max(self._stats.line_buffer_peak_bytes, len(self._buffer))
        if not complete:
            return None
        line = bytes(self._buffer)
        self._buffer.clear()
        return line


@dataclass(frozen=True)
class PressTiming:
    long_press_s: float  # hold time that makes a long press; 0: only the board's LONG does
    debounce_s: float  # DOWN / UP within this time after an accepted edge are chatter
    max_events_per_s: int  # events in any one-second window, at most


_UP, _HELD, _MUTED, _DONE = "up", "held", "muted", "done"  # a press's phase; MUTED: dropped by the rate limit


class PressTracker:
    """Turns DOWN / UP / LONG frames into press, release and long_press events.

    Each press gives "press" and then exactly one of "release" (let go before the hold time) or "long_press" (held
    for long_press_s, or the board said LONG); the UP after a long press gives nothing. So every press is one
    decision for the robot, and nobody has to remember to ignore the release that follows a long press. A press
    that the board cannot finish (unplugged, or restarted: a new HELLO) ends in a release when that is noticed, so
    the pairing holds whatever happens on the line.

    Debounce: an edge is taken at once, DOWN / UP within debounce_s after it are ignored (counted), and when the
    window ends the robot follows the last level the board reported, so a quick tap whose UP fell inside the window
    still ends in a release. Rate limit: at most max_events_per_s events in any one-second window; a whole press
    (its start and its end) is admitted or dropped, so the events always pair up.

    No clock and no I/O of its own (every call gets `now`), so it is tested without a port or a sleep.
    """

    def __init__(self, timing: PressTiming, stats: ButtonStats) -> None:
        self._timing = timing
        self._stats = stats
        self._recent: deque[float] = deque()  # times of the events of the last second, oldest first
        self._forget()

    def board_lost(self, now: float) -> list[ButtonEvent]:
        """The board went away or restarted: a press in progress ends in a release, and the button counts as up.

        The rate limiter's memory is kept: a board that restarts in a loop must not escape it.
        """
        events: list[ButtonEvent] = []
        if self._phase == _HELD:
            self._emit("release", now, events)
        elif self._phase == _MUTED:
            self._stats.rate_limited += 1
        self._forget()
        return events

    def _forget(self) -> None:
        self._reported_down = False  # the last level the board reported
        self._down = False  # the accepted (debounced) level
        self._edge_at = -math.inf  # when the accepted level last changed
        self._down_at = 0.0
        self._phase = _UP

    def next_deadline(self) -> float | None:
        """When poll() will have something to do, if ever."""
        deadlines = [at for at in (self._settle_at(), self._long_at()) if at is not None]
        return min(deadlines, default=None)

    def level(self, down: bool, now: float) -> list[ButtonEvent]:
        """The board reported DOWN (True) or UP (False)."""
        events = self.poll(now)
        self._reported_down = down
        if now < self._edge_at + self._timing.debounce_s:
            self._stats.debounced += 1
        elif down != self._down:
            self._accept(down, now, events)
        return events

    def board_long(self, now: float) -> list[ButtonEvent]:
        """The board detected a long press itself; outside a press, LONG means nothing."""
        events = self.poll(now)
        if self._phase in (_HELD, _MUTED):
            self._end_long(now, events)
        return events

    def poll(self, now: float) -> list[ButtonEvent]:
        """The events that time alone brings about: a hold time reached, a debounce window over."""
        events: list[ButtonEvent] = []
        while True:
            settle_at, long_at = self._settle_at(), self._long_at()
            if long_at is not None and long_at <= now and (settle_at is None or long_at <= settle_at):
                self._end_long(now, events)
            elif settle_at is not None and settle_at <= now:
                self._accept(self._reported_down, now, events)
            else:
                return events

    def _settle_at(self) -> float | None:
        return self._edge_at + self._timing.debounce_s if self._reported_down != self._down else None

    def _long_at(self) -> float | None:
        if self._phase in (_HELD, _MUTED) and self._timing.long_press_s > 0:
            return self._down_at + self._timing.long_press_s
        return None

    def _accept(self, down: bool, now: float, events: list[ButtonEvent]) -> None:
        self._down = down
        self._edge_at = now
        if down:
            self._down_at = now
            if self._has_room(now, 2):  # the press and, later, its ending
                self._emit("press", now, events)
                self._phase = _HELD
            else:
                self._stats.rate_limited += 1
                self._phase = _MUTED
            return
        if self._phase == _HELD:
            self._emit("release", now, events)
        elif self._phase == _MUTED:
            self._stats.rate_limited += 1
        self._phase = _UP

    def _end_long(self, now: float, events: list[ButtonEvent]) -> None:
        if self._phase == _HELD:
            self._emit("long_press", now, events)
        else:
            self._stats.rate_limited += 1
        self._phase = _DONE

    def _has_room(self, now: float, count: int) -> bool:
        while self._recent and now - self._recent[0] >= _RATE_WINDOW_S:
            self._recent.popleft()
        return len(self._recent) + count <= self._timing.max_events_per_s

    def _emit(self, kind: str, now: float, events: list[ButtonEvent]) -> None:
        self._recent.append(now)
        events.append(ButtonEvent(kind, now))


def open_port(path: str, baudrate: int) -> serial.Serial:
    """Open `path` exactly as given, never its resolved target.

    A /dev/serial/by-id/ link follows the board to whichever ttyUSBn it gets after a replug; resolving it once would
    pin the robot to a name that may vanish or, worse, later belong to another device. Exclusive, because a second
    reader (a getty, ModemManager, another storybot) would take half the bytes. Non-blocking reads (timeout=0):
    the reader waits in select() itself, so it can also wake for deadlines, the LED and stop().
    """
    return serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=_WRITE_TIMEOUT_S, exclusive=True)


def describe_open_error(path: str, error: OSError) -> tuple[str, str]:
    """(state, message) for a failed open; the state decides whether this is news worth reporting."""
    code = error.errno
    if code in _BUSY_ERRNOS:
        return "busy", f"port busy: {path} (another program has it open); retrying"
    if code in _MISSING_ERRNOS:
        return "gone", f"no such port {path}; retrying"
    if code in _DENIED_ERRNOS:
        return "denied", f"permission denied: {path} (is this user in the dialout group?); retrying"
    return f"error:{code}", f"cannot open {path}: {error}; retrying"


def _check_settings(
    baudrate: int, long_press_ms: int, debounce_ms: int, max_events_per_s: int, reopen_backoff_s: tuple[float, ...]
) -> None:
    if baudrate <= 0:
        raise ValueError(f"baudrate must be positive, not {baudrate}")
    if long_press_ms < 0 or debounce_ms < 0:
        raise ValueError("long_press_ms and debounce_ms must not be negative")
    if max_events_per_s < 2:
        raise ValueError("max_events_per_s must be at least 2 (a press and its ending)")
    if not reopen_backoff_s or any(not delay > 0 for delay in reopen_backoff_s):
        raise ValueError(f"reopen_backoff_s must be positive delays, not {reopen_backoff_s!r}")


def _close_quietly(port: serial.Serial) -> None:
    try:
        port.close()
    except OSError as error:  # closing a vanished device may fail; the descriptor is gone either way
        logger.debug("closing the button port: %s", error)


class SerialButton:
    """The push-button board on a serial port: its events to on_event, the robot's state to its LED.

    One daemon thread does everything (open, read, parse, write, reopen), so the port has one owner and no locks
    around it; the rest of the program only calls set_led(), which leaves the wanted state for the thread.
    on_event and on_status are called from that thread.
    """

    def __init__(
        self,
        path: str,
        on_event: Callable[[ButtonEvent], None],
        *,
        baudrate: int = 115200,
        long_press_ms: int = 800,
        debounce_ms: int = 30,
        max_events_per_s: int = 20,
        reopen_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0),
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        _check_settings(baudrate, long_press_ms, debounce_ms, max_events_per_s, reopen_backoff_s)
        self.path = path
        self.stats = ButtonStats()
        self.board_hello: str | None = None  # the text of the board's last HELLO on this connection
        self._baudrate = baudrate
        self._backoff_s = tuple(float(delay) for delay in reopen_backoff_s)
        self._max_events_per_s = max_events_per_s
        self._splitter = LineSplitter(self.stats)
        timing = PressTiming(long_press_ms / 1000.0, debounce_ms / 1000.0, max_events_per_s)
        self._presses = PressTracker(timing, self.stats)
        self._lock = threading.Lock()  # guards _led_wanted, _port and the wake pipe
        self._led_wanted: str | None = None
        self._port: serial.Serial | None = None
        self._wake_r = self._wake_w = -1
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._callbacks = ButtonCallbacks(on_event, on_status, self.stats, self._stopping, what="button", log=logger)
        # the reader thread's own state
        self._opened_before = False
        self._led_sent: str | None = None
        self._led_resync = True  # start the next LED line with "\n": the board may hold a partial line
        self._led_retry_at = 0.0  # time.monotonic()
        self._connection_notes: set[str] = set()  # what was already logged on this connection

    # --- the interface --------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._port is not None

    def start(self) -> None:
        """Start the reader thread; it keeps trying to open the port until stop()."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the button reader is already running")
        self._stopping.clear()
        self._callbacks.status = ""
        with self._lock:
            self._close_wake_pipe_locked()  # left open by a stop() that could not wait for the old thread
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="storybot-button", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the reader thread (within 1 s unless a callback blocks) and close the port."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        with self._lock:
            self._wake_locked()
        if thread is threading.current_thread():
            return  # called from a callback: the thread ends when the callback returns
        thread.join(_STOP_JOIN_S)
        if thread.is_alive():
            logger.warning("the button reader did not stop within 1 s (is an on_event callback blocking?)")
            return
        self._thread = None
        with self._lock:
            self._close_wake_pipe_locked()

    def set_led(self, state: str) -> None:
        """Ask for an LED state; the latest wins, the thread writes it now or after the next (re)open."""
        if state not in LED_STATES:
            raise ValueError(f"LED state must be one of {', '.join(LED_STATES)}, not {state!r}")
        with self._lock:
            self._led_wanted = state
            if self._port is not None:
                self._wake_locked()

    # --- the reader thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        reconnect_loop(
            self._stopping,
            self._backoff_s,
            self._open,
            self._serve,
            lambda: self._callbacks.report(
                "bug", "button reader failed unexpectedly; retrying", logging.ERROR, exc_info=True
            ),
        )

    def _open(self) -> serial.Serial | None:
        self.stats.open_attempts += 1
        try:
            port = open_port(self.path, self._baudrate)
        except OSError as error:  # serial.SerialException is an OSError
            self._callbacks.report(*describe_open_error(self.path, error))
            return None
        if self._opened_before:
            self.stats.reopens += 1
        self._opened_before = True
        self._callbacks.report("connected", f"connected to {self._describe_path()}", logging.INFO)
        return port

    def _describe_path(self) -> str:
        if os.path.islink(self.path):
            return f"{self.path} (-> {os.path.realpath(self.path)})"
        return self.path

    def _serve(self, port: serial.Serial) -> None:
        """Read, parse and write until the port fails or stop(); the port is closed on the way out."""
        self._begin_connection(port)
        try:
            while not self._stopping.is_set():
                self._write_led(port)
                if self._wait_readable(port):
                    self._handle_bytes(port.read(_READ_CHUNK_BYTES))
                self._callbacks.dispatch(self._presses.poll(time.monotonic()))
        except OSError as error:  # a vanished device: pyserial's "readiness to read but returned no data", EIO, ...
            if not self._stopping.is_set():
                self._callbacks.report("gone", f"unplugged: {self.path} ({error}); retrying")
        finally:
            with self._lock:
                self._port = None
            _close_quietly(port)
            if not self._stopping.is_set():
                self._callbacks.dispatch(self._presses.board_lost(time.monotonic()))

    def _begin_connection(self, port: serial.Serial) -> None:
        self._splitter.reset()
        self.board_hello = None
        self._led_sent = None  # whatever the board shows now, it did not get it from this connection
        self._led_resync = True
        self._led_retry_at = 0.0
        self._connection_notes.clear()
        with self._lock:
            self._port = port

    def _wait_readable(self, port: serial.Serial) -> bool:
        """Sleep until input, a wake-up (set_led, stop) or the next deadline; True when the port has input."""
        now = time.monotonic()
        deadlines = [now + _IDLE_WAKE_S, self._presses.next_deadline(), self._led_deadline()]
        timeout_s = max(0.0, min(at for at in deadlines if at is not None) - now)
        readable, _, _ = select.select([port.fileno(), self._wake_r], [], [], timeout_s)
        if self._wake_r in readable:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass
        return port.fileno() in readable

    def _handle_bytes(self, data: bytes) -> None:
        now = time.monotonic()
        bad_before = self.stats.frames_bad
        for line in self._splitter.feed(data):
            frame = parse_frame(line)
            if frame is None:
                self.stats.frames_bad += 1
                self.stats.bytes_discarded += len(line)
                self._note("bad", "malformed line from %s (%r); further ones are only counted", self.path, line)
            else:
                self._handle_frame(frame, now)
        if self.stats.frames_bad > bad_before:
            self._note("bad", "over-long line from %s; further malformed lines are only counted", self.path)

    def _handle_frame(self, frame: Frame, now: float) -> None:
        if not frame.command:
            return  # an empty line: a board resynchronising
        self.stats.frames_ok += 1
        limited_before = self.stats.rate_limited
        if frame.command == "DOWN":
            self._callbacks.dispatch(self._presses.level(True, now))
        elif frame.command == "UP":
            self._callbacks.dispatch(self._presses.level(False, now))
        elif frame.command == "LONG":
            self._callbacks.dispatch(self._presses.board_long(now))
        else:
            self._hello(frame.text, now)
        if self.stats.rate_limited > limited_before:
            limit = self._max_events_per_s
            self._note("flood", "button on %s goes over %d events/s; dropping the excess", self.path, limit)

    def _hello(self, text: str, now: float) -> None:
        """A board (re)started: it forgot its LED (an Arduino resets when the port opens) and its button is up."""
        logger.info("button board on %s: %s", self.path, text or "(no text)")
        self.board_hello = text
        self._callbacks.dispatch(self._presses.board_lost(now))
        self._led_sent = None

    def _led_deadline(self) -> float | None:
        return self._led_retry_at if self._led_retry_at > time.monotonic() else None

    def _write_led(self, port: serial.Serial) -> None:
        with self._lock:
            wanted = self._led_wanted
        if wanted is None or wanted == self._led_sent or time.monotonic() < self._led_retry_at:
            return
        line = f"LED {wanted.upper()}\n".encode("ascii")
        try:
            # pyserial retries EAGAIN without waiting, so a full output buffer would spin for the whole write
            # timeout; ask first, and write only when the device takes bytes
            if not select.select([], [port.fileno()], [], 0)[1]:
                raise serial.SerialTimeoutException("output buffer full")
            port.write(b"\n" + line if self._led_resync else line)
        except serial.SerialTimeoutException:  # the board stopped reading; part of the line may be out
            self._led_resync = True
            self._led_retry_at = time.monotonic() + _LED_RETRY_S
            self._note("stall", "button board on %s does not read its LED commands; retrying", self.path)
            return
        self._led_sent = wanted
        self._led_resync = False
        self._led_retry_at = 0.0

    def _note(self, what: str, message: str, *args: object) -> None:
        """Log a kind of trouble once per connection; the counters in stats keep the rest."""
        if what not in self._connection_notes:
            self._connection_notes.add(what)
            logger.warning(message, *args)

    def _close_wake_pipe_locked(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _wake_locked(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already


class ButtonCallbacks:
    """A button's owner's callbacks, called from the button's own thread (serial or GPIO alike): one that raises is
    logged once and then only counted (stats.callback_errors), never ending the thread; a state that every retry
    reports again is news only once; after stop() no event is delivered."""

    def __init__(
        self,
        on_event: Callable[[ButtonEvent], None],
        on_status: Callable[[str], None] | None,
        stats: ButtonStats,
        stopping: threading.Event,
        *,
        what: str,
        log: logging.Logger,
    ) -> None:
        """what: the button in words, for the log ("button", "GPIO button"); log: its module's logger."""
        self._on_event = on_event
        self._on_status = on_status
        self._stats = stats
        self._stopping = stopping
        self._what = what
        self._log = log
        self.status = ""  # the last state reported through on_status; the thread's own

    def dispatch(self, events: list[ButtonEvent]) -> None:
        for event in events:
            if self._stopping.is_set():
                return  # stop() promises silence
            self._log.debug("%s %s", self._what, event.kind)
            try:
                self._on_event(event)
            except Exception:
                self._failed("on_event")

    def report(self, state: str, message: str, level: int = logging.WARNING, exc_info: bool = False) -> None:
        """Tell log and on_status about a new state."""
        if state == self.status:
            return
        self.status = state
        self._log.log(level, "%s", message, exc_info=exc_info)
        if self._on_status is not None:
            try:
                self._on_status(message)
            except Exception:
                self._failed("on_status")

    def _failed(self, name: str) -> None:
        self._stats.callback_errors += 1
        if self._stats.callback_errors == 1:
            self._log.exception("the %s's %s callback failed (further failures are only counted)", self._what, name)


_Connection = TypeVar("_Connection")  # what connect() opens and serve() uses: a port, a GPIO request


def reconnect_loop(
    stopping: threading.Event,
    backoff_s: tuple[float, ...],
    connect: Callable[[], _Connection | None],
    serve: Callable[[_Connection], None],
    on_bug: Callable[[], None],
) -> None:
    """Connect, serve, and after any failure wait a step of the backoff, until `stopping` is set (the serial and
    the GPIO button's thread). connect() returns None when it failed (and said why); a connection that lasted
    _HEALTHY_AFTER_S starts the backoff again from its first step; a bug is reported and retried, never fatal."""
    backoff = Backoff(backoff_s, healthy_after_s=_HEALTHY_AFTER_S)
    while not stopping.is_set():
        try:
            connection = connect()
            if connection is not None:
                connected_at = time.monotonic()
                serve(connection)
                backoff.ran_for(time.monotonic() - connected_at)
        except Exception:  # a bug here must not end the button for good
            on_bug()
        if stopping.is_set():
            break
        stopping.wait(backoff.failed())
