"""The serial push-button (robot/controls/button_serial.py) on real pseudo-terminals.

A pty stands in for the board: the test writes what a board would on the master end and reads the LED commands
there. The robot opens the slave end through a symlink in tmp_path, as it would open /dev/serial/by-id/...; closing
the master end is a real unplug (the slave vanishes and a read returns "device reports readiness to read but
returned no data"), and re-pointing the symlink at a new pty is a replug under another /dev name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import select
import threading
import time
import tracemalloc
import tty
from collections.abc import Callable
from pathlib import Path

import pytest
import serial
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from robot.controls import button_serial
from robot.controls.button_serial import (
    MAX_LINE_BYTES,
    ButtonEvent,
    ButtonStats,
    Frame,
    LineSplitter,
    PressTiming,
    PressTracker,
    SerialButton,
    parse_frame,
)

FAST_BACKOFF_S = (0.05, 0.1, 0.2, 0.4)
WAIT_S = 5.0  # the longest any single wait may take before the test fails
LED_LINES = {b"LED IDLE", b"LED LISTENING", b"LED THINKING", b"LED SPEAKING", b"LED ERROR"}


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.002)


class Board:
    """The board's end of a pty: writes frames, reads the robot's LED lines."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line discipline: bytes pass as they are
        self.name = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self.raw = b""  # everything the robot wrote
        self._closed = False

    def send(self, data: bytes, timeout_s: float = WAIT_S) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + timeout_s
        while view:
            _, writable, _ = select.select([], [self.master], [], max(0.0, deadline - time.monotonic()))
            if not writable:
                raise AssertionError(f"the robot did not take {len(view)} more bytes within {timeout_s} s")
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                time.sleep(0.001)

    def lines(self, wait_s: float = 0.0) -> list[bytes]:
        """The non-empty lines the robot wrote so far, after reading for wait_s."""
        deadline = time.monotonic() + wait_s
        while True:
            readable, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                break
            self.raw += os.read(self.master, 65536)
        return [line for line in self.raw.split(b"\n")[:-1] if line]

    def wait_line(self, line: bytes, count: int = 1) -> None:
        wait_until(lambda: self.lines(0.01).count(line) >= count, f"{line!r} x{count}; got {self.lines()}")

    def unplug(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.master)
            os.close(self.slave)


class Recorder:
    """Collects what the reader thread reports."""

    def __init__(self, fail_first_event: bool = False) -> None:
        self.events: list[ButtonEvent] = []
        self.statuses: list[str] = []
        self._fail_first_event = fail_first_event

    def on_event(self, event: ButtonEvent) -> None:
        assert threading.current_thread().name == "storybot-button"
        self.events.append(event)
        if self._fail_first_event and len(self.events) == 1:
            raise RuntimeError("a bug in the application's callback")

    def on_status(self, message: str) -> None:
        self.statuses.append(message)

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]

    def wait_kinds(self, *kinds: str) -> None:
        wait_until(lambda: self.kinds() == list(kinds), f"events {list(kinds)}; got {self.kinds()}")


def plug(link: Path, board: Board) -> None:
    """Point the by-id link at the board, atomically, as udev does on a (re)plug."""
    new = link.with_name(link.name + ".new")
    os.symlink(board.name, new)
    os.replace(new, link)


def open_fd_count() -> int:
    """Descriptors of this process; the least of a few looks, so a reopen in progress does not count."""
    counts = []
    for _ in range(5):
        counts.append(len(os.listdir("/proc/self/fd")))
        time.sleep(0.01)
    return min(counts)


@pytest.fixture
def link(tmp_path: Path) -> Path:
    folder = tmp_path / "serial" / "by-id"
    folder.mkdir(parents=True)
    return folder / "usb-storybot_button_0001-if00"


@pytest.fixture
def boards():
    made: list[Board] = []

    def make() -> Board:
        made.append(Board())
        return made[-1]

    yield make
    for board in made:
        board.unplug()


@pytest.fixture
def make_button(link: Path):
    made: list[SerialButton] = []

    def make(recorder: Recorder, **settings_) -> SerialButton:
        settings_.setdefault("reopen_backoff_s", FAST_BACKOFF_S)
        made.append(SerialButton(str(link), recorder.on_event, on_status=recorder.on_status, **settings_))
        return made[-1]

    yield make
    for button in made:
        button.stop()


