"""A piece of audio: mono int16 samples at a sample rate, and the conversions every audio module needs."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # shape (n,), int16, mono
    rate_hz: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate_hz

    def resampled(self, rate_hz: int) -> Audio:
        if rate_hz == self.rate_hz or len(self.samples) == 0:
            return Audio(self.samples, rate_hz)
        import soxr

        out = soxr.resample(self.samples, self.rate_hz, rate_hz, quality="HQ")
        return Audio(np.asarray(out, dtype=np.int16), rate_hz)

    def scaled(self, gain: float) -> Audio:
        if gain >= 0.999:
            return self
        return Audio((self.samples.astype(np.float32) * gain).astype(np.int16), self.rate_hz)


def read_wav(data: bytes) -> Audio:
    """A PCM16 WAV (any channel count) as mono Audio."""
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"WAV has {8 * w.getsampwidth()}-bit samples, expected 16-bit")
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        channels = w.getnchannels()
        rate = w.getframerate()
    if channels > 1:
        frames = frames.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return Audio(frames.astype(np.int16), rate)


def to_mono_int16(block: np.ndarray) -> np.ndarray:
    """A capture block of shape (frames, channels) as mono int16."""
    if block.ndim == 2 and block.shape[1] > 1:
        return block.astype(np.int32).mean(axis=1).astype(np.int16)
    return block.reshape(-1).astype(np.int16, copy=False)


def rms_dbfs(samples: np.ndarray) -> float:
    """Loudness of int16 samples in dB relative to full scale (-120 for silence)."""
    if len(samples) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    return 20.0 * np.log10(max(rms, 1e-6) / 32768.0)
