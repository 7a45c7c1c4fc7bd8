#!/usr/bin/env python3
"""PocketSphinx's robustness to small changes of the same spoken request: faint noise before and after it (a few
LSB, as a quiet microphone has) or room noise under it, a sub-frame offset, a gain change.

Each request of tests/spoken_requests.py (espeak-ng voices of tests/voices.py) is decoded under every perturbation
of PERTURBATIONS with the story-requests grammar; printed: the share decoded word for word, the share whose subject
is right (the run-mode gate's judgement, tests/spoken_requests.py), and CPU seconds per second of audio decoded.
Cold (default): a fresh recognizer per decode, as the daemon's first request on a new device (and the sound-room
tests) has it; --warm: one recognizer for all, its cepstral mean adapted after the first.

Usage: .venv/bin/python scripts/bench_asr_robustness.py [--options 'dither=yes,seed=1;cmn=batch'] [--voices adult]
    [--commands] [--cold-passes 1,2,3] [--requests N] [--sweep] [--warm]
    each ';'-separated set of PocketSphinx settings over audio/asr.py's is benchmarked after its defaults;
    --commands also decodes tests/test_commands.py's phrases in command mode with each set (one recognizer, in
    that test's order) and says which commands were missed or which story sentences were taken for one.

Measured (Dec 2): --sweep --voices espeak --requests 1: without dither 11/36 right, with cmn=batch 11/36, with
cmninit=44:-1:-7:15:-13:0.5:0:-16:-1:-10:8:-4.5:-3 (espeak's adapted mean) 35/36. With dither=yes and seeds 1-8:
29 31 29 30 30 29 31 31 of 36; --commands: seeds 1, 4 and 7 miss "say that again", the others hear all five
phrases right. audio/asr.py's default is dither with seed 8.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audio.asr import COLD_PASSES, SAMPLE_RATE_HZ, PocketSphinxRecognizer  # noqa: E402
from robot.controls.commands import CommandPhrases  # noqa: E402
from robot.plumbing.paths import assets_dir  # noqa: E402
from tests import spoken_requests as spoken  # noqa: E402
from tests.perturbed_speech import PERTURBATIONS, SWEEP  # noqa: E402
from tests.voices import missing_tools  # noqa: E402

STORY_GRAMMAR = str(assets_dir() / "asr" / "story-requests.jsgf")
FRAME_BYTES = 960  # the listener's 30 ms block


def parse_options(text: str) -> dict:
    """'dither=yes,seed=1,cmninit=40:3:-1' -> {'dither': True, 'seed': 1, 'cmninit': '40,3,-1'}"""
    options: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        value = value.replace(":", ",")
        if value in ("yes", "no"):
            options[key] = value == "yes"
        else:
            try:
                options[key] = int(value)
            except ValueError:
                try:
                    options[key] = float(value)
                except ValueError:
                    options[key] = value
    return options


class PlainEspeak:
    """espeak-ng's own en-us rendering resampled to 16 kHz, as the sound-room tests and tests/conftest.py speak."""

    name = "espeak"


def speech_of(text: str, voice, work: Path) -> np.ndarray:
    if isinstance(voice, PlainEspeak):
        from audio.speech import read_wav

        wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
        return read_wav(wav).resampled(SAMPLE_RATE_HZ).samples
    return np.frombuffer(spoken.spoken(text, voice, work / "wav"), dtype=np.int16)


def new_recognizer(options: dict, work: Path) -> PocketSphinxRecognizer:
    options = dict(options)
    passes = options.pop("cold_passes", COLD_PASSES)  # ours, not PocketSphinx's (--cold-passes)
    return PocketSphinxRecognizer(
        jsgf_file=STORY_GRAMMAR,
        commands=CommandPhrases.load("en").grammar(),
        dictionary_dir=str(work),
        decoder_options=options,
        cold_passes=passes,
    )


def decode(recognizer: PocketSphinxRecognizer, pcm: bytes) -> str:
    for i in range(0, len(pcm), FRAME_BYTES):
        recognizer.accept(pcm[i : i + FRAME_BYTES])
    return recognizer.finish()