@pytest.fixture
def connect(boards, link: Path, make_button):
    """A started button, connected to a fresh board."""

    def start(recorder: Recorder | None = None, **settings_) -> tuple[Board, SerialButton, Recorder]:
        board = boards()
        plug(link, board)
        recorder = recorder or Recorder()
        button = make_button(recorder, **settings_)
        button.start()
        wait_until(lambda: button.is_connected, "the button to connect")
        return board, button, recorder

    return start


def assert_paired(events: list[ButtonEvent]) -> None:
    """Each press is followed by exactly one release or long_press, and nothing else comes between."""
    kinds = [event.kind for event in events]
    assert kinds[0::2] == ["press"] * len(kinds[0::2]), kinds
    assert all(kind in ("release", "long_press") for kind in kinds[1::2]), kinds


def assert_rate(events: list[ButtonEvent], max_per_s: int) -> None:
    times = [event.at for event in events]
    assert times == sorted(times)
    for end in times:
        in_window = sum(1 for at in times if end - 1.0 < at <= end)
        assert in_window <= max_per_s, f"{in_window} events in the second before {end}"


# --- events ---------------------------------------------------------------------------------------------------


def test_press_and_release(connect) -> None:
    board, button, recorder = connect()
    board.send(b"DOWN\n")
    recorder.wait_kinds("press")
    time.sleep(0.05)  # longer than debounce_ms
    board.send(b"UP\n")
    recorder.wait_kinds("press", "release")
    press, release = recorder.events
    assert press.at < release.at <= time.monotonic()
    assert button.stats.frames_ok == 2
    assert button.stats.frames_bad == button.stats.debounced == button.stats.rate_limited == 0


def test_long_press_fires_while_held_and_its_up_gives_no_release(connect) -> None:
    board, button, recorder = connect(long_press_ms=300, debounce_ms=10)
    board.send(b"DOWN\n")
    recorder.wait_kinds("press", "long_press")  # no UP was sent: the child is still holding the button
    press, long_press = recorder.events
    assert 0.3 - 1e-6 <= long_press.at - press.at < 0.3 + 0.25
    board.send(b"UP\n")
    wait_until(lambda: button.stats.frames_ok == 2, "the UP to be read")
    time.sleep(0.05)
    assert recorder.kinds() == ["press", "long_press"]
    board.send(b"DOWN\n")  # a short press after a long one is a plain press and release
    recorder.wait_kinds("press", "long_press", "press")
    board.send(b"UP\n")
    recorder.wait_kinds("press", "long_press", "press", "release")


def test_long_from_the_board_crlf_and_hello(connect) -> None:
    board, button, recorder = connect(long_press_ms=5000)
    board.send(b"HELLO test-board 1.0\r\n")
    wait_until(lambda: button.board_hello == "test-board 1.0", "HELLO")
    board.send(b"DOWN\r\n")
    recorder.wait_kinds("press")
    board.send(b"LONG\r\n")
    recorder.wait_kinds("press", "long_press")
    assert recorder.events[1].at - recorder.events[0].at < 1.0  # the board's LONG, not the 5 s timer
    board.send(b"UP\r\nLONG\r\n")  # the UP closes nothing; a LONG outside a press means nothing
    wait_until(lambda: button.stats.frames_ok == 5, "all frames to be read")
    time.sleep(0.05)
    assert recorder.kinds() == ["press", "long_press"]
    board.send(b"DOWN\n")
    recorder.wait_kinds("press", "long_press", "press")
    board.send(b"HELLO restarted\n")  # the board restarted mid-press: it will send no UP for it
    recorder.wait_kinds("press", "long_press", "press", "release")
    assert button.stats.frames_bad == 0


def test_frames_split_across_reads_are_joined(connect) -> None:
    board, _, recorder = connect()
    board.send(b"DO")
    time.sleep(0.05)  # the robot reads "DO" on its own
    board.send(b"WN\r")
    time.sleep(0.05)
    board.send(b"\n")
    recorder.wait_kinds("press")


def test_bounce_is_ignored_and_a_quick_tap_still_ends_in_a_release(connect) -> None:
    board, button, recorder = connect(debounce_ms=30)
    board.send(b"DOWN\nUP\nDOWN\nUP\nDOWN\n")  # a chattering contact closing
    recorder.wait_kinds("press")
    assert button.stats.debounced == 4
    time.sleep(0.1)
    assert recorder.kinds() == ["press"]  # the button settled down: no release
    board.send(b"UP\nDOWN\nUP\n")  # and chattering open
    recorder.wait_kinds("press", "release")
    time.sleep(0.1)
    assert recorder.kinds() == ["press", "release"]
    assert button.stats.debounced == 6
    board.send(b"DOWN\nUP\n")  # a tap shorter than the debounce time: the UP is followed when the window ends
    recorder.wait_kinds("press", "release", "press", "release")
    assert recorder.events[3].at - recorder.events[2].at >= 0.03 - 1e-6


