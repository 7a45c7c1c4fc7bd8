"""A button board on a pseudo-terminal: the test writes DOWN/UP as the board would and reads the LED commands."""

from __future__ import annotations

import os
import select
import time
import tty


class ButtonBoard:
    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so that the port exists until the robot opens it
        self._pending = b""
        self.leds: list[tuple[float, str]] = []  # (arrival time.monotonic(), "LED LISTENING")

    def press(self) -> float:
        os.write(self.master, b"DOWN\n")
        return time.monotonic()

    def release(self) -> float:
        os.write(self.master, b"UP\n")
        return time.monotonic()

    def read_leds(self, timeout_s: float = 0.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return [led for _, led in self.leds]
            self._pending += os.read(self.master, 4096)
            *lines, self._pending = self._pending.split(b"\n")
            now = time.monotonic()
            self.leds += [(now, line.decode(errors="replace").strip()) for line in lines if line.strip()]

    def wait_for_led(self, led: str, timeout_s: float) -> float:
        """The arrival time of the first `led` line (read within timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.read_leds(0.05)
            for at, line in self.leds:
                if line == led:
                    return at
        raise TimeoutError(f"no {led!r} within {timeout_s} s; got {[line for _, line in self.leds]}")

    def wait_for_led_count(self, led: str, count: int, timeout_s: float) -> float:
        """The arrival time of the count-th `led` line (read within timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.read_leds(0.05)
            seen = [at for at, line in self.leds if line == led]
            if len(seen) >= count:
                return seen[count - 1]
        raise TimeoutError(f"no {count} x {led!r} within {timeout_s} s; got {[line for _, line in self.leds]}")

    def close(self) -> None:
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
