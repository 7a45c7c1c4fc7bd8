"""The push button on a GPIO pin, read through libgpiod (the `gpiod` package, v2 API).

For boards whose button sits on a pin of their own header instead of on a serial board. The robot gets the same
events as from the serial button (robot/controls/button_serial.py): each press gives "press" and then exactly one of
"release" or "long_press", decided by the same PressTracker, with the same debounce and rate limit. How to wire and
configure it: docs/button-gpio.md.

One daemon thread owns the line request: it requests the line, waits for edges with a short timeout (so stop() is
noticed within _WAIT_S) and requests it again with backoff when the chip is missing, the line is held by another
program, permission is denied or the chip goes away.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import gpiod
from gpiod.line import Bias, Direction, Edge, Value

from robot.controls.button_serial import (
    LED_STATES,
    ButtonCallbacks,
    ButtonEvent,
    ButtonStats,
    PressTiming,
    PressTracker,
    reconnect_loop,
)

logger = logging.getLogger(__name__)

CONSUMER = "storybot"  # what `gpioinfo` shows as the line's user
_WAIT_S = 0.1  # the longest wait for an edge; stop() promises 0.2 s
_STOP_JOIN_S = 0.2

_PRESSED = gpiod.EdgeEvent.Type.RISING_EDGE  # to active, i.e. pressed: the request says which level is active

RequestLines = Callable[..., gpiod.LineRequest]  # gpiod.request_lines, or a test's stand-in


def line_settings(active_low: bool, debounce_ms: int) -> gpiod.LineSettings:
    """An input that reports both edges, "active" meaning pressed.

    A button to ground (active_low) needs the pin pulled up, a button to 3.3 V needs it pulled down. The kernel
    debounces too (in software where the chip cannot), so chatter mostly never reaches the robot.
    """
    return gpiod.LineSettings(
        direction=Direction.INPUT,
        edge_detection=Edge.BOTH,
        bias=Bias.PULL_UP if active_low else Bias.PULL_DOWN,
        active_low=active_low,
        debounce_period=timedelta(milliseconds=debounce_ms),
    )


def describe_request_error(chip_path: str, line: int | str, error: OSError | ValueError) -> tuple[str, str]:
    """(state, one-line message naming chip, line and errno) for a failed request."""
    where = f"GPIO line {line!r} on {chip_path}"
    if isinstance(error, ValueError):  # gpiod: an offset past the chip's last line
        return "no-line", f"{where}: the chip has no such line ({error}); retrying"
    code = error.errno
    detail = f"[Errno {code}] {os.strerror(code)}" if code else str(error)
    if code == errno.ENOENT and os.path.exists(chip_path):
        return "no-line", f"{where}: the chip has no line of that name ({detail}); retrying"
    if code == errno.ENOENT:
        return "gone", f"{where}: no such chip ({detail}); retrying"
    if code in (errno.ENODEV, errno.ENOTTY):
        return "not-chip", f"{where}: {chip_path} is not a GPIO chip ({detail}); retrying"
    if code == errno.EBUSY:
        return "busy", f"{where}: busy, already requested by {_line_user(chip_path, line)} ({detail}); retrying"
    if code in (errno.EACCES, errno.EPERM):
        return "denied", f"{where}: permission denied ({detail}; is this user in the gpio group?); retrying"
    return f"error:{code}", f"{where}: cannot request it ({detail}); retrying"


def _line_user(chip_path: str, line: int | str) -> str:
    """Who holds the line, for the busy message; best effort."""
    try:
        with gpiod.Chip(chip_path) as chip:
            consumer = chip.get_line_info(line).consumer
    except (OSError, ValueError):
        consumer = ""
    return repr(consumer) if consumer else "another program"


def _release_quietly(request: gpiod.LineRequest) -> None:
    try:
        request.release()
    except OSError as error:  # the chip may be gone; the request's descriptor is closed either way
        logger.debug("releasing the button line: %s", error)


class GpioButton:
    """A push button on one GPIO line: its events to on_event, called from the button's own thread.

    set_led() is accepted and ignored (this button has no LED), so the daemon wires both buttons alike.
    """

    def __init__(
        self,
        chip_path: str,
        line: int | str,
        on_event: Callable[[ButtonEvent], None],
        *,
        active_low: bool = True,
        long_press_ms: int = 1000,
        debounce_ms: int = 30,
        max_events_per_s: int = 20,
        reopen_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0),
        on_status: Callable[[str], None] | None = None,
        request_lines: RequestLines = gpiod.request_lines,
    ) -> None:
        _check_settings(line, long_press_ms, debounce_ms, max_events_per_s, reopen_backoff_s)
        self.chip_path = chip_path
        self.line = line  # an offset, or a line name such as "GPIO17"
        self.stats = ButtonStats()  # open_attempts, reopens, debounced, rate_limited, callback_errors; no frames
        self.led_state: str | None = None  # the last state asked for; nothing shows it
        self._request_lines = request_lines
        self._settings = line_settings(active_low, debounce_ms)
        self._backoff_s = tuple(float(delay) for delay in reopen_backoff_s)
        timing = PressTiming(long_press_ms / 1000.0, debounce_ms / 1000.0, max_events_per_s)
        self._presses = PressTracker(timing, self.stats)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._callbacks = ButtonCallbacks(
            on_event, on_status, self.stats, self._stopping, what="GPIO button", log=logger
        )
        self._requested_before = False
        self._is_connected = False

    @property
    def is_connected(self) -> bool:
        return self._is_connected

    def start(self) -> None:
        """Start the button thread; it keeps trying to request the line until stop()."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the GPIO button is already running")
        self._stopping.clear()
        self._callbacks.status = ""
        self._thread = threading.Thread(target=self._run, name="storybot-button-gpio", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (within 0.2 s unless a callback blocks) and release the line; no event after this."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        if thread is threading.current_thread():
            return  # called from a callback: the thread ends when the callback returns
        thread.join(_STOP_JOIN_S)
        if thread.is_alive():
            logger.warning("the GPIO button did not stop within 0.2 s (is an on_event callback blocking?)")
            return
        self._thread = None

    def set_led(self, state: str) -> None:
        """Checked and remembered, nothing more: a button on a pin has no LED to show it."""
        if state not in LED_STATES:
            raise ValueError(f"LED state must be one of {', '.join(LED_STATES)}, not {state!r}")
        self.led_state = state

    # --- the button thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        reconnect_loop(
            self._stopping,
            self._backoff_s,
            self._request,
            self._serve,
            lambda: self._callbacks.report(
                "bug", "GPIO button failed unexpectedly; retrying", logging.ERROR, exc_info=True
            ),
        )

    def _request(self) -> gpiod.LineRequest | None:
        self.stats.open_attempts += 1
        try:
            request = self._request_lines(self.chip_path, config={self.line: self._settings}, consumer=CONSUMER)
        except (OSError, ValueError) as error:
            self._callbacks.report(*describe_request_error(self.chip_path, self.line, error))
            return None
        if self._requested_before:
            self.stats.reopens += 1
        self._requested_before = True
        self._callbacks.report("connected", f"GPIO button on {self.chip_path} line {self.line!r}", logging.INFO)
        if request.get_value(self.line) == Value.ACTIVE:
            # not a press: nobody pressed it just now. A line stuck active (often gpio_active_low set the wrong
            # way) then never makes a press at all, instead of a long press at every request.
            logger.warning(
                "GPIO button on %s line %r reads pressed; waiting for its release", self.chip_path, self.line
            )
        return request

    def _serve(self, request: gpiod.LineRequest) -> None:
        """Wait for edges and deadlines until the chip fails or stop(); the line is released on the way out."""
        self._is_connected = True
        try:
            while not self._stopping.is_set():
                if request.wait_edge_events(self._wait_s()):
                    now = time.monotonic()
                    for edge in request.read_edge_events():
                        self._callbacks.dispatch(self._presses.level(edge.event_type == _PRESSED, now))
                self._callbacks.dispatch(self._presses.poll(time.monotonic()))
        except OSError as error:  # the chip went away: ENODEV from the request's descriptor
            if not self._stopping.is_set():
                self._callbacks.report("gone", f"GPIO line {self.line!r} on {self.chip_path}: lost ({error}); retrying")
        finally:
            self._is_connected = False
            _release_quietly(request)
            self._callbacks.dispatch(self._presses.board_lost(time.monotonic()))

    def _wait_s(self) -> float:
        deadline = self._presses.next_deadline()
        if deadline is None:
            return _WAIT_S
        return min(_WAIT_S, max(0.0, deadline - time.monotonic()))


def _check_settings(
    line: int | str, long_press_ms: int, debounce_ms: int, max_events_per_s: int, reopen_backoff_s: tuple[float, ...]
) -> None:
    if isinstance(line, bool) or not isinstance(line, (int, str)) or line == "" or (isinstance(line, int) and line < 0):
        raise ValueError(f"line must be an offset (0 or more) or a line name, not {line!r}")
    if long_press_ms < 0 or debounce_ms < 0:
        raise ValueError("long_press_ms and debounce_ms must not be negative")
    if max_events_per_s < 2:
        raise ValueError("max_events_per_s must be at least 2 (a press and its ending)")
    if not reopen_backoff_s or any(not delay > 0 for delay in reopen_backoff_s):
        raise ValueError(f"reopen_backoff_s must be positive delays, not {reopen_backoff_s!r}")
