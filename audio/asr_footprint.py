"""The resident memory of a speech recognizer, measured on a real process.

measure_recognizer_footprint() starts a fresh Python (this module's main), which notes its resident set before
importing the recognizer's library, after building the recognizer, and at its peak after decoding the given
speech. The differences are what the recognizer adds to a daemon. From a shell:

    python -m audio.asr_footprint --jsgf assets/asr/story-requests.jsgf --command stop --speech request.raw
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

FRAME_BYTES = 960  # 30 ms of 16 kHz int16, what the listener feeds
MIB = 1024 * 1024


class FootprintError(RuntimeError):
    """The measuring process failed; the message carries its error output."""


@dataclass(frozen=True)
class RecognizerFootprint:
    backend: str
    import_bytes: int  # resident memory added by importing the recognizer's library
    loaded_bytes: int  # added by the import and building the recognizer (models, dictionary, grammars)
    peak_bytes: int  # the peak added while building it and decoding the speech
    speech_s: float  # how much speech was decoded (0: none, peak_bytes is then the load peak)
    load_s: float  # wall time to build the recognizer

    def summary(self) -> str:
        return (
            f"{self.backend}: {self.loaded_bytes / MIB:.1f} MiB loaded, {self.peak_bytes / MIB:.1f} MiB at peak "
            f"after {self.speech_s:.1f} s of speech (import {self.import_bytes / MIB:.1f} MiB, load {self.load_s:.2f} s)"
        )


def measure_recognizer_footprint(
    backend: str = "pocketsphinx",
    vosk_model: str = "",
    grammar: tuple[str, ...] = (),
    jsgf_file: str | None = None,
    commands: tuple[str, ...] = (),
    speech_pcm: bytes = b"",
    timeout_s: float = 120.0,
) -> RecognizerFootprint:
    """Build the recognizer as audio.asr.build_recognizer would, in a new process, and measure it.

    speech_pcm: 16 kHz mono int16 fed to it in 30 ms frames (a spoken request: the search grows with speech).
    """
    with tempfile.TemporaryDirectory(prefix="storybot-asr-footprint-") as tmp:
        speech_file = Path(tmp) / "speech.raw"
        speech_file.write_bytes(speech_pcm)
        args = [sys.executable, "-m", "audio.asr_footprint", "--backend", backend, "--speech", str(speech_file)]
        args += ["--vosk-model", vosk_model] if vosk_model else []
        args += ["--jsgf", jsgf_file] if jsgf_file else []
        args += [a for phrase in grammar for a in ("--phrase", phrase)]
        args += [a for phrase in commands for a in ("--command", phrase)]
        env = {**os.environ, "PYTHONPATH": _source_root() + os.pathsep + os.environ.get("PYTHONPATH", "")}
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise FootprintError(f"measuring the {backend} recognizer took over {timeout_s:g} s") from None
    if done.returncode != 0:
        raise FootprintError(f"measuring the {backend} recognizer failed: {done.stderr.strip()[-2000:]}")
    return RecognizerFootprint(**json.loads(done.stdout.strip().splitlines()[-1]))


def _source_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise FootprintError(f"/proc/self/status has no {field}")


def _measure(args: argparse.Namespace) -> RecognizerFootprint:
    import time

    from audio.asr import build_recognizer

    speech = Path(args.speech).read_bytes() if args.speech else b""
    base_kib = _status_kib("VmRSS")
    __import__("vosk" if args.backend == "vosk" else "pocketsphinx")
    import_kib = _status_kib("VmRSS")
    with tempfile.TemporaryDirectory(prefix="storybot-asr-state-") as state_dir:
        started = time.monotonic()
        recognizer = build_recognizer(
            args.backend, args.vosk_model, tuple(args.phrase), args.jsgf, state_dir, tuple(args.command)
        )
        load_s = time.monotonic() - started
        loaded_kib = _status_kib("VmRSS")
        for i in range(0, len(speech), FRAME_BYTES):
            recognizer.accept(speech[i : i + FRAME_BYTES])
        if speech:
            recognizer.finish()
    return RecognizerFootprint(
        backend=args.backend,
        import_bytes=(import_kib - base_kib) * 1024,
        loaded_bytes=(loaded_kib - base_kib) * 1024,
        peak_bytes=(_status_kib("VmHWM") - base_kib) * 1024,
        speech_s=len(speech) / 2 / 16000,
        load_s=round(load_s, 3),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure a speech recognizer's resident memory (prints JSON).")
    parser.add_argument("--backend", default="pocketsphinx", choices=("pocketsphinx", "vosk"))
    parser.add_argument("--vosk-model", default="")
    parser.add_argument("--jsgf", default=None, help="a JSGF grammar file (PocketSphinx)")
    parser.add_argument("--phrase", action="append", default=[], help="a phrase of a phrase-list grammar")
    parser.add_argument("--command", action="append", default=[], help="a voice-command phrase")
    parser.add_argument("--speech", default="", help="16 kHz mono int16 raw audio to decode after loading")
    footprint = _measure(parser.parse_args(argv))
    print(json.dumps(asdict(footprint)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
