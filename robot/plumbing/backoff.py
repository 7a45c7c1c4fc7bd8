"""The one backoff rule for every device and child that is reopened or restarted (the microphone, the engine, the
buttons): capped steps of delay after consecutive failures, and back to the first step after success or after a run
that lasted long enough to count as healthy."""

from __future__ import annotations

import math
from collections.abc import Sequence


class Backoff:
    def __init__(self, steps_s: Sequence[float], *, healthy_after_s: float = math.inf) -> None:
        if not steps_s or any(not step > 0 for step in steps_s):
            raise ValueError(f"backoff steps must be positive delays, not {tuple(steps_s)!r}")
        self.steps_s = tuple(float(step) for step in steps_s)
        self.healthy_after_s = healthy_after_s
        self.failures = 0  # in a row

    def failed(self) -> float:
        """One more failure: the delay to wait before the next try."""
        delay_s = self.steps_s[min(self.failures, len(self.steps_s) - 1)]
        self.failures += 1
        return delay_s

    def succeeded(self) -> None:
        self.failures = 0

    def ran_for(self, lasted_s: float) -> None:
        """A connection or child that ran this long before it ended: healthy ones start the steps again."""
        if lasted_s >= self.healthy_after_s:
            self.failures = 0
