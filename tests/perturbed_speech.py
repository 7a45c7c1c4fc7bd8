"""The same spoken request perturbed a little, as a room and a microphone change it: faint noise before and after
it, room noise under it, a sub-frame offset, a gain change. Shared by tests/test_asr_robustness.py and
scripts/bench_asr_robustness.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audio.asr import SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Perturbation:
    lead_ms: int  # noise before the speech
    trail_ms: int  # noise after it
    offset_samples: int  # extra noise samples before it: a sub-frame shift of the frame grid
    noise_lsb: float  # the noise's standard deviation (0: digital zeros)
    gain: float = 1.0
    is_under_speech: bool = False  # the noise goes on under the speech too (a room), not only around it

    def apply(self, speech: np.ndarray, seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        lead = self.lead_ms * SAMPLE_RATE_HZ // 1000 + self.offset_samples
        trail = self.trail_ms * SAMPLE_RATE_HZ // 1000
        x = np.concatenate([np.zeros(lead), speech.astype(np.float64) * self.gain, np.zeros(trail)])
        if self.is_under_speech:
            x += rng.normal(0, self.noise_lsb, len(x))
        else:
            x[:lead] = rng.normal(0, self.noise_lsb, lead)
            x[len(x) - trail :] = rng.normal(0, self.noise_lsb, trail)
        return np.clip(np.round(x), -32768, 32767).astype(np.int16).tobytes()


FAINT_LSB = 3.0  # a quiet microphone's own noise
ROOM_LSB = 30.0  # about -60 dBFS: a quiet room picked up by the microphone
PERTURBATIONS = (
    Perturbation(90, 250, 7, FAINT_LSB),
    Perturbation(300, 0, 13, FAINT_LSB),
    Perturbation(600, 700, 0, FAINT_LSB),
    Perturbation(300, 250, 0, FAINT_LSB),
    Perturbation(300, 250, 7, FAINT_LSB, gain=0.6),
    Perturbation(300, 250, 13, FAINT_LSB, gain=1.5),
    Perturbation(90, 700, 13, ROOM_LSB, is_under_speech=True),
    Perturbation(300, 250, 0, ROOM_LSB, is_under_speech=True),
    Perturbation(600, 0, 7, ROOM_LSB, is_under_speech=True),
    Perturbation(300, 250, 7, ROOM_LSB, gain=0.6, is_under_speech=True),
)

# The grid of the CI flake's diagnosis: faint noise only, every lead x trail x offset (36 variants).
SWEEP = tuple(
    Perturbation(lead_ms, trail_ms, offset, FAINT_LSB)
    for lead_ms in (0, 90, 300, 600)
    for trail_ms in (0, 250, 700)
    for offset in (0, 7, 13)
)