def test_1000_presses_a_second_give_at_most_max_events_per_s(connect) -> None:
    board, button, recorder = connect(debounce_ms=0, max_events_per_s=20)
    for _ in range(20):  # 1000 presses in about a second
        board.send(b"DOWN\nUP\n" * 50)
        time.sleep(0.05)
    wait_until(lambda: button.stats.frames_ok == 2000, "all 2000 frames to be read")
    events = list(recorder.events)
    assert button.stats.rate_limited > 0
    assert len(events) + button.stats.rate_limited == 2000  # every would-be event was sent or counted
    assert 20 <= len(events) <= 60
    assert_paired(events)
    assert_rate(events, 20)
    time.sleep(max(0.0, events[-1].at + 1.0 - time.monotonic()))
    board.send(b"DOWN\n")
    wait_until(lambda: len(recorder.events) == len(events) + 1, "a press after the flood")
    board.send(b"UP\n")
    wait_until(lambda: len(recorder.events) == len(events) + 2, "a release after the flood")
    assert recorder.kinds()[-2:] == ["press", "release"]


def test_a_failing_callback_does_not_stop_the_reader(connect) -> None:
    board, button, recorder = connect(recorder=Recorder(fail_first_event=True))
    board.send(b"DOWN\n")
    recorder.wait_kinds("press")
    board.send(b"UP\n")
    recorder.wait_kinds("press", "release")
    assert button.stats.callback_errors == 1
    assert button.is_connected


# --- LED ------------------------------------------------------------------------------------------------------


def test_led_latest_state_wins_and_is_resent_after_hello(boards, link, make_button) -> None:
    recorder = Recorder()
    button = make_button(recorder)
    button.set_led("listening")  # the port is not open: only the latest state is kept
    button.set_led("error")
    with pytest.raises(ValueError):
        button.set_led("purple")
    board = boards()
    plug(link, board)
    button.start()
    board.wait_line(b"LED ERROR")
    assert board.lines(0.1) == [b"LED ERROR"]
    assert board.raw.startswith(b"\nLED ERROR\n")  # a newline first ends whatever half line the board holds
    for state in ("listening", "thinking", "speaking"):
        button.set_led(state)
    board.wait_line(b"LED SPEAKING")
    lines = board.lines(0.1)
    assert lines[-1] == b"LED SPEAKING" and set(lines) <= LED_LINES
    slowest_s = 0.0
    for state in ("idle", "thinking", "idle"):  # set_led wakes the reader; it does not wait for its 1 s tick
        count = board.lines().count(f"LED {state.upper()}".encode())
        asked_at = time.monotonic()
        button.set_led(state)
        board.wait_line(f"LED {state.upper()}".encode(), count + 1)
        slowest_s = max(slowest_s, time.monotonic() - asked_at)
    assert slowest_s < 0.5
    board.send(b"HELLO rebooted\n")  # a board that restarted has forgotten its LED
    board.wait_line(b"LED IDLE", 3)


def test_a_board_that_stops_reading_does_not_stall_the_reader(connect) -> None:
    board, button, recorder = connect()
    os.set_blocking(board.slave, False)
    for size in (256, 1):  # fill the robot-to-board direction, as a board that never reads would
        try:
            while True:
                os.write(board.slave, b"x" * size)
        except BlockingIOError:
            pass
    cpu_before = time.process_time()
    button.set_led("speaking")
    time.sleep(0.4)
    board.send(b"DOWN\n")
    board.send(b"UP\n")
    recorder.wait_kinds("press", "release")
    time.sleep(0.9)
    assert time.process_time() - cpu_before < 0.1  # waiting for the board is not spinning
    board.wait_line(b"LED SPEAKING")  # the board reads again: the state arrives, on a line of its own
    assert button.is_connected


# --- the port: unplug, replug, busy, missing, stop -------------------------------------------------------------


