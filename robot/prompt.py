"""The prompt builder: a child's request becomes a story opening that a completion model continues.

"tell me a story about a dragon who loves tea" -> "Once upon a time, there was a dragon who loved tea."

Base (completion) models such as Gemma 3 270M and the TinyStories llama2.c models tell a story when they are
given its first sentence, and wander off when they are given an instruction; so the request is turned into that
first sentence. The opening is also the first sentence the child hears, spoken while the model is still working.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_SUBJECT_WORDS = 24
MAX_SUBJECT_CHARS = 160
DEFAULT_SUBJECT = "a little bear who wanted to see the sea"

_REQUEST_LEAD = re.compile(
    r"""^(?:(?:hey|hi|hello|ok|okay|robot|storybot|please|um+|uh+|so|and|now)\b[\s,]*)*
        (?:(?:can|could|would|will)\s+you\s+)?(?:please\s+)?
        (?:(?:tell|read|give|make\s+up|make|say|share|i\s+want|i'd\s+like|i\s+would\s+like)\s+
           (?:(?:me|us)\s+)?)?
        (?:(?:a|an|another|one\s+more|the)\s+)?
        (?:(?:short|long|little|new|bedtime|funny|silly|nice|good)\s+)*
        (?:story|stories|tale|fairy\s+tale)?\s*
        (?:(?:about|of|with|where|for)\s+)?""",
    re.IGNORECASE | re.VERBOSE,
)
_TRAILING = re.compile(r"[\s,;:.!?]*(?:please)?[\s,;:.!?]*$", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:a|an|the|some|my|our|two|three|four|five|\d+)\b", re.IGNORECASE)
_RELATIVE_VERB = re.compile(r"\b(who|that|which|and)\s+([a-z]+)\b", re.IGNORECASE)

_PAST = {
    "is": "was",
    "are": "were",
    "has": "had",
    "have": "had",
    "can": "could",
    "will": "would",
    "does": "did",
    "do": "did",
    "goes": "went",
    "go": "went",
    "eats": "ate",
    "eat": "ate",
    "sings": "sang",
    "sing": "sang",
    "flies": "flew",
    "fly": "flew",
    "swims": "swam",
    "swim": "swam",
    "runs": "ran",
    "run": "ran",
    "knows": "knew",
    "know": "knew",
    "makes": "made",
    "make": "made",
    "finds": "found",
    "find": "found",
    "gets": "got",
    "get": "got",
    "sees": "saw",
    "see": "saw",
    "says": "said",
    "thinks": "thought",
    "builds": "built",
    "draws": "drew",
    "drinks": "drank",
    "drink": "drank",
    "sleeps": "slept",
    "sleep": "slept",
    "keeps": "kept",
    "feels": "felt",
    "teaches": "taught",
    "wears": "wore",
    "rides": "rode",
    "writes": "wrote",
    "grows": "grew",
    "tells": "told",
    "hides": "hid",
    "bakes": "baked",
    "dances": "danced",
    "loves": "loved",
    "likes": "liked",
    "lives": "lived",
    "love": "loved",
    "like": "liked",
    "live": "lived",
    "wants": "wanted",
    "want": "wanted",
    "plays": "played",
    "play": "played",
}


@dataclass(frozen=True)
class StoryPrompt:
    request: str  # what the child asked, cleaned
    subject: str  # who or what the story is about, e.g. "a dragon who loved tea"
    opening: str  # the first sentence: spoken first, and the text the model continues

    @property
    def engine_prompt(self) -> str:
        return self.opening


def clean_request(text: str) -> str:
    """Printable, single-spaced, bounded text from any transcript or typed request."""
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(ch if (ch.isprintable() and unicodedata.category(ch)[0] in "LNPZ") else " " for ch in text)
    words = text.split()
    return " ".join(words[: MAX_SUBJECT_WORDS * 4])[: MAX_SUBJECT_CHARS * 4]


def extract_subject(request: str) -> str:
    """The story's subject from a request; DEFAULT_SUBJECT when the request names none."""
    text = clean_request(request)
    subject = _REQUEST_LEAD.sub("", text, count=1)
    subject = _TRAILING.sub("", subject)
    subject = re.sub(r"[^\w\s',-]", " ", subject).strip(" ,;:-")  # words only: no quotes, brackets, symbols
    words = subject.split()[:MAX_SUBJECT_WORDS]
    subject = " ".join(words)[:MAX_SUBJECT_CHARS].rstrip(" ,;:-")
    if not any(ch.isalpha() for ch in subject):
        return DEFAULT_SUBJECT
    if not _ARTICLE.match(subject) and not subject[0].isupper():
        subject = ("an " if subject[0].lower() in "aeiou" else "a ") + subject
    return _past_tense(subject)


def _past_tense(subject: str) -> str:
    def shift(m: re.Match) -> str:
        verb = m.group(2)
        past = _PAST.get(verb.lower())
        if past is None and len(verb) > 3 and verb.endswith("s") and not verb.endswith("ss"):
            stem = verb[:-1]
            past = stem + "d" if stem.endswith("e") else stem + "ed"
        return f"{m.group(1)} {past or verb}"

    return _RELATIVE_VERB.sub(shift, subject)


def build_prompt(request: str) -> StoryPrompt:
    subject = extract_subject(request)
    opening = f"Once upon a time, there was {subject}."
    return StoryPrompt(request=clean_request(request), subject=subject, opening=opening)
