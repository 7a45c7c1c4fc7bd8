"""A piece of audio: mono int16 samples at a sample rate, and the conversions every audio module needs.

numpy is imported only where samples are computed on: a WAV read from a synthesizer (mono PCM16) is kept as its
raw bytes, so a button-only daemon that hands speech to `aplay` never loads numpy (about 14 MiB of RSS).
"""

from __future__ import annotations

import io
import math
import wave
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import numpy as np

FULL_SCALE_SQUARED = 32768.0 * 32768.0


class Audio:
    """Mono int16 audio: from samples (a numpy array) or from little-endian PCM bytes, converted on demand."""

    __slots__ = ("_samples", "_pcm", "rate_hz")

    def __init__(self, samples: np.ndarray | None = None, rate_hz: int = 16000, *, pcm: bytes | None = None) -> None:
        if samples is None and pcm is None:
            raise ValueError("Audio needs samples or pcm")
        self._samples = samples
        self._pcm = pcm
        self.rate_hz = rate_hz

    @property
    def samples(self) -> np.ndarray:  # shape (n,), int16, mono
        if self._samples is None:
            import numpy as np

            assert self._pcm is not None  # one of the two is always there (__init__)
            self._samples = np.frombuffer(self._pcm, dtype="<i2").astype(np.int16)
        return self._samples

    @property
    def pcm(self) -> bytes:
        """The samples as little-endian signed 16-bit bytes (what `aplay -f S16_LE` plays)."""
        if self._pcm is None:
            assert self._samples is not None  # one of the two is always there (__init__)
            self._pcm = self._samples.astype("<i2").tobytes()
        return self._pcm

    @property
    def frame_count(self) -> int:
        return len(self._pcm) // 2 if self._pcm is not None else len(self.samples)

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.rate_hz

    def resampled(self, rate_hz: int) -> Audio:
        if rate_hz == self.rate_hz or self.frame_count == 0:
            return Audio(self._samples, rate_hz, pcm=self._pcm)
        import numpy as np
        import soxr

        out = soxr.resample(self.samples, self.rate_hz, rate_hz, quality="HQ")
        return Audio(np.asarray(out, dtype=np.int16), rate_hz)

    def scaled(self, gain: float) -> Audio:
        if gain >= 0.999:
            return self
        import numpy as np

        return Audio((self.samples.astype(np.float32) * gain).astype(np.int16), self.rate_hz)


def read_wav(data: bytes | BinaryIO) -> Audio:
    """A PCM16 WAV (any channel count, its bytes or an open file) as mono Audio; a mono file is kept as its bytes
    (no numpy). From an open file the samples are read once, with no copy of the whole file beside them."""
    with wave.open(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"WAV has {8 * w.getsampwidth()}-bit samples, expected 16-bit")
        raw = w.readframes(w.getnframes())
        channels = w.getnchannels()
        rate = w.getframerate()
    if channels == 1:
        return Audio(rate_hz=rate, pcm=raw[: len(raw) // 2 * 2])
    import numpy as np

    frames = np.frombuffer(raw, dtype="<i2").reshape(-1, channels).mean(axis=1).astype(np.int16)
    return Audio(frames, rate)


def to_mono_int16(block: np.ndarray) -> np.ndarray:
    """A capture block of shape (frames, channels) as mono int16."""
    import numpy as np

    if block.ndim == 2 and block.shape[1] > 1:
        return block.astype(np.int32).mean(axis=1).astype(np.int16)
    return block.reshape(-1).astype(np.int16, copy=False)


def frame_levels_dbfs(frames: np.ndarray) -> list[float]:
    """rms_dbfs of each row of frames (shape (n, samples), int16): one numpy pass over the whole block, and
    Python floats out (the VAD compares them one by one, which numpy scalars make slow)."""
    import numpy as np  # only the listener calls this, and it has numpy loaded already

    n = frames.shape[-1]
    if n == 0:
        return [-120.0] * frames.shape[0]
    x = frames.astype(np.float32)
    sums = (x * x).sum(axis=1).tolist()
    return [10.0 * math.log10(max(s / n, 1e-12) / FULL_SCALE_SQUARED) for s in sums]


def rms_dbfs(samples: np.ndarray) -> float:
    """Loudness of int16 samples in dB relative to full scale (-120 for silence)."""
    import numpy as np

    if len(samples) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    return 20.0 * np.log10(max(rms, 1e-6) / 32768.0)
