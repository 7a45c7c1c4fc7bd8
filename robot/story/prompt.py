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

from robot.story import prompt_ko

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
# a verb, or its negation ("can't": without it the "can" became "could" and the child heard "could't")
_RELATIVE_VERB = re.compile(r"\b(who|that|which|and)\s+([a-z]+(?:n't)?)\b(?!')", re.IGNORECASE)

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
    "can't": "couldn't",
    "won't": "wouldn't",
    "don't": "didn't",
    "doesn't": "didn't",
    "isn't": "wasn't",
    "aren't": "weren't",
    "hasn't": "hadn't",
    "haven't": "hadn't",
}


@dataclass(frozen=True)
class StoryPrompt:
    request: str  # what the child asked, cleaned
    subject: str  # who or what the story is about, e.g. "a dragon who loved tea"
    opening: str  # the first sentence: spoken first, and the text the model continues
    length_factor: float = 1.0  # times engine.max_tokens: 0.5 for "a short story", 1.5 for "a long one"
    is_bedtime: bool = False  # calm and short
    language: str = "en"

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


_CONTINUE = re.compile(
    r"^(?:(?:please|ok|okay|and|so|now)\s+)*(?:(?:can|could)\s+you\s+)?"
    r"(?:continue|go\s+on|keep\s+going|tell\s+me\s+more|what\s+happened\s+next|finish)"
    r"(?:\s+(?:the|my|our|with|that|story|please|it))*$",
    re.IGNORECASE,
)


def is_continue_request(request: str, language: str = "en") -> bool:
    """True for "continue the story", "go on", "tell me more", "계속 해 줘"...: resume the saved story."""
    if language == "ko":
        return prompt_ko.is_continue_request(clean_request(request))
    return bool(_CONTINUE.match(clean_request(request).strip(" .!?")))


@dataclass(frozen=True)
class Phrases:
    """What the robot says about a story, in the story's language."""

    closing: str  # after a story that was cut off
    resume_bridge: str  # before a resumed story
    apology: str  # before a canned story, when the engine failed
    lost: str  # when the engine failed in the middle of a story; the story is kept, to be continued


PHRASES = {
    "en": Phrases(
        closing="And that is the end of the story.",
        resume_bridge="Let's go on with the story.",
        apology="Oh, my story book closed by itself. Let me tell you a story I know by heart.",
        lost="Oh dear, I lost my place in the story. Ask me to go on, and I will.",
    ),
    "ko": Phrases(
        closing="이렇게 이야기는 끝났답니다.",
        resume_bridge="이야기를 계속할게요.",
        apology="이야기책이 저절로 닫혀 버렸네요. 내가 외우고 있는 이야기를 들려줄게요.",
        lost="어머, 이야기를 어디까지 했는지 잊어버렸어요. 계속해 달라고 하면 이어서 들려줄게요.",
    ),
}


_BEDTIME = re.compile(r"\b(?:bedtime|sleepy|goodnight|good\s+night|calm|quiet)\b", re.IGNORECASE)
_SHORT = re.compile(r"\b(?:short|quick|tiny)\s+(?:\w+\s+)?(?:story|tale)\b", re.IGNORECASE)
_LONG = re.compile(r"\b(?:long|longer|big)\s+(?:\w+\s+)?(?:story|tale)\b", re.IGNORECASE)
BEDTIME_LENGTH_FACTOR = 0.6


def build_prompt(request: str, *, is_bedtime: bool = False, language: str = "en") -> StoryPrompt:
    cleaned = clean_request(request)
    if language == "ko":
        subject = prompt_ko.extract_subject(cleaned)
        is_bedtime = is_bedtime or prompt_ko.is_bedtime(cleaned)
        length = min(prompt_ko.length_factor(cleaned), BEDTIME_LENGTH_FACTOR if is_bedtime else 9.0)
        return StoryPrompt(cleaned, subject, prompt_ko.opening(subject, is_bedtime), length, is_bedtime, "ko")
    subject = extract_subject(request)
    is_bedtime = is_bedtime or bool(_BEDTIME.search(cleaned))
    length = 0.5 if _SHORT.search(cleaned) else 1.5 if _LONG.search(cleaned) else 1.0
    if is_bedtime:
        opening = f"Once upon a time, as the stars came out one quiet evening, there was {subject}."
        length = min(length, BEDTIME_LENGTH_FACTOR)
    else:
        opening = f"Once upon a time, there was {subject}."
    return StoryPrompt(request=cleaned, subject=subject, opening=opening, length_factor=length, is_bedtime=is_bedtime)


def chat_prefix(template: str, prompt: StoryPrompt) -> str:
    """An instruct model's chat markup up to its reply, asking for the story; the opening then starts the reply.

    Raises ValueError when the template cannot be rendered.
    """
    import jinja2
    import jinja2.sandbox

    if prompt.language == "ko":
        instruction = prompt_ko.instruction(prompt.subject, prompt.is_bedtime)
    else:
        kind = "a short, calm bedtime story" if prompt.is_bedtime else "a gentle story"
        instruction = (
            f"Tell {kind} for a young child about {prompt.subject}. "
            "Use short, simple sentences and give it a happy ending."
        )
    try:
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(template).render(
            messages=[{"role": "user", "content": instruction}], add_generation_prompt=True, bos_token="", eos_token=""
        )
    except jinja2.TemplateError as e:
        raise ValueError(f"the model's chat template cannot be rendered: {e}") from None
