"""The small PocketSphinx set-up: grammar search with no n-gram model and a dictionary of the grammar's words only.

Its footprint is measured on a real process (audio.asr_footprint), its accuracy on espeak-ng-spoken requests.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pytest

from audio.asr import AsrError, PocketSphinxRecognizer, grammar_dictionary, jsgf_words
from audio.asr_footprint import MIB, measure_recognizer_footprint
from robot.controls.commands import CommandPhrases
from robot.plumbing.paths import assets_dir

STORY_GRAMMAR = str(assets_dir() / "asr" / "story-requests.jsgf")
FOOTPRINT_GOAL_BYTES = 30 * MIB  # issue 11: the recognizer of the Duo 256M's voice loop

# In the grammar, as children might say them; espeak-ng's en-us voice speaks them.
REQUESTS = [
    "tell me a story about a dragon who loves tea",
    "a story about a cat who likes milk",
    "tell me a bedtime story about a bear",
    "can you tell me a story about a princess and a frog",
    "a funny story about a robot who loves cake",
    "tell me a story about a brave little mouse",
    "a story about a unicorn named lily",
    "tell me a story about a pirate who lost the ship",
    "tell me more",
    "stop",
    "another story",
    "a story about an owl who cannot sleep",
    "please tell me a story about a sleepy bunny",
    "a story about a dinosaur who loves music",
    "tell me a short story about a fox and a bear",
    "could you tell me a story about a wizard",
    "read me a story about a fairy who can fly",
    "a story about two penguins",
    "tell me a silly story about a monkey who eats apples",
    "louder",
    "say that again",
    "keep going",
    "a story about a giraffe who bakes cookies",
    "tell me a story about a knight and a dragon",
    "a story about a whale who sings",
    "tell me a story about a girl named mia",
    "a story about a tiny turtle who lives in the sea",
    "tell me a story about a rocket",
    "make up a story about a hedgehog",
    "a story about a kitten who likes to read",
]
# Spoken after 0.3 s of silence, as the listener's pre-roll has it: the set-up before (the 85 MiB n-gram model and
# the whole dictionary loaded beside the grammar) got 203 of these 225 words and 12 of the 30 requests word for
# word, the small one the very same transcripts. A little slack for other espeak-ng versions.
MIN_WORDS_RIGHT = 198
MIN_REQUESTS_RIGHT = 10


def english_commands() -> tuple[str, ...]:
    return CommandPhrases.load("en").grammar()


def words_right(said: str, heard: str) -> int:
    matcher = difflib.SequenceMatcher(None, said.split(), heard.split())
    return sum(block.size for block in matcher.get_matching_blocks())


def test_the_small_recognizer_hears_spoken_requests_as_well_as_the_full_one(espeak, tmp_path):
    recognizer = PocketSphinxRecognizer(
        jsgf_file=STORY_GRAMMAR, commands=english_commands(), dictionary_dir=str(tmp_path)
    )
    silence = np.zeros(4800, dtype=np.int16)
    heard = []
    for said in REQUESTS:
        pcm = np.concatenate([silence, espeak(said), silence]).tobytes()
        for i in range(0, len(pcm), 960):
            recognizer.accept(pcm[i : i + 960])
        heard.append(recognizer.finish())
    right = sum(words_right(s, h) for s, h in zip(REQUESTS, heard, strict=True))
    exact = sum(s == h for s, h in zip(REQUESTS, heard, strict=True))
    report = "\n".join(f"{s!r} -> {h!r}" for s, h in zip(REQUESTS, heard, strict=True) if s != h)
    assert right >= MIN_WORDS_RIGHT, f"{right} of {sum(len(s.split()) for s in REQUESTS)} words right:\n{report}"
    assert exact >= MIN_REQUESTS_RIGHT, f"{exact} of {len(REQUESTS)} requests right:\n{report}"
    assert recognizer._decoder.config["lm"] is None  # no n-gram model behind the grammar


def test_the_recognizer_of_a_spoken_request_fits_its_goal_in_a_real_process(espeak):
    speech = np.concatenate([np.zeros(8000, np.int16), espeak("tell me a story about a dragon who loves tea")])
    small = measure_recognizer_footprint(
        jsgf_file=STORY_GRAMMAR, commands=english_commands(), speech_pcm=speech.tobytes()
    )
    print(small.summary())
    assert 0 < small.loaded_bytes <= small.peak_bytes <= FOOTPRINT_GOAL_BYTES, small.summary()
    # the same measurement sees the n-gram model and the whole dictionary of the general English search
    general = measure_recognizer_footprint(speech_pcm=speech.tobytes())
    print(general.summary())
    assert general.loaded_bytes > small.peak_bytes + 50 * MIB, general.summary()


def test_the_grammar_dictionary_holds_the_grammar_words_and_is_kept_until_the_grammar_changes(tmp_path):
    grammar = Path(STORY_GRAMMAR).read_text(encoding="utf-8")
    path = grammar_dictionary([grammar], tmp_path)
    entries = path.read_text(encoding="utf-8").splitlines()
    assert {line.split()[0].split("(")[0] for line in entries} == jsgf_words(grammar)
    assert any(line.startswith("dragon ") for line in entries)
    assert len(entries) < 400  # of the full dictionary's 134,000
    written_ns = path.stat().st_mtime_ns
    assert grammar_dictionary([grammar], tmp_path) == path and path.stat().st_mtime_ns == written_ns
    other = grammar_dictionary(["#JSGF V1.0;\ngrammar g;\npublic <a> = stop | go;\n"], tmp_path)
    assert other != path and not path.exists()  # the old grammar's file is removed
    assert sorted(line.split()[0] for line in other.read_text().splitlines()) == ["go", "stop"]


def test_jsgf_words_skips_rule_names_tags_weights_and_comments():
    text = (
        "#JSGF V1.0;\ngrammar g; // a comment with words = nothing\n/* block = comment */\n"
        'public <a> = /2/ tell me {tag} [a] <b> | /0.5/ (stop | go)+ please*;\n<b> = "dragon";\n'
    )
    assert jsgf_words(text) == {"tell", "me", "a", "stop", "go", "please", "dragon"}


def test_a_grammar_word_missing_from_the_dictionary_is_named(tmp_path):
    jsgf = tmp_path / "g.jsgf"
    jsgf.write_text("#JSGF V1.0;\ngrammar g;\npublic <a> = tell me about zorblax;\n")
    with pytest.raises(AsrError, match=r"lacks: \['zorblax'\]"):
        PocketSphinxRecognizer(jsgf_file=str(jsgf), dictionary_dir=str(tmp_path))


def test_an_unwritable_dictionary_dir_falls_back_to_a_temporary_one(tmp_path, espeak):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    recognizer = PocketSphinxRecognizer(grammar=("stop", "another story"), dictionary_dir=str(blocked / "sub"))
    recognizer.accept(espeak("another story").tobytes())
    assert recognizer.finish() == "another story"
