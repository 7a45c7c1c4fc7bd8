"""The GPIO push button (robot/controls/button_gpio.py).

This machine has no GPIO at all (no /dev/gpiochip*, no gpio-sim module, no configfs), so the tests come in three
kinds:

- edge sequences in real time: a FakeLine stands in for the kernel's line request (GpioButton's request_lines
  seam) and the real button thread, with the real PressTracker, turns them into events;
- error paths against the real gpiod library: a missing chip, /dev/null, a plain file, a chip behind a directory
  the user may not enter;
- end to end on a simulated chip (gpio-sim, configured through configfs and pulled through sysfs), which skips
  with "no gpio-sim here" where the kernel has no gpio-sim.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gpiod
import pytest
from gpiod.line import Bias, Direction, Edge, Value

from robot.controls.button_gpio import CONSUMER, GpioButton, line_settings
from robot.controls.button_serial import ButtonEvent

WAIT_S = 5.0  # the longest any single wait may take before the test fails
FAST_BACKOFF_S = (0.02, 0.05)
RISING, FALLING = gpiod.EdgeEvent.Type.RISING_EDGE, gpiod.EdgeEvent.Type.FALLING_EDGE


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.002)


class Recorder:
    """Collects what the button thread reports."""

    def __init__(self) -> None:
        self.events: list[ButtonEvent] = []
        self.statuses: list[str] = []

    def on_event(self, event: ButtonEvent) -> None:
        assert threading.current_thread().name == "storybot-button-gpio"
        self.events.append(event)

    def on_status(self, message: str) -> None:
        self.statuses.append(message)

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]

    def wait_kinds(self, *kinds: str) -> None:
        wait_until(lambda: self.kinds() == list(kinds), f"events {list(kinds)}; got {self.kinds()}")

    def wait_status(self, text: str, count: int = 1) -> str:
        def found() -> list[str]:
            return [status for status in self.statuses if text in status]

        wait_until(lambda: len(found()) >= count, f"status {text!r} x{count}; got {self.statuses}")
        return found()[-1]


class FakeLine:
    """The kernel's side of one button line: the test moves the level, the button's request sees the edges.

    request_lines() has gpiod.request_lines' signature and hands out a new request each call, so a lost chip and
    the request after it behave as on a board. No debounce of its own: chatter reaches the robot as it is.
    """

    def __init__(self, active: bool = False) -> None:
        self.is_active = active
        self.requests = 0
        self.releases = 0
        self.settings: gpiod.LineSettings | None = None
        self.consumer: str | None = None
        self.failure: OSError | None = None  # what the next read raises, as a chip that went away does
        self._edges: list[gpiod.EdgeEvent] = []
        self._seqno = 0
        self._changed = threading.Condition()

    def request_lines(self, path: str, config: dict, consumer: str | None = None) -> FakeRequest:
        ((_, settings),) = config.items()
        self.settings, self.consumer = settings, consumer
        self.requests += 1
        return FakeRequest(self)

    def levels(self, *actives: bool) -> None:
        """Set the level several times at once: the edges arrive in one batch."""
        with self._changed:
            for active in actives:
                if active != self.is_active:
                    self.is_active = active
                    self._seqno += 1
                    kind = RISING if active else FALLING
                    self._edges.append(gpiod.EdgeEvent(kind.value, time.monotonic_ns(), 3, self._seqno, self._seqno))
            self._changed.notify_all()

    def press(self) -> None:
        self.levels(True)

    def let_go(self) -> None:
        self.levels(False)

    def fail(self, error: OSError) -> None:
        with self._changed:
            self.failure = error
            self._changed.notify_all()


class FakeRequest:
    def __init__(self, line: FakeLine) -> None:
        self._line = line

    def wait_edge_events(self, timeout: float) -> bool:
        line = self._line
        with line._changed:
            return line._changed.wait_for(lambda: bool(line._edges) or line.failure is not None, timeout)

    def read_edge_events(self) -> list[gpiod.EdgeEvent]:
        line = self._line
        with line._changed:
            if line.failure is not None:
                error, line.failure = line.failure, None
                raise error
            edges, line._edges = line._edges, []
            return edges

    def get_value(self, _line: int | str) -> Value:
        return Value.ACTIVE if self._line.is_active else Value.INACTIVE

    def release(self) -> None:
        self._line.releases += 1


@pytest.fixture
def make_button() -> Iterator[Callable[..., tuple[GpioButton, Recorder]]]:
    made: list[GpioButton] = []

    def make(chip: str = "/dev/gpiochip0", line: int | str = 3, **settings) -> tuple[GpioButton, Recorder]:
        recorder = Recorder()
        settings.setdefault("reopen_backoff_s", FAST_BACKOFF_S)
        button = GpioButton(chip, line, recorder.on_event, on_status=recorder.on_status, **settings)
        made.append(button)
        button.start()
        return button, recorder

    yield make
    for button in made:
        button.stop()


def start_on(fake: FakeLine, make_button, **settings) -> tuple[GpioButton, Recorder]:
    button, recorder = make_button(request_lines=fake.request_lines, **settings)
    wait_until(lambda: button.is_connected, "the line request")
    return button, recorder


# --- the request ------------------------------------------------------------------------------------------------


def test_the_line_is_an_input_on_both_edges_pulled_towards_released() -> None:
    to_ground = line_settings(active_low=True, debounce_ms=30)
    assert (to_ground.direction, to_ground.edge_detection) == (Direction.INPUT, Edge.BOTH)
    assert (to_ground.bias, to_ground.active_low, to_ground.debounce_period.total_seconds()) == (
        Bias.PULL_UP,
        True,
        0.03,
    )
    to_supply = line_settings(active_low=False, debounce_ms=0)
    assert (to_supply.bias, to_supply.active_low, to_supply.debounce_period.total_seconds()) == (
        Bias.PULL_DOWN,
        False,
        0.0,
    )


def test_the_request_names_storybot_and_uses_the_settings(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button, debounce_ms=20)
    assert fake.consumer == CONSUMER == "storybot"
    assert fake.settings == line_settings(active_low=True, debounce_ms=20)
    assert recorder.statuses == ["GPIO button on /dev/gpiochip0 line 3"]


@pytest.mark.parametrize(
    "line, settings",
    [
        (-1, {}),
        ("", {}),
        (True, {}),
        (3.0, {}),
        (3, {"debounce_ms": -1}),
        (3, {"max_events_per_s": 1}),
        (3, {"reopen_backoff_s": ()}),
    ],
)
def test_bad_settings_are_refused(line, settings) -> None:
    with pytest.raises(ValueError):
        GpioButton("/dev/gpiochip0", line, lambda event: None, **settings)


def test_set_led_checks_the_state_and_shows_nothing() -> None:
    button = GpioButton("/dev/gpiochip0", 3, lambda event: None)
    button.set_led("thinking")
    assert button.led_state == "thinking"
    with pytest.raises(ValueError):
        button.set_led("purple")


# --- edges into events ------------------------------------------------------------------------------------------


def test_a_tap_is_a_press_then_a_release(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button)
    fake.press()
    recorder.wait_kinds("press")
    time.sleep(0.1)
    fake.let_go()
    recorder.wait_kinds("press", "release")
    assert recorder.events[1].at - recorder.events[0].at >= 0.1


def test_chatter_on_both_edges_is_one_press(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button, debounce_ms=30)
    for active in (True, False, True, False, True):  # a worn contact closing, 2 ms apart
        fake.levels(active)
        time.sleep(0.002)
    time.sleep(0.1)
    for active in (False, True, False, True, False):
        fake.levels(active)
        time.sleep(0.002)
    recorder.wait_kinds("press", "release")
    time.sleep(0.1)  # a settle deadline that would make a second press has passed
    assert recorder.kinds() == ["press", "release"]
    assert button.stats.debounced >= 6


def test_a_tap_inside_the_debounce_window_still_ends_in_a_release(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button, debounce_ms=50)
    fake.levels(True, False)  # down and up in one read
    recorder.wait_kinds("press", "release")
    press, release = recorder.events
    assert release.at - press.at >= 0.05


def test_a_long_press_comes_while_held_and_its_release_gives_nothing(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button, long_press_ms=250)
    fake.press()
    recorder.wait_kinds("press", "long_press")
    assert fake.is_active
    press, long_press = recorder.events
    # the thread sleeps until the deadline, not until its next 0.1 s wake-up (0.3 s after the press)
    assert 0.25 <= long_press.at - press.at < 0.25 + 0.04
    fake.let_go()
    time.sleep(0.15)
    assert recorder.kinds() == ["press", "long_press"]


def test_rapid_presses_each_count(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button, debounce_ms=30, long_press_ms=1000)
    for _ in range(5):
        fake.press()
        time.sleep(0.05)
        fake.let_go()
        time.sleep(0.05)
    recorder.wait_kinds(*["press", "release"] * 5)
    times = [event.at for event in recorder.events]
    assert times == sorted(times)


def test_a_flood_is_rate_limited_in_whole_presses(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button, debounce_ms=0, max_events_per_s=20)
    fake.levels(*[True, False] * 100)  # 100 presses in one read: electrical noise, not a child
    recorder.wait_kinds(*["press", "release"] * 10)
    time.sleep(0.1)
    assert recorder.kinds() == ["press", "release"] * 10
    assert button.stats.rate_limited == 180


def test_a_line_pressed_at_start_is_not_a_press(make_button, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="robot.controls.button_gpio")
    fake = FakeLine(active=True)  # held, or stuck: gpio_active_low set the wrong way
    button, recorder = start_on(fake, make_button, long_press_ms=100)
    time.sleep(0.15)
    fake.let_go()
    time.sleep(0.05)
    assert recorder.kinds() == []
    assert "reads pressed; waiting for its release" in caplog.text
    fake.press()
    time.sleep(0.05)
    fake.let_go()
    recorder.wait_kinds("press", "release")


def test_a_callback_that_raises_does_not_end_the_button(make_button) -> None:
    fake = FakeLine()
    seen: list[str] = []

    def on_event(event: ButtonEvent) -> None:
        seen.append(event.kind)
        raise RuntimeError("a bug in the application's callback")

    button = GpioButton("/dev/gpiochip0", 3, on_event, request_lines=fake.request_lines)
    button.start()
    try:
        wait_until(lambda: button.is_connected, "the line request")
        for _ in range(2):
            fake.press()
            time.sleep(0.05)
            fake.let_go()
            time.sleep(0.05)
        wait_until(lambda: seen == ["press", "release"] * 2, f"four events; got {seen}")
        assert button.stats.callback_errors == 4
    finally:
        button.stop()


# --- stop -------------------------------------------------------------------------------------------------------


def test_stop_while_idle_is_quick(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button)
    started = time.monotonic()
    button.stop()
    assert time.monotonic() - started < 0.2
    assert fake.releases == 1
    assert not button.is_connected


def test_stop_during_a_press_is_quick_and_silent(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button, long_press_ms=150)
    fake.press()
    recorder.wait_kinds("press")
    started = time.monotonic()
    button.stop()
    assert time.monotonic() - started < 0.2
    time.sleep(0.25)  # past the long-press deadline
    assert recorder.kinds() == ["press"]  # neither a long press nor a release after stop()
    assert fake.releases == 1


def test_presses_racing_stop_give_nothing_after_it(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button, debounce_ms=0)
    done = threading.Event()

    def chatter() -> None:
        while not done.is_set():
            fake.levels(not fake.is_active)
            time.sleep(0.001)

    presser = threading.Thread(target=chatter)
    presser.start()
    try:
        wait_until(lambda: len(recorder.events) >= 4, "some events from the presser")
        started = time.monotonic()
        button.stop()
        assert time.monotonic() - started < 0.2
        count = len(recorder.events)
        time.sleep(0.1)
        assert len(recorder.events) == count
    finally:
        done.set()
        presser.join(WAIT_S)


# --- a chip that goes away --------------------------------------------------------------------------------------


def test_a_lost_chip_ends_the_press_and_the_line_is_requested_again(make_button) -> None:
    fake = FakeLine()
    button, recorder = start_on(fake, make_button)
    fake.press()
    recorder.wait_kinds("press")
    fake.fail(OSError(errno.ENODEV, os.strerror(errno.ENODEV)))  # what reading a removed chip's request gives
    recorder.wait_kinds("press", "release")
    lost = recorder.wait_status("lost")
    assert lost == "GPIO line 3 on /dev/gpiochip0: lost ([Errno 19] No such device); retrying"
    recorder.wait_status("GPIO button on", count=2)
    assert (fake.requests, fake.releases, button.stats.reopens) == (2, 1, 1)
    fake.let_go()
    fake.press()
    recorder.wait_kinds("press", "release", "press")


# --- errors from the real gpiod library -------------------------------------------------------------------------


def test_a_missing_chip_is_reported_once_and_retried(make_button, tmp_path: Path) -> None:
    chip = str(tmp_path / "gpiochip7")
    button, recorder = make_button(chip, 17)
    wait_until(lambda: button.stats.open_attempts >= 5, "five attempts")
    assert recorder.statuses == [
        f"GPIO line 17 on {chip}: no such chip ([Errno 2] No such file or directory); retrying"
    ]
    started = time.monotonic()
    button.stop()
    assert time.monotonic() - started < 0.2


@pytest.mark.parametrize(
    "make_path, code",
    [(lambda tmp: "/dev/null", errno.ENODEV), (lambda tmp: tmp / "plain-file", errno.ENOTTY)],
    ids=["dev-null", "plain-file"],
)
def test_something_that_is_not_a_chip_is_named(make_button, tmp_path: Path, make_path, code: int) -> None:
    path = make_path(tmp_path)
    if path != "/dev/null":
        path.write_text("not a chip")
    button, recorder = make_button(str(path), "GPIO17")
    status = recorder.wait_status("is not a GPIO chip")
    assert status == (
        f"GPIO line 'GPIO17' on {path}: {path} is not a GPIO chip ([Errno {code}] {os.strerror(code)}); retrying"
    )
    assert not button.is_connected


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_permission_denied_is_named(tmp_path: Path) -> None:
    """A user who may not reach the chip: a real EACCES from gpiod, in a child process running as nobody."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    chip = locked / "gpiochip0"
    chip.touch()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run the button until its first status, hand it over
        try:
            os.setgid(65534)
            os.setuid(65534)
            statuses: list[str] = []
            button = GpioButton(str(chip), 4, lambda event: None, on_status=statuses.append)
            button.start()
            wait_until(lambda: bool(statuses), "a status")
            button.stop()
            os.write(write_end, statuses[0].encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        message = os.read(read_end, 4096).decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert message == (
        f"GPIO line 4 on {chip}: permission denied ([Errno 13] Permission denied; is this user in the gpio group?);"
        " retrying"
    )


# --- end to end on a simulated chip (gpio-sim) ------------------------------------------------------------------

GPIO_SIM = Path("/sys/kernel/config/gpio-sim")
SIM_LINE = 3
SIM_LINE_NAME = "storybot-button"


@dataclass(frozen=True)
class SimChip:
    path: str  # /dev/gpiochipN
    sysfs: Path  # /sys/devices/platform/gpio-sim.M/gpiochipN

    def pull(self, offset: int, direction: str) -> None:
        """Pull a line "up" or "down" from outside, as a button does (pressed: down, for a button to ground)."""
        (self.sysfs / f"sim_gpio{offset}" / "pull").write_text(f"pull-{direction}")


@pytest.fixture
def sim_chip() -> Iterator[SimChip]:
    """A live gpio-sim chip of 8 lines, line 3 named storybot-button; taken down again afterwards."""
    if not GPIO_SIM.is_dir() and os.geteuid() == 0:
        subprocess.run(["modprobe", "gpio-sim"], capture_output=True, check=False, timeout=30)
    if not GPIO_SIM.is_dir():
        pytest.skip("no gpio-sim here (needs the gpio-sim kernel module and configfs on /sys/kernel/config)")
    device = GPIO_SIM / f"storybot-{os.getpid()}"
    bank = device / "bank0"
    line = bank / f"line{SIM_LINE}"
    line.mkdir(parents=True)
    try:
        (bank / "num_lines").write_text("8")
        (line / "name").write_text(SIM_LINE_NAME)
        (device / "live").write_text("1")
        chip_name = (bank / "chip_name").read_text().strip()
        sysfs = Path("/sys/devices/platform") / (device / "dev_name").read_text().strip() / chip_name
        chip = SimChip(f"/dev/{chip_name}", sysfs)
        wait_until(lambda: os.path.exists(chip.path), f"{chip.path} from devtmpfs")
        yield chip
    finally:
        if (device / "live").read_text().strip() == "1":
            (device / "live").write_text("0")
        line.rmdir()
        bank.rmdir()
        device.rmdir()


@pytest.mark.parametrize("line", [SIM_LINE, SIM_LINE_NAME], ids=["offset", "name"])
def test_sim_presses_release_and_long_press(make_button, sim_chip: SimChip, line: int | str) -> None:
    button, recorder = make_button(sim_chip.path, line, long_press_ms=300, debounce_ms=10)
    recorder.wait_status("GPIO button on")
    time.sleep(0.05)  # our pull-up has settled the line: released
    assert recorder.kinds() == []
    sim_chip.pull(SIM_LINE, "down")
    recorder.wait_kinds("press")
    time.sleep(0.1)
    sim_chip.pull(SIM_LINE, "up")
    recorder.wait_kinds("press", "release")
    sim_chip.pull(SIM_LINE, "down")
    recorder.wait_kinds("press", "release", "press", "long_press")
    sim_chip.pull(SIM_LINE, "up")
    time.sleep(0.1)
    assert recorder.kinds() == ["press", "release", "press", "long_press"]
    with gpiod.Chip(sim_chip.path) as chip:
        assert chip.get_line_info(SIM_LINE).consumer == CONSUMER
    button.stop()
    with gpiod.Chip(sim_chip.path) as chip:
        assert not chip.get_line_info(SIM_LINE).used


def test_sim_a_busy_line_names_its_user_until_it_is_free(make_button, sim_chip: SimChip) -> None:
    settings = gpiod.LineSettings(direction=Direction.INPUT)
    other = gpiod.request_lines(sim_chip.path, {SIM_LINE: settings}, consumer="someone-else")
    try:
        button, recorder = make_button(sim_chip.path, SIM_LINE)
        status = recorder.wait_status("busy")
        assert status == (
            f"GPIO line {SIM_LINE} on {sim_chip.path}: busy, already requested by 'someone-else'"
            " ([Errno 16] Device or resource busy); retrying"
        )
    finally:
        other.release()
    recorder.wait_status("GPIO button on")


def test_sim_a_line_the_chip_does_not_have_is_named(make_button, sim_chip: SimChip) -> None:
    by_name, by_name_recorder = make_button(sim_chip.path, "no-such-line")
    by_offset, by_offset_recorder = make_button(sim_chip.path, 99)
    assert "the chip has no line of that name ([Errno 2]" in by_name_recorder.wait_status("no line")
    assert "the chip has no such line" in by_offset_recorder.wait_status("no such line")
