"""Cuts a stream of generated text into sentences for speech, as soon as each one is complete.

A sentence ends at . ! ? or an ellipsis (with any closing quotes or brackets) followed by a space and a capital,
a digit or an opening quote, or at a blank line. Abbreviations (Mr. Dr. Mrs.), decimals (3.5) and dialogue
('"Hello!" said Bo.') do not end a sentence. Very short sentences are joined to the next so that speech does not
stutter; a run-on is cut at a comma or a space, never inside a word.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr mt vs etc e.g i.e no fig capt col gen lt sgt rev hon ave rd".split()
)
_TERMINATOR = re.compile(r"(\.{3}|…|[.!?])([\"'”’)\]]*)(\s+)")
_PARAGRAPH = re.compile(r"\n\s*\n")
_LAST_SPACE = re.compile(r"\s(?=\S*$)")
_MARKUP = re.compile(r"[*#_`~<>|\\]+")


class SentenceSplitter:
    def __init__(self, min_chars: int = 24, max_chars: int = 300) -> None:
        self._min = min_chars
        self._max = max_chars
        self._buffer = ""
        self._short = ""  # a complete sentence too short to speak alone, waiting for the next

    def feed(self, text: str) -> list[str]:
        """Add generated text; return the sentences it completed."""
        self._buffer += text
        out: list[str] = []
        while (cut := self._find_cut()) is not None:
            piece, self._buffer = self._buffer[:cut], self._buffer[cut:]
            self._emit(piece, out)
        while len(self._buffer) > self._max:
            piece, self._buffer = _cut_run_on(self._buffer, self._max)
            self._emit(piece, out, force=True)
        return out

    def flush(self) -> list[str]:
        """The end of the text: whatever remains, as the last sentence(s)."""
        out: list[str] = []
        rest, self._buffer = self._buffer, ""
        self._emit(rest, out, force=True)
        if self._short:
            out.append(self._short)
            self._short = ""
        return out

    def _emit(self, piece: str, out: list[str], force: bool = False) -> None:
        sentence = clean_sentence(piece)
        if not sentence:
            return
        sentence = f"{self._short} {sentence}".strip() if self._short else sentence
        self._short = ""
        if len(sentence) < self._min and not force:
            self._short = sentence
        else:
            out.append(sentence)

    def _find_cut(self) -> int | None:
        buf = self._buffer
        paragraph = _PARAGRAPH.search(buf)
        limit = paragraph.start() if paragraph else len(buf)
        for m in _TERMINATOR.finditer(buf, 0, limit + 1):
            end = m.end()
            if end >= len(buf):
                return None  # the next word decides; wait for it
            if _is_boundary(buf, m, end):
                return end
        return paragraph.end() if paragraph else None


def _is_boundary(buf: str, m: re.Match, end: int) -> bool:
    nxt = buf[end]
    is_caseless_letter = nxt.isalpha() and nxt.lower() == nxt.upper()  # Hangul, Han, ... have no capitals
    if not (nxt.isupper() or is_caseless_letter or nxt.isdigit() or nxt in "\"'“‘(["):
        return False  # '"Stop!" said Bo.' or 'a... b': the sentence goes on
    if m.group(1) == ".":
        word = re.search(r"([\w.]+)$", buf[: m.start()])
        if word and word.group(1).lower().rstrip(".") in ABBREVIATIONS:
            return False
        if word and len(word.group(1)) == 1 and word.group(1).isupper():
            return False  # an initial: "J. R. Smith"
    return True


def _cut_run_on(text: str, max_chars: int) -> tuple[str, str]:
    head = text[:max_chars]
    for sep in (", ", "; ", ": "):
        i = head.rfind(sep)
        if i > max_chars // 3:
            return text[: i + len(sep)], text[i + len(sep) :]
    space = _LAST_SPACE.search(head)
    if space and space.start() > 0:
        return text[: space.end()], text[space.end() :]
    return head, text[max_chars:]  # a single word longer than max_chars: nothing better to do


def clean_sentence(text: str) -> str:
    """What a synthesizer should say: no markup, single spaces, something to pronounce."""
    text = _MARKUP.sub(" ", text)
    text = " ".join(text.split())
    return text if any(ch.isalnum() for ch in text) else ""
