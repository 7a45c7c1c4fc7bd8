"""robot/plumbing/backoff.py: the one backoff rule of the microphone, the engine and the buttons."""

from __future__ import annotations

import pytest

from robot.plumbing.backoff import Backoff


def test_the_steps_grow_to_their_cap_and_start_again_after_a_success():
    backoff = Backoff((1.0, 2.0, 4.0))
    assert [backoff.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.failures == 5
    backoff.succeeded()
    assert backoff.failed() == 1.0


def test_only_a_run_that_lasted_long_enough_starts_the_steps_again():
    backoff = Backoff((5.0, 10.0, 20.0), healthy_after_s=60.0)
    backoff.failed(), backoff.failed()
    backoff.ran_for(59.0)
    assert backoff.failed() == 20.0
    backoff.ran_for(60.0)
    assert backoff.failed() == 5.0


@pytest.mark.parametrize("steps", [(), (1.0, 0.0), (-1.0,)])
def test_steps_must_be_positive_delays(steps):
    with pytest.raises(ValueError, match="backoff steps must be positive delays"):
        Backoff(steps)
