#!/usr/bin/env python3
"""Writes assets/earcons/listen.wav: the short rising chime played when the robot starts listening.

Run once when the sound should change; the WAV is committed (about 6 KB).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

RATE_HZ = 16000


def chime() -> np.ndarray:
    parts = []
    for freq_hz, seconds in ((660.0, 0.07), (880.0, 0.11)):
        t = np.arange(int(RATE_HZ * seconds)) / RATE_HZ
        envelope = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)  # 10 ms fades: no clicks
        parts.append(0.35 * envelope * np.sin(2 * np.pi * freq_hz * t))
    return (np.concatenate(parts) * 32767).astype(np.int16)


def main() -> None:
    path = Path(__file__).resolve().parent.parent / "assets" / "earcons" / "listen.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE_HZ)
        w.writeframes(chime().tobytes())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
