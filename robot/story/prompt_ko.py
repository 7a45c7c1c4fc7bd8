"""Korean requests: "차를 좋아하는 용 이야기 해 줘" -> "옛날 옛적에 차를 좋아하는 용이 살았어요."

Korean puts the request's verb last and marks the subject with a particle whose form depends on the last
syllable (이 after a final consonant, 가 after a vowel), so it gets its own small builder.
"""

from __future__ import annotations

import re

DEFAULT_SUBJECT = "바다를 보고 싶은 아기 곰"
MAX_SUBJECT_CHARS = 80

_REQUEST_TAIL = re.compile(
    r"\s*(?:(?:이야기|얘기|동화|옛날이야기)\s*(?:를|을|좀|하나)?\s*)?"
    r"(?:(?:해|들려|말해|읽어)\s*(?:줘|주세요|줄래|줄래요|주라|봐)|부탁해|부탁해요)?[\s.!?~]*$"
)
_ABOUT = re.compile(r"\s*(?:에\s*대한|에\s*관한|이\s*나오는|가\s*나오는|의)\s*$")
_KIND = re.compile(r"^(?:(?:짧은|긴|재미있는|재밌는|무서운|잠자리|자기\s*전|새로운|다른)\s*)+")
_STORY_WORD = re.compile(r"\s*(?:이야기|얘기|동화)\s*$")
_BEDTIME = re.compile(r"잠자리|자기\s*전|잘\s*때|자장|졸려|조용한")
_SHORT = re.compile(r"짧은")
_LONG = re.compile(r"긴\s*(?:이야기|얘기|동화)")
_CONTINUE = re.compile(
    r"^(?:(?:계속|이어서|그\s*다음|다음)\s*(?:이야기|얘기)?\s*(?:을|를|은|는)?\s*"
    r"(?:해|들려|말해)?\s*(?:줘|주세요|줄래|봐)?|더\s*(?:해|들려)\s*(?:줘|주세요))[\s.!?~]*$"
)


def subject_particle(word: str) -> str:
    """이 after a syllable that ends in a consonant, 가 after a vowel (and after anything not Hangul)."""
    last = word[-1] if word else ""
    if "가" <= last <= "힣" and (ord(last) - ord("가")) % 28:
        return "이"
    return "가"


def extract_subject(request: str) -> str:
    text = request.strip()
    for pattern in (_REQUEST_TAIL, _ABOUT, _STORY_WORD, _ABOUT):
        text = pattern.sub("", text)
    text = _KIND.sub("", text).strip(" ,.")
    text = re.sub(r"[^\w\s]", " ", text)
    text = " ".join(text.split())[:MAX_SUBJECT_CHARS]
    return text if any(ch.isalpha() for ch in text) else DEFAULT_SUBJECT


def opening(subject: str, is_bedtime: bool) -> str:
    lead = "옛날 옛적, 별이 반짝이는 조용한 밤에" if is_bedtime else "옛날 옛적에"
    return f"{lead} {subject}{subject_particle(subject)} 살았어요."


def length_factor(request: str) -> float:
    return 0.5 if _SHORT.search(request) else 1.5 if _LONG.search(request) else 1.0


def is_bedtime(request: str) -> bool:
    return bool(_BEDTIME.search(request))


def is_continue_request(request: str) -> bool:
    return bool(_CONTINUE.match(request.strip()))


def instruction(subject: str, is_bedtime: bool) -> str:
    kind = "짧고 조용한 잠자리 이야기" if is_bedtime else "따뜻한 이야기"
    return f"어린아이를 위해 {subject}에 대한 {kind}를 들려줘. 쉬운 문장으로 쓰고 행복하게 끝내 줘."
