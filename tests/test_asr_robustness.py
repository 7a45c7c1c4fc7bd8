"""PocketSphinx hears the same spoken request the same way when a little faint noise comes before or after it or
it starts a few samples later: the sound-room flake where espeak-ng's "...a dragon who loves tea" came out as
"...a frog who loves tea". Without audio.asr.ROBUST_DECODING (dither) 11 of these 36 variants of it were right.

A fresh recognizer per variant, as a new device's first request (and each sound-room test) has it.
"""

from __future__ import annotations

import pytest

from audio.asr import PocketSphinxRecognizer
from robot.controls.commands import CommandPhrases
from tests.perturbed_speech import SWEEP
from tests.test_asr_small import STORY_GRAMMAR

# Measured with dither (seed 1): 29 of 36 right; other seeds 29 and 31. Without it: 11 of 36.
CASES = [("tell me a story about a dragon who loves tea", 26)]


def decoded(speech, tmp_path) -> list[str]:
    heard = []
    for index, perturbation in enumerate(SWEEP):
        recognizer = PocketSphinxRecognizer(
            jsgf_file=STORY_GRAMMAR, commands=CommandPhrases.load("en").grammar(), dictionary_dir=str(tmp_path)
        )
        pcm = perturbation.apply(speech, seed=index)
        for i in range(0, len(pcm), 960):
            recognizer.accept(pcm[i : i + 960])
        heard.append(recognizer.finish())
    return heard


@pytest.mark.parametrize(("said", "min_right"), CASES)
def test_a_request_is_heard_right_in_most_variants_of_faint_noise_and_offset(said, min_right, espeak, tmp_path):
    heard = decoded(espeak(said), tmp_path)
    right = sum(h == said for h in heard)
    wrong = "\n".join(f"{p} -> {h!r}" for p, h in zip(SWEEP, heard, strict=True) if h != said)
    print(f"{said!r}: {right} of {len(SWEEP)} variants right")
    assert right >= min_right, f"{said!r}: {right} of {len(SWEEP)} variants right, wanted {min_right}:\n{wrong}"