def test_unplug_and_replug_through_the_symlink(boards, link, make_button) -> None:
    """RELIABILITY row 15: the port vanishes (board unplugged) and comes back under another /dev name."""
    first = boards()
    plug(link, first)
    recorder = Recorder()
    button = make_button(recorder, reopen_backoff_s=FAST_BACKOFF_S)
    button.set_led("speaking")
    button.start()
    first.wait_line(b"LED SPEAKING")
    first.send(b"DOWN\n")
    recorder.wait_kinds("press")
    second = boards()  # made while the first exists, so it gets another /dev/pts number
    assert second.name != first.name

    unplugged_at = time.monotonic()
    first.unplug()
    recorder.wait_kinds("press", "release")  # the press open at the unplug ends there
    assert not button.is_connected
    assert 0 <= recorder.events[1].at - unplugged_at < 0.5
    attempts, cpu = button.stats.open_attempts, time.process_time()
    time.sleep(1.5)
    attempts, cpu = button.stats.open_attempts - attempts, time.process_time() - cpu
    assert 2 <= attempts <= 8, f"{attempts} open attempts in 1.5 s: the backoff does not grow"
    assert cpu < 0.3, f"{cpu:.2f} s of CPU in 1.5 s while the port is gone"
    button.set_led("listening")  # while unplugged: kept, not queued; the last is what the first board showed,
    button.set_led("speaking")  # so only a re-send after the reopen brings it to the new board

    plug(link, second)
    wait_until(lambda: button.is_connected, "the replugged board")
    second.wait_line(b"LED SPEAKING")
    assert second.lines(0.1) == [b"LED SPEAKING"]
    second.send(b"DOWN\n")
    recorder.wait_kinds("press", "release", "press")
    time.sleep(0.05)
    second.send(b"UP\n")
    recorder.wait_kinds("press", "release", "press", "release")
    assert button.stats.reopens == 1
    assert recorder.statuses[0] == f"connected to {link} (-> {first.name})"
    assert recorder.statuses[1].startswith(f"unplugged: {link} (device reports readiness to read but returned no")
    assert recorder.statuses[1].endswith("; retrying")
    assert recorder.statuses[2:] == [f"connected to {link} (-> {second.name})"]  # no "no such port" in between