# tests/test_commands.py's phrases in command mode, in its order, and the command each must give (None: none)
COMMAND_CHECKS = (
    ("stop", "stop"),
    ("say that again", "repeat"),
    ("another story", "another"),
    ("Once upon a time there was a little dragon who loved tea.", None),
    ("She stopped and looked at the moon for a long time.", None),
)


def bench_commands(options: dict, work: Path) -> None:
    phrases = CommandPhrases.load("en")
    recognizer = new_recognizer(options, work)
    wrong = []
    for text, wanted in COMMAND_CHECKS:
        recognizer.use_commands(True)
        heard = decode(recognizer, speech_of(text, PlainEspeak(), work).tobytes())
        command = phrases.match(heard)
        if (command.value if command else None) != wanted:
            wrong.append(f"{text!r} -> {heard!r}")
    print(f"  commands: {len(COMMAND_CHECKS) - len(wrong)}/{len(COMMAND_CHECKS)} right" + "".join(
        f"\n    {w}" for w in wrong), flush=True)  # fmt: skip


def bench(options: dict, perturbations, voices, requests, work: Path, is_warm: bool, is_verbose: bool) -> None:
    exact = subject = total = 0
    cpu_s = audio_s = 0.0
    warm = new_recognizer(options, work) if is_warm else None
    for voice in voices:
        for r_index, request in enumerate(requests):
            speech = speech_of(request.text, voice, work)
            for p_index, perturbation in enumerate(perturbations):
                pcm = perturbation.apply(speech, seed=1000 * r_index + p_index)
                recognizer = warm or new_recognizer(options, work)
                started_s = time.process_time()  # the decode's own cost, not the recognizer's loading
                heard = decode(recognizer, pcm)
                cpu_s += time.process_time() - started_s
                audio_s += len(pcm) / 2 / SAMPLE_RATE_HZ
                total += 1
                exact += heard == request.text
                is_subject_right = spoken.is_recognised(request, heard, "en")
                subject += is_subject_right
                if is_verbose and heard != request.text:
                    print(f"  {voice.name} {perturbation} {request.text!r} -> {heard!r}")
    name = ",".join(f"{k}={v}" for k, v in options.items()) or "the defaults (audio/asr.py)"
    print(
        f"{name:40s} word for word {exact:3d}/{total} ({100 * exact / total:3.0f} %)  "
        f"subject right {subject:3d}/{total} ({100 * subject / total:3.0f} %)  "
        f"{cpu_s / audio_s:.3f} CPU s per s of audio",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--options", default="", help="';'-separated sets of PocketSphinx settings to compare")
    parser.add_argument("--voices", default="espeak,adult", help="espeak and names from tests/voices.py")
    parser.add_argument("--requests", type=int, default=0, help="only the first N requests (0: all)")
    parser.add_argument("--sweep", action="store_true", help="the 36 faint-noise variants instead of the mix")
    parser.add_argument("--warm", action="store_true", help="one recognizer for all decodes (adapted mean)")
    parser.add_argument("--verbose", action="store_true", help="every wrong transcript")
    parser.add_argument("--commands", action="store_true", help="also the command phrases (tests/test_commands.py)")
    parser.add_argument(
        "--cold-passes", default="", help="','-separated counts of second passes to compare (audio/asr.py COLD_PASSES)"
    )
    args = parser.parse_args()
    problem = missing_tools()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    names = args.voices.split(",")
    voices = [v for v in (PlainEspeak(), *spoken.voices("en")) if v.name in names]
    requests = spoken.REQUESTS_EN[: args.requests or None]
    perturbations = SWEEP if args.sweep else PERTURBATIONS
    print(f"{len(requests)} requests x {len(voices)} voices x {len(perturbations)} perturbations, "
          f"{'warm' if args.warm else 'cold'} recognizer")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-asr-robustness-") as directory:
        sets = [""] + [s for s in args.options.split(";") if s.strip()]
        sets += [f"cold_passes={n}" for n in args.cold_passes.split(",") if n.strip()]
        for text in dict.fromkeys(sets):
            bench(parse_options(text), perturbations, voices, requests, Path(directory), args.warm, args.verbose)
            if args.commands:
                bench_commands(parse_options(text), Path(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
