#!/usr/bin/env python3
"""Benchmark of the wake word (asr.wake_word, audio/wake.py): which voices each model of pymicro-wakeword's wheel
hears, what else wakes it, and its CPU time.

For each model, the word is said --sayings times in each voice (espeak-ng's adult en-us, the child-like voices of
tests/voices.py, and flite's voices), each time in fresh room noise (about -66 dBFS) with a second of it around,
all fed 30 ms at a time to one detector, as the listener feeds it. Then 100 sentences that are not the word (20 of
radio-like talk, 20 story requests in four voices) count the false wakes. Each saying starts at a random offset
within the 10 ms feature frames and at a random level within 6 dB, as through a real microphone. CPU is the detector's thread time per
second of audio (% of one core).

Usage: .venv/bin/python scripts/bench_wake_word.py [--sayings 10] [--models alexa,okay_nabu]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from audio.speech import read_wav  # noqa: E402
from audio.wake import MODELS, WakeWord  # noqa: E402
from tests import spoken_requests as spoken  # noqa: E402
from tests.voices import ADULT_VOICE, CHILD_VOICES, MILD_CHILD_VOICES  # noqa: E402

RATE_HZ = 16000
BLOCK = RATE_HZ * 30 // 1000
# how each model's phrase is written for the synthesizers
SPELLING = {"alexa": "alexa", "hey_jarvis": "hey jarvis", "hey_mycroft": "hey my croft", "okay_nabu": "okay nah boo"}
FLITE_VOICES = ("slt", "kal", "awb", "rms")


def flite(text: str, voice: str, directory: Path) -> np.ndarray:
    out = directory / f"flite-{voice}-{text.replace(' ', '_')}.wav"
    if not out.exists():
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], check=True, capture_output=True)
    return read_wav(out.read_bytes()).resampled(RATE_HZ).samples


def in_noise(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """speech at a level within 6 dB of its own, starting anywhere in the detector's 10 ms feature frames (as
    through a real microphone), with a second or so of room noise around it."""
    noise = lambda s: rng.normal(0, 16, int(s * RATE_HZ))  # noqa: E731
    level = 10 ** (rng.uniform(-6, 6) / 20)
    pieces = [noise(1.0 + rng.uniform(0, 0.01)), speech * level, noise(1.0)]
    return np.clip(np.concatenate(pieces), -32768, 32767).astype(np.int16)


def times_heard(detector: WakeWord, samples: np.ndarray) -> int:
    return sum(detector.hear(samples[i : i + BLOCK]) for i in range(0, len(samples), BLOCK))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sayings", type=int, default=10, help="how often the word is said in each voice")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all)")
    parser.add_argument("--cutoff", type=float, default=None, help="the detection threshold (default: each model's)")
    args = parser.parse_args()
    has_flite = shutil.which("flite") is not None
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for model in args.models.split(","):
            detector = WakeWord(model, args.cutoff)
            rng = np.random.default_rng(0)
            row = []
            voices = [(v.name, lambda t, v=v: np.frombuffer(spoken.spoken(t, v, directory), np.int16))
                      for v in (ADULT_VOICE, *MILD_CHILD_VOICES, *CHILD_VOICES)]  # fmt: skip
            if has_flite:
                voices += [(f"flite-{v}", lambda t, v=v: flite(t, v, directory)) for v in FLITE_VOICES]
            for voice, speak in voices:
                word = speak(SPELLING[model])
                heard = sum(times_heard(detector, in_noise(word, rng)) > 0 for _ in range(args.sayings))
                row.append(f"{voice} {heard}/{args.sayings}")
            sentences = [(t, ADULT_VOICE) for t in spoken.AMBIENT_EN]
            sentences += [(r.text, v) for r in spoken.REQUESTS_EN for v in (ADULT_VOICE, *CHILD_VOICES)]
            false = sum(
                times_heard(detector, in_noise(np.frombuffer(spoken.spoken(t, v, directory), np.int16), rng)) > 0
                for t, v in sentences
            )
            print(f"{model} ({MODELS[model]!r}, cutoff {detector.cutoff:g}): heard " + ", ".join(row))
            print(
                f"  woken by {false} of {len(sentences)} other sentences; "
                f"CPU {100 * detector.cpu_s / detector.heard_s:.2f}% of one core",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
