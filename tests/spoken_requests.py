"""Story requests and ambient talk spoken in adult and child-like voices, decoded from WAV files (not in real time)
by a real recognizer and judged by the run-mode request gate (robot/controls/requests.py).

Shared by tests/test_child_requests.py and scripts/bench_requests.py. A request counts as recognised when the gate
takes the transcript for a story request and the subject the story would be told about names what was asked for:
every key word listed with the request (its nouns, plurals folded) is among the subject's words.
"""

from __future__ import annotations

import dataclasses
import hashlib
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from audio.asr import SAMPLE_RATE_HZ, Recognizer
from robot.controls.requests import asks_for_a_story
from robot.story import prompt_ko
from robot.story.prompt import extract_subject
from tests.voices import ADULT_VOICE, CHILD_VOICES, Voice, say

FRAME_BYTES = 960  # 30 ms at 16 kHz, the listener's block
SILENCE = bytes(2 * SAMPLE_RATE_HZ * 3 // 10)  # 0.3 s, as the listener's pre-roll has it


@dataclass(frozen=True)
class SpokenRequest:
    text: str
    key_words: tuple[str, ...]  # what the story must be about


# Within assets/asr/story-requests.jsgf, as children ask.
REQUESTS_EN = (
    SpokenRequest("tell me a story about a dragon who loves tea", ("dragon",)),
    SpokenRequest("a story about a cat who likes milk", ("cat",)),
    SpokenRequest("tell me a bedtime story about a bear", ("bear",)),
    SpokenRequest("can you tell me a story about a princess and a frog", ("princess", "frog")),
    SpokenRequest("a funny story about a robot who loves cake", ("robot",)),
    SpokenRequest("tell me a story about a brave little mouse", ("mouse",)),
    SpokenRequest("a story about a unicorn named lily", ("unicorn",)),
    SpokenRequest("a story about an owl who cannot sleep", ("owl",)),
    SpokenRequest("please tell me a story about a sleepy bunny", ("bunny",)),
    SpokenRequest("a story about a dinosaur who loves music", ("dinosaur",)),
    SpokenRequest("tell me a short story about a fox and a bear", ("fox", "bear")),
    SpokenRequest("could you tell me a story about a wizard", ("wizard",)),
    SpokenRequest("a story about two penguins", ("penguin",)),
    SpokenRequest("tell me a silly story about a monkey who eats apples", ("monkey",)),
    SpokenRequest("a story about a giraffe who bakes cookies", ("giraffe",)),
    SpokenRequest("tell me a story about a knight and a dragon", ("knight", "dragon")),
    SpokenRequest("a story about a whale who sings", ("whale",)),
    SpokenRequest("tell me a story about a girl named mia", ("girl",)),
    SpokenRequest("tell me a story about a rocket", ("rocket",)),
    SpokenRequest("a story about a kitten who likes to read", ("kitten",)),
)

# Korean requests for Vosk (the only Vosk model installable here is Korean): "<subject> story, tell me".
_KO_NOUNS = ("용", "고양이", "강아지", "토끼", "곰", "공주", "왕자", "로봇", "공룡", "여우")
REQUESTS_KO = tuple(SpokenRequest(f"{noun} 이야기 해 줘", (noun,)) for noun in _KO_NOUNS)
# what Vosk listens for in the benchmark: the request's words, so that it can also mix them up
VOSK_KO_GRAMMAR = tuple(sorted({word for r in REQUESTS_KO for word in r.text.split()}))

# Radio-like talk and grown-ups talking over breakfast: none of it asks for a story.
AMBIENT_EN = (
    "the weather today will be sunny with a chance of rain in the evening",
    "and now the news at nine o'clock from the city hall",
    "turn left at the next street and then go straight on",
    "I think we should buy more bread and butter tomorrow",
    "the train to the airport leaves from platform two",
    "traffic is heavy on the bridge this morning so leave early",
    "our next guest has written a book about gardening",
    "the football match ended two to one after extra time",
    "prices at the market went up again this week",
    "did you remember to call your mother about sunday",
    "the meeting has been moved to half past three",
    "scientists say the winter will be colder than usual",
    "stay tuned for more music after the break",
    "can you pass me the salt please",
    "the shop on the corner closes at six tonight",
    "here is a song that was a big hit last summer",
    "the library will be closed for repairs until march",
    "we need to fix the kitchen tap before the weekend",
    "a man found a wallet on the bus and gave it back",
    "the president will speak to the nation later tonight",
)

# 30 more, written after the request gate and the grammar were tuned and never used to tune them (2026-12-04), for
# scripts/bench_requests.py's false-start rate; some come near a request on purpose ("let me tell you about", "the
# story of the year", "this song is about a girl").
AMBIENT_HELD_OUT_EN = (
    "good morning and welcome to the breakfast show on radio one",
    "the temperature tonight will drop to five degrees",
    "please remember to take your umbrella when you go out",
    "the bank is open from nine until five on weekdays",
    "our reporter is standing outside the hospital right now",
    "the new bridge will open to traffic next spring",
    "could you put the kettle on while I finish this",
    "the children will be home from school at four",
    "a storm is expected along the coast tomorrow morning",
    "he scored twice in the second half of the game",
    "the concert was cancelled because of the weather",
    "where did you put the car keys this morning",
    "the museum has a new exhibition about ancient egypt",
    "I will pick up the parcel from the post office",
    "the price of petrol has gone up by ten cents",
    "she told me a funny thing that happened at work",
    "the last bus leaves the station at midnight",
    "they are building a new school near the river",
    "the doctor said you should drink more water",
    "tomorrow there will be strong winds in the north",
    "the story of the year is the election in the spring",
    "let me tell you about the new restaurant in town",
    "the film starts at eight so we should leave at seven",
    "our phone lines are open for your questions now",
    "the minister will visit the factory on thursday",
    "remember to water the plants while I am away",
    "the cat has been sleeping on the sofa all day",
    "this song is about a girl who lived by the sea",
    "the queen opened the new hospital wing today",
    "after the news we have a special report on farming",
)


def korean(voice: Voice) -> Voice:
    """The same voice speaking Korean: espeak-ng's ko with the voice's variant, pitch, rate and shift."""
    variant = voice.espeak_voice.partition("+")[2]
    return dataclasses.replace(voice, espeak_voice="ko" + (f"+{variant}" if variant else ""))


def voices(language: str) -> tuple[Voice, ...]:
    """The adult voice, then the child-like ones."""
    every = (ADULT_VOICE, *CHILD_VOICES)
    return every if language == "en" else tuple(korean(v) for v in every)


def spoken(text: str, voice: Voice, directory: Path) -> bytes:
    """text in voice as 16 kHz mono int16 PCM, made once into directory."""
    digest = hashlib.sha256(repr((text, voice)).encode()).hexdigest()[:16]
    path = directory / f"{voice.name}-{digest}.wav"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        say(text, voice, path)
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def transcribe(recognizer: Recognizer, pcm: bytes) -> str:
    """One utterance fed as the listener feeds it (pre-roll silence, 30 ms blocks, silence after)."""
    audio = SILENCE + pcm + SILENCE
    for i in range(0, len(audio), FRAME_BYTES):
        recognizer.accept(audio[i : i + FRAME_BYTES])
    return recognizer.finish()


def _stem(word: str) -> str:
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def subject_of(transcript: str, language: str) -> str:
    if language == "ko":
        return prompt_ko.extract_subject(transcript)
    return extract_subject(transcript)


def is_recognised(request: SpokenRequest, transcript: str, language: str) -> bool:
    """The gate takes the transcript for a story request about what was asked for."""
    if not asks_for_a_story(transcript, language):
        return False
    subject = subject_of(transcript, language)
    words = {_stem(w) for w in subject.lower().split()} if language == "en" else set(subject.split())
    return all((_stem(k) if language == "en" else k) in words for k in request.key_words)


@dataclass(frozen=True)
class Trial:
    said: str
    heard: str
    is_right: bool


def try_requests(
    recognizer: Recognizer, requests: Iterable[SpokenRequest], voice: Voice, directory: Path, language: str
) -> list[Trial]:
    trials = []
    for request in requests:
        heard = transcribe(recognizer, spoken(request.text, voice, directory))
        trials.append(Trial(request.text, heard, is_recognised(request, heard, language)))
    return trials


def try_ambient(recognizer: Recognizer, sentences: Iterable[str], voice: Voice, directory: Path) -> list[Trial]:
    """is_right: the sentence would start no story (the gate takes it for talk)."""
    trials = []
    for sentence in sentences:
        heard = transcribe(recognizer, spoken(sentence, voice, directory))
        trials.append(Trial(sentence, heard, not asks_for_a_story(heard, "en")))
    return trials


def report(trials: list[Trial]) -> str:
    return "\n".join(f"  {'ok ' if t.is_right else 'BAD'} {t.said!r} -> {t.heard!r}" for t in trials)


RecognizerFactory = Callable[[], Recognizer]


def samples(text: str, voice: Voice, directory: Path):
    """text in voice as 16 kHz int16 samples (a NumPy array), made once into directory."""
    import numpy as np

    return np.frombuffer(spoken(text, voice, directory), dtype=np.int16)