def test_port_taken_by_another_program_is_reported_once(boards, link, make_button) -> None:
    """RELIABILITY row 17: another program holds the port exclusively; the robot waits its turn."""
    board = boards()
    plug(link, board)
    fcntl.flock(board.slave, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what pyserial's exclusive=True does
    recorder = Recorder()
    button = make_button(recorder)
    button.start()
    busy = f"port busy: {link} (another program has it open); retrying"
    wait_until(lambda: recorder.statuses == [busy], "the busy status")
    fds, attempts = open_fd_count(), button.stats.open_attempts
    time.sleep(1.2)
    assert recorder.statuses == [busy]
    assert 2 <= button.stats.open_attempts - attempts <= 8
    assert open_fd_count() <= fds  # a failed open leaks nothing
    assert not button.is_connected
    fcntl.flock(board.slave, fcntl.LOCK_UN)
    wait_until(lambda: button.is_connected, "the port to be free")
    board.send(b"DOWN\n")
    recorder.wait_kinds("press")
    assert recorder.statuses == [busy, f"connected to {link} (-> {board.name})"]
    with pytest.raises(serial.SerialException):  # and now the robot holds it exclusively
        serial.Serial(str(link), exclusive=True)


def test_ebusy_on_open_is_port_busy_and_the_link_is_opened_as_given(boards, link, make_button, monkeypatch) -> None:
    board = boards()
    plug(link, board)
    opened: list[str] = []
    real_open_port = button_serial.open_port

    def open_port(path: str, baudrate: int) -> serial.Serial:
        opened.append(path)
        if len(opened) <= 3:  # a TIOCEXCL holder (root ignores TIOCEXCL, so it is simulated here)
            raise serial.SerialException(errno.EBUSY, f"could not open port {path}: [Errno 16] Device busy")
        return real_open_port(path, baudrate)

    monkeypatch.setattr(button_serial, "open_port", open_port)
    recorder = Recorder()
    button = make_button(recorder)
    button.start()
    wait_until(lambda: button.is_connected, "the port to be free")
    assert recorder.statuses == [
        f"port busy: {link} (another program has it open); retrying",
        f"connected to {link} (-> {board.name})",
    ]
    assert opened == [str(link)] * 4


def test_missing_port_is_reported_once_then_found(boards, link, make_button) -> None:
    recorder = Recorder()
    button = make_button(recorder)
    button.start()
    wait_until(lambda: recorder.statuses == [f"no such port {link}; retrying"], "the missing-port status")
    time.sleep(0.5)
    assert recorder.statuses == [f"no such port {link}; retrying"]
    board = boards()
    plug(link, board)
    wait_until(lambda: button.is_connected, "the board to appear")
    board.send(b"DOWN\n")
    recorder.wait_kinds("press")
    assert button.stats.reopens == 0


def test_stop_is_prompt_and_releases_the_port(connect, link, make_button) -> None:
    board, button, _ = connect()
    started = time.monotonic()
    button.stop()
    assert time.monotonic() - started < 1.0
    assert not button.is_connected
    assert not any(thread.name == "storybot-button" for thread in threading.enumerate())
    serial.Serial(str(link), exclusive=True).close()  # nobody holds the port any more
    button.stop()  # a second stop is harmless

    os.remove(link)
    recorder = Recorder()
    waiting = make_button(recorder, reopen_backoff_s=(30.0,))
    waiting.start()
    wait_until(lambda: len(recorder.statuses) == 1, "the missing-port status")
    started = time.monotonic()
    waiting.stop()  # in the middle of a 30 s backoff
    assert time.monotonic() - started < 1.0
    assert not any(thread.name == "storybot-button" for thread in threading.enumerate())


# --- malformed input ------------------------------------------------------------------------------------------


def test_malformed_input_then_valid_frames_and_memory_stays_flat(connect) -> None:
    board, button, recorder = connect(debounce_ms=30)
    rng = random.Random(20240501)
    payloads = [
        rng.randbytes(4096),  # noise
        b"\n" + b"\x00" * 300 + b"\n",  # NUL
        b"DOWN\x00\n",
        b"\xff\xfe\xfd\n",  # invalid UTF-8
        b"UP\xc3\x28\n",
        b"\xed\xa0\x80DOWN\n",
        b"down\n",  # nearly frames
        b"DOWN \n",
        b" UP\n",
        b"DOWN\r\r\n",
        b"LED IDLE\n",
        b"HELLO\x07\n",
        b"DOW",  # a partial frame that never ends properly
        b"N" * 40 + b"\n",
        b"A" * 65536,  # 64 KB without a newline ...
        b"DOWN\n",  # ... so this DOWN is its tail, not a frame
        b"DOWN\nUP\n" * 1000,  # 1000 presses at once, and bounce
        b"DOWN\nUP\nDOWN\nUP\n",
        b"UP\n",
    ]
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        after: list[int] = []
        for round_ in (1, 2):  # the second round shows that nothing accumulates
            for payload in payloads:
                board.send(payload)
            board.send(f"HELLO fuzz round {round_}\n".encode())
            wait_until(lambda round_=round_: button.board_hello == f"fuzz round {round_}", "the input to be read")
            after.append(tracemalloc.get_traced_memory()[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - baseline < 48 * 1024, f"the reader held {peak - baseline} bytes at its peak"
    assert after[0] - baseline < 16 * 1024, f"{after[0] - baseline} bytes more after the fuzz"
    assert after[1] - after[0] < 4 * 1024, f"{after[1] - after[0]} bytes more after a second round"
    stats = button.stats
    assert stats.line_buffer_peak_bytes <= MAX_LINE_BYTES
    assert stats.frames_bad >= 2 * 16
    assert stats.bytes_discarded >= 2 * (65536 + 4096 // 2)
    assert stats.debounced > 0
    assert button.is_connected

    assert_paired(recorder.events)
    count = len(recorder.events)
    time.sleep(max(0.0, recorder.events[-1].at + 1.0 - time.monotonic()))  # out of the rate limiter's window
    board.send(b"DOWN\n")
    wait_until(lambda: len(recorder.events) == count + 1, "a press after the fuzz")
    time.sleep(0.05)
    board.send(b"UP\n")
    wait_until(lambda: len(recorder.events) == count + 2, "a release after the fuzz")
    assert recorder.kinds()[count:] == ["press", "release"]


def test_random_noise_never_hides_the_next_frame(connect) -> None:
    board, button, recorder = connect(debounce_ms=5, max_events_per_s=1000)

    @settings(max_examples=40, deadline=None, database=None)
    @given(noise=st.binary(max_size=300))
    def check(noise: bytes) -> None:
        assume(not any(word in noise for word in (b"DOWN", b"UP", b"LONG", b"HELLO")))
        count = len(recorder.events)
        board.send(noise + b"\nDOWN\n")
        wait_until(lambda: len(recorder.events) == count + 1, "a press after the noise")
        time.sleep(0.01)
        board.send(b"UP\n")
        wait_until(lambda: len(recorder.events) == count + 2, "a release")
        assert recorder.kinds()[count:] == ["press", "release"]

    check()
    assert button.stats.line_buffer_peak_bytes <= MAX_LINE_BYTES


# --- the parts, without a port --------------------------------------------------------------------------------


def test_parse_frame() -> None:
    good = {
        b"DOWN\n": Frame("DOWN"),
        b"UP\r\n": Frame("UP"),
        b"LONG\n": Frame("LONG"),
        b"HELLO\n": Frame("HELLO"),
        b"HELLO storybot-button 1.0\r\n": Frame("HELLO", "storybot-button 1.0"),
        b"\n": Frame(""),
        b"\r\n": Frame(""),
    }
    for line, frame in good.items():
        assert parse_frame(line) == frame, line
    bad = [b"DOWN", b"down\n", b"DOWN \n", b" DOWN\n", b"\rDOWN\n", b"DOWN\r\r\n", b"DO\x00WN\n", b"UP\xff\n",
           b"LED IDLE\n", b"HELLOX\n", b"HELLO \xc3\xa9\n", b"HELLO " + b"x" * 26 + b"\n"]  # fmt: skip
    for line in bad:
        assert parse_frame(line) is None, line
    assert parse_frame(b"HELLO " + b"x" * 25 + b"\n") == Frame("HELLO", "x" * 25)  # 32 bytes exactly


def test_line_splitter_resynchronises_after_64_kb_without_a_newline() -> None:
    stats = ButtonStats()
    splitter = LineSplitter(stats)
    for _ in range(64):
        assert splitter.feed(b"A" * 1024) == []
        assert splitter.buffered_bytes == 0
    assert splitter.feed(b"DOWN\nUP\n") == [b"UP\n"]
    assert stats.frames_bad == 1
    assert stats.bytes_discarded == 65536 + len(b"DOWN\n")
    assert stats.line_buffer_peak_bytes <= MAX_LINE_BYTES


@settings(max_examples=300, database=None)
@given(chunks=st.lists(st.binary(max_size=80), max_size=40))
def test_line_splitter_stays_bounded(chunks: list[bytes]) -> None:
    stats = ButtonStats()
    splitter = LineSplitter(stats)
    for chunk in chunks:
        for line in splitter.feed(chunk):
            assert line.endswith(b"\n") and len(line) <= MAX_LINE_BYTES
        assert splitter.buffered_bytes < MAX_LINE_BYTES
        parse_frame(chunk)  # never raises
    assert stats.line_buffer_peak_bytes <= MAX_LINE_BYTES
    assert splitter.feed(b"\nDOWN\n")[-1] == b"DOWN\n"


@settings(max_examples=300, database=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 400), st.sampled_from(["DOWN", "UP", "LONG", "poll"])), min_size=1, max_size=60
    ),
    debounce_ms=st.integers(0, 50),
    long_press_ms=st.sampled_from([0, 100, 300]),
    max_events_per_s=st.integers(2, 8),
)
def test_press_tracker_pairs_events_and_respects_the_rate(
    steps: list[tuple[int, str]], debounce_ms: int, long_press_ms: int, max_events_per_s: int
) -> None:
    tracker = PressTracker(PressTiming(long_press_ms / 1000, debounce_ms / 1000, max_events_per_s), ButtonStats())
    now = 1000.0
    events: list[ButtonEvent] = []
    for step_ms, action in steps:
        now += step_ms / 1000
        deadline = tracker.next_deadline()
        assert deadline is None or tracker.poll(min(now, deadline) - 1e-9) == []  # nothing happens early
        if action == "poll":
            events += tracker.poll(now)
        elif action == "LONG":
            events += tracker.board_long(now)
        else:
            events += tracker.level(action == "DOWN", now)
    if not events:
        return
    assert_paired(events)
    assert_rate(events, max_events_per_s)
    if long_press_ms == 0 and all(action != "LONG" for _, action in steps):
        assert "long_press" not in [event.kind for event in events]
    if all(action != "LONG" for _, action in steps):
        for press, end in zip(events[0::2], events[1::2], strict=False):
            if end.kind == "long_press":
                assert end.at - press.at >= long_press_ms / 1000 - 1e-9
