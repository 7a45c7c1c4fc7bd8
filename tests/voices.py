"""Child-like voices for tests and benchmarks, made from espeak-ng and sox.

No recording of a child is available here, so a child-like voice is built from the two things that set a child's
voice apart from an adult's: a higher pitch and a shorter vocal tract (formants about 15-25 % higher). espeak-ng
speaks the text with one of its female variants at a high pitch, and sox's `pitch` effect then raises the whole
spectrum (pitch and formants together, tempo unchanged) by a few hundred cents, as a shorter tract would.

Each voice is a (variant, espeak pitch 0-99, espeak words per minute, sox shift in cents) tuple; CHILD_VOICES holds
several so a test can try a request in more than one child-like voice. ADULT_VOICE is plain en-us for contrast.

MILD_CHILD_VOICES are gentler: espeak-ng's en-us (or its f2 variant) at pitch 60-70, raised 300 cents (pitch and
formants 19 % higher). PocketSphinx's command grammar hears "stop" in each of them in a quiet room; it hears none of
the CHILD_VOICES (tried with stop, another story, louder, 2026-12-02, before any tuning for children's voices), so
the barge-in tests (tests/test_barge_in.py) speak with these until the recognizers are tuned.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Voice:
    name: str
    espeak_voice: str  # espeak-ng -v
    pitch: int  # espeak-ng -p, 0-99 (50 is the voice's own)
    words_per_minute: int  # espeak-ng -s
    shift_cents: int  # sox pitch: raises pitch and formants together, keeps the tempo

    def describe(self) -> str:
        return (
            f"{self.name}: espeak-ng -v {self.espeak_voice} -p {self.pitch} -s {self.words_per_minute}, "
            f"then sox pitch {self.shift_cents:+d} cents"
        )


ADULT_VOICE = Voice("adult", "en-us", 50, 160, 0)
CHILD_VOICES = (
    Voice("child-a", "en-us+f3", 85, 150, 300),
    Voice("child-b", "en-us+f4", 95, 140, 400),
    Voice("child-c", "en-us+f2", 75, 165, 500),
)

MILD_CHILD_VOICES = (
    Voice("child-mild-a", "en-us", 60, 150, 300),
    Voice("child-mild-b", "en-us", 70, 150, 300),
    Voice("child-mild-c", "en-us+f2", 60, 150, 300),
)


def missing_tools() -> str | None:
    """A reason the voices cannot be made here, or None."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (child-like voices are made with espeak-ng and sox)"
    return None


def say(text: str, voice: Voice, out: Path, rate_hz: int = 16000) -> Path:
    """Writes `text` spoken in `voice` to `out` as a mono 16-bit WAV at rate_hz; returns out."""
    raw = out.with_suffix(".espeak.wav")
    espeak = ["espeak-ng", "-v", voice.espeak_voice, "-p", str(voice.pitch), "-s", str(voice.words_per_minute)]
    subprocess.run([*espeak, "-w", str(raw), text], check=True, capture_output=True)
    effects = ["pitch", str(voice.shift_cents)] if voice.shift_cents else []
    # -R: sox seeds its dither with a fixed number, so the same text in the same voice is the same audio every run
    subprocess.run(["sox", "-R", str(raw), "-r", str(rate_hz), "-c", "1", "-b", "16", str(out), *effects, "rate", str(rate_hz)],
                   check=True, capture_output=True)  # fmt: skip
    raw.unlink()
    return out
