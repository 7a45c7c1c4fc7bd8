"""Child-safety filter on the spoken path: each sentence of a story is checked before it reaches text-to-speech.

A small language model can say anything, and a child may ask (or be coached to ask) for anything, so a sentence that
names violence, sex, profanity and the like is dropped rather than spoken. The lists live in
assets/safety/<language>.toml (their format is documented at the top of each file) so that a parent or a packager
can adjust them without touching code; a missing or malformed list raises SafetyError at start-up, because a robot
that silently runs without its filter is worse than one that refuses to start.

How a sentence is matched, and why:

* Normalization defeats the disguises that a model or an adversarial request produces: invisible characters (zero
  width spaces and joiners, soft hyphens, Hangul fillers) are removed; NFKD folds fullwidth, mathematical and circled
  letters to plain ones; casefold; combining marks are stripped ("kíll"); a few Cyrillic and Greek look-alikes become
  their Latin twins.
* The text is cut into pieces of letters, digits and the symbols @ $ ! * # (apostrophes are dropped, so "killer's"
  is "killers"). Inside a piece that has Latin letters, leetspeak is read as letters (0→o 1→i or l 3→e 4→a 5→s 7→t
  @→a $→s !→i); a piece of digits alone is a number and stays one ("3 cats"). A "!" at either end is punctuation.
* A run of single characters ("k i l l", "k.i.l.l", "k-i-l-l") is joined, and so are pieces glued by - . _ or a
  dash without a space ("ki-ll"). Every stretch of a spaced run is tried, so a stray letter before it does not hide
  the word.
* In a piece with * or # inside it ("f*ck", "sh#t") each one stands for one letter; the piece is also tried without
  them ("k*i*l*l"). A piece that starts with them is markup emphasis ("**kill**"), so they are only stripped.
* Latin entries match whole words with English endings (-s -es -ed -d -ing -er -ers, a doubled final consonant, a
  dropped final e, -y to -ies/-ied, -ie to -ying), so "skill", "Scunthorpe" and "therapist" never match "kill", "cunt"
  or "rapist". A letter repeated three times or more also matches the entry it stretches ("kiiill", "bloooood"), and
  so does a doubled a, i or u ("kiill"), which English spelling hardly ever has; a plain double does not, because
  English makes those all the time ("rapped" is not "raped", "looser" is not "loser"). A word with no repeated
  letter is only matched exactly, so that "as" is never read as a squeezed "ass".
* Hangul entries match as substrings, because Korean glues endings and particles to the stem (죽였다, 총을); within a
  Hangul piece, digits and symbols between syllables are dropped ("시1발").
* Phrases match their words in order with any punctuation or spacing between them; an English phrase also matches
  its words written together ("killyourself").
* The [allow] table wins: a match whose first character lies inside an allowed match is dropped ("killer whale",
  "shooting star", 마술 for 술, 팥죽 for 죽을).
"""

from __future__ import annotations

import itertools
import logging
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from robot.plumbing.paths import assets_dir

log = logging.getLogger(__name__)

LANGUAGES = ("en", "ko")
STRICTNESS_LEVELS = ("relaxed", "standard", "strict")  # each level includes the ones before it
ALLOW = "allow"

_CATEGORY_KEYS = ("level", "words", "phrases")
_ALLOW_KEYS = ("words", "phrases")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_LEET_ONE_AS_L = str.maketrans({"1": "l"})  # "ki11": a 1 is as often an l as an i
_MASKS = frozenset("*#")
_SYMBOLS = frozenset("@$!") | _MASKS
_APOSTROPHES = frozenset("'’‘`ʼ")
_GLUE = frozenset("-._·‐‑‒–—")  # joins pieces into one word when nothing else (no space) separates them
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0")  # Hangul fillers, which render as nothing
_LOOKALIKES = str.maketrans(  # Cyrillic and Greek letters that look like Latin ones
    {"а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d"}
    | {"к": "k", "м": "m", "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u"}
)
_MAX_WORD = 24  # the longest stretch of a spaced run ("k i l l") that is tried as one word
_MAX_GLUED = 6  # the most pieces glued by dashes or dots ("ki-ll") that are tried as one word
_SEPARATORS = r"[\W_]*"


class SafetyError(ValueError):
    """A word-list file that is missing or malformed, or an unknown language or strictness. str() names the file."""


@dataclass(frozen=True)
class Verdict:
    """What check() found: the category and entry are kept so that a log line or a parent can see why, without the
    sentence itself (which may be the very thing that should not be repeated)."""

    is_blocked: bool
    category: str  # the list category that matched ("" when not blocked), e.g. "violence"
    term: str  # the list entry that matched, as written in the file ("" when not blocked)


SAFE = Verdict(False, "", "")


@dataclass(frozen=True)
class Category:
    """One table of a word list. Entries are kept as written (for verdicts and logs); matching normalizes them."""

    name: str
    level: str
    words: tuple[str, ...]
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class WordList:
    path: Path
    categories: tuple[Category, ...]  # in file order, which breaks ties between matches
    allow: Category


# --- normalization -------------------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """The form both the lists and the sentences are compared in, so that no spelling trick reaches the matcher."""
    visible = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    folded = unicodedata.normalize("NFKD", visible).casefold()
    bare = "".join(
        ch
        for ch in unicodedata.normalize("NFKD", folded)
        if unicodedata.category(ch) not in ("Mn", "Me") and ch not in _INVISIBLE
    )
    return unicodedata.normalize("NFC", bare).translate(_LOOKALIKES)


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    return (
        0xAC00 <= code <= 0xD7A3
        or 0x1100 <= code <= 0x11FF
        or 0x3130 <= code <= 0x318F
        or 0xA960 <= code <= 0xA97F
        or 0xD7B0 <= code <= 0xD7FF
    )


def _has_hangul(text: str) -> bool:
    return any(_is_hangul(ch) for ch in text)


def _is_latin(ch: str) -> bool:
    return ch.isalpha() and ch.isascii()


def _is_wordlike(ch: str) -> bool:
    return ch.isalnum() or ch in _SYMBOLS or ch in _APOSTROPHES


# --- cutting a sentence into what is compared ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    """A run of word characters in the normalized text, with where each one came from."""

    chars: str
    positions: tuple[int, ...]
    glued: bool  # only glue characters (no space) separate it from the piece before


@dataclass(frozen=True)
class _Candidate:
    """A string that may be a listed word, with the normalized-text position of each of its characters."""

    text: str
    positions: tuple[int, ...]
    wildcard: bool = False  # contains * or #, each standing for one letter
    partial: bool = False  # a stretch inside a spaced run: tried as a whole word only

    @property
    def start(self) -> int:
        return self.positions[0]

    @property
    def end(self) -> int:
        return self.positions[-1] + 1

    @cached_property
    def squeezed(self) -> str:
        return _squeeze(self.text)


@dataclass(frozen=True)
class _Text:
    normalized: str
    candidates: tuple[_Candidate, ...]  # every piece, glued group and spaced run, in each reading
    sequence: tuple[_Candidate, ...]  # one reading per word, in order: what phrases are matched against


def _script(ch: str) -> str:
    return "hangul" if _is_hangul(ch) else "latin" if _is_latin(ch) else ""


def _pieces(text: str) -> list[_Piece]:
    """Cut at everything that is not a word character, and where Hangul meets Latin ("kill했다" is two words)."""
    pieces: list[_Piece] = []
    chars: list[str] = []
    positions: list[int] = []
    gap_start = 0
    script = ""

    def close(end: int) -> None:
        nonlocal gap_start, script
        if chars:
            gap = text[gap_start : positions[0]] if pieces else " "
            pieces.append(_Piece("".join(chars), tuple(positions), bool(gap) and set(gap) <= _GLUE))
            gap_start = end
        chars.clear()
        positions.clear()
        script = ""

    for index, ch in enumerate(text):
        if not _is_wordlike(ch):
            close(index)
            continue
        if ch in _APOSTROPHES:
            continue
        kind = _script(ch)
        if kind and script and kind != script:
            close(index)
        script = kind or script
        chars.append(ch)
        positions.append(index)
    close(len(text))
    return pieces


def _join(pieces: Iterable[_Piece]) -> tuple[str, tuple[int, ...]]:
    pieces = list(pieces)
    return "".join(p.chars for p in pieces), tuple(itertools.chain.from_iterable(p.positions for p in pieces))


def _strip(chars: str, positions: tuple[int, ...], unwanted: Iterable[str]) -> tuple[str, tuple[int, ...]]:
    unwanted = frozenset(unwanted)
    start, end = 0, len(chars)
    while start < end and chars[start] in unwanted:
        start += 1
    while end > start and chars[end - 1] in unwanted:
        end -= 1
    return chars[start:end], positions[start:end]


def _readings(chars: str, positions: tuple[int, ...], partial: bool = False) -> list[_Candidate]:
    """The ways a piece can be read: leetspeak as letters, masks as wildcards or as nothing, Hangul cleaned up."""
    chars, positions = _strip(chars, positions, "!")
    if chars[:1] in _MASKS:
        chars, positions = _strip(chars, positions, _MASKS)
    if not any(ch.isalpha() for ch in chars):
        return []
    if _has_hangul(chars):
        kept = [i for i in range(len(chars)) if chars[i].isalpha() or not _between_hangul(chars, i)]
        return [_Candidate("".join(chars[i] for i in kept), tuple(positions[i] for i in kept), partial=partial)]
    spellings = [chars.translate(_LEET)]
    if "1" in chars:
        spellings.append(chars.translate(_LEET_ONE_AS_L).translate(_LEET))
    readings = []
    for spelling in spellings:
        if not any(ch in _MASKS for ch in spelling):
            readings.append(_Candidate(spelling, positions, partial=partial))
            continue
        kept = [i for i in range(len(spelling)) if spelling[i] not in _MASKS]
        readings.append(
            _Candidate("".join(spelling[i] for i in kept), tuple(positions[i] for i in kept), partial=partial)
        )
        readings.append(_Candidate(spelling, positions, wildcard=True, partial=partial))
    return readings


def _between_hangul(chars: str, index: int) -> bool:
    """Whether the nearest letters on both sides of chars[index] are Hangul ("시1발", "씨.발" inside one piece)."""
    before = next((ch for ch in reversed(chars[:index]) if ch.isalpha()), "")
    after = next((ch for ch in chars[index + 1 :] if ch.isalpha()), "")
    return bool(before and after) and _is_hangul(before) and _is_hangul(after)


def _groups(
    pieces: list[_Piece], belongs: Callable[[_Piece], bool], joins: Callable[[_Piece], bool]
) -> list[tuple[int, int]]:
    """Maximal ranges [i, j) of two or more pieces that each belong and are each joined to the one before."""
    ranges = []
    start = None
    for index, piece in enumerate(pieces + [None]):
        inside = piece is not None and belongs(piece) and start is not None and joins(piece)
        if inside:
            continue
        if start is not None and index - start >= 2:
            ranges.append((start, index))
        start = index if piece is not None and belongs(piece) else None
    return ranges


def _spaced_runs(pieces: list[_Piece]) -> list[tuple[int, int]]:
    return _groups(pieces, lambda p: len(p.chars) == 1, lambda p: True)


def _glued_groups(pieces: list[_Piece]) -> list[tuple[int, int]]:
    return _groups(pieces, lambda p: True, lambda p: p.glued)


def _analyse(sentence: str) -> _Text:
    normalized = normalize(sentence)
    pieces = _pieces(normalized)
    runs = _spaced_runs(pieces)
    candidates: list[_Candidate] = []
    for piece in pieces:
        candidates += _readings(piece.chars, piece.positions)
    for start, end in _glued_groups(pieces):
        for first in range(start, end - 1):
            for last in range(first + 2, min(end, first + _MAX_GLUED) + 1):
                candidates += _readings(*_join(pieces[first:last]))
    for start, end in runs:
        candidates += _readings(*_join(pieces[start:end]))
        for first in range(start, end - 1):
            for last in range(first + 2, min(end, first + _MAX_WORD) + 1):
                if (first, last) != (start, end):
                    candidates += _readings(*_join(pieces[first:last]), partial=True)
    return _Text(normalized, tuple(candidates), tuple(_sequence(pieces, runs)))


def _sequence(pieces: list[_Piece], runs: list[tuple[int, int]]) -> Iterator[_Candidate]:
    """One reading per word: a spaced run counts as one word; a number stays a word so that it separates others."""
    run_at = {start: end for start, end in runs}
    index = 0
    while index < len(pieces):
        end = run_at.get(index, index + 1)
        chars, positions = _join(pieces[index:end])
        readings = [r for r in _readings(chars, positions) if not r.wildcard]
        yield readings[0] if readings else _Candidate(chars, positions)
        index = end


def matching_words(sentence: str) -> list[str]:
    """The words phrases are matched against, as the matcher reads them; for tests and for explaining a verdict."""
    return [candidate.text for candidate in _analyse(sentence).sequence]


# --- English word forms --------------------------------------------------------------------------------------------

_VOWELS = frozenset("aeiou")


def _inflections(word: str) -> set[str]:
    """The regular English forms of a listed word, so that lists need not spell out killing/killed/killers."""
    forms = {word} | {word + ending for ending in ("s", "es", "ed", "d", "ing", "er", "ers")}
    if word.endswith("ie"):
        forms.add(word[:-2] + "ying")
    if word.endswith("e"):
        forms |= {word[:-1] + "ing", word + "r", word + "rs"}
    if len(word) > 2 and word.endswith("y") and word[-2] not in _VOWELS:
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    if _ends_consonant_vowel_consonant(word):
        forms |= {word + word[-1] + ending for ending in ("ed", "ing", "er", "ers")}
    return forms


def _ends_consonant_vowel_consonant(word: str) -> bool:
    if len(word) < 3 or word[-1] in _VOWELS or word[-1] in "wxy":
        return False
    return word[-2] in _VOWELS and word[-3] not in _VOWELS


def _squeeze(text: str) -> str:
    return "".join(letter for letter, _ in itertools.groupby(text))


_RARE_DOUBLES = frozenset("aiu")  # letters English seldom doubles, so "kiill" is a disguise, unlike "looser"


def _stretches(text: str, form: str) -> bool:
    """Whether text is form with letters repeated to disguise it ("kiiill" stretches "kill"; "rapped" is a word)."""
    ours = [(letter, len(list(run))) for letter, run in itertools.groupby(text)]
    theirs = [(letter, len(list(run))) for letter, run in itertools.groupby(form)]
    return len(ours) == len(theirs) and all(
        a == b and (m == n or (m > n and (m >= 3 or a in _RARE_DOUBLES)))
        for (a, m), (b, n) in zip(ours, theirs, strict=True)
    )


@dataclass(frozen=True)
class _Forms:
    """A set of word forms, indexed also by their squeezed spelling so that stretched spellings find them."""

    forms: frozenset[str]
    stretched: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, forms: Iterable[str]) -> _Forms:
        stretched: dict[str, list[str]] = {}
        for form in forms:
            stretched.setdefault(_squeeze(form), []).append(form)
        return cls(frozenset(forms), {key: tuple(value) for key, value in stretched.items()})

    def match(self, candidate: _Candidate) -> str | None:
        """The form the candidate spells: exactly, or with letters repeated when it has a repeated letter itself (a
        word without one is only matched exactly, so that "as" is never read as a squeezed "ass")."""
        if candidate.text in self.forms:
            return candidate.text
        if candidate.squeezed == candidate.text:
            return None
        return next((f for f in self.stretched.get(candidate.squeezed, ()) if _stretches(candidate.text, f)), None)


# --- matching ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    category: str
    term: str  # as written in the file
    rank: int  # the category's place in the file: the earlier wins a tie


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    entry: _Entry


def _terms(categories: list[Category], kind: str) -> Iterator[tuple[_Entry, str]]:
    """Each entry of one kind ("words" or "phrases"), with its normalized form (words of a phrase one space apart)."""
    for rank, category in enumerate(categories):
        for term in getattr(category, kind):
            yield _Entry(category.name, term, rank), " ".join(normalize(term).split())


def _word_forms(categories: list[Category]) -> dict[str, _Entry]:
    """Every English form of every Latin word, and of every Latin phrase written as one word ("killyourself"). A word
    as listed wins over another entry's derived form ("shitty" is reported as "shitty", not as "shit" + y)."""
    exact: dict[str, _Entry] = {}
    derived: dict[str, _Entry] = {}
    for kind in ("words", "phrases"):
        for entry, key in _terms(categories, kind):
            if _has_hangul(key):
                continue
            if kind == "words":
                exact.setdefault(key, entry)
            for form in sorted(_inflections(key.replace(" ", ""))):
                derived.setdefault(form, entry)
    return exact | {form: entry for form, entry in derived.items() if form not in exact}


def _grouped(forms: Iterable[str], key: Callable[[str], int]) -> dict[int, tuple[str, ...]]:
    groups: dict[int, list[str]] = {}
    for form in forms:
        groups.setdefault(key(form), []).append(form)
    return {k: tuple(v) for k, v in groups.items()}


@dataclass(frozen=True)
class _Matcher:
    """Every entry of some categories, indexed for the ways it can appear in a sentence."""

    entries: dict[str, _Entry]  # each English form of each Latin word (and of each phrase written as one word)
    words: _Forms  # the same forms, for stretched spellings
    by_length: dict[int, tuple[str, ...]]  # the same forms by length, for wildcard words
    phrases: tuple[tuple[tuple[_Forms, ...], _Entry], ...]  # Latin phrases: the forms of each of their words
    phrase_starts: _Forms  # the forms of every phrase's first word, so that most words are passed over at once
    phrases_by_start: dict[str, tuple[int, ...]]  # a first word's form -> the phrases that start with it
    substrings: tuple[tuple[str, _Entry], ...]  # Hangul words
    patterns: tuple[tuple[re.Pattern[str], _Entry], ...]  # Hangul phrases

    @classmethod
    def build(cls, categories: Iterable[Category]) -> _Matcher:
        categories = list(categories)
        entries = _word_forms(categories)
        phrases = tuple(
            (tuple(_Forms.of(_inflections(word)) for word in key.split()), entry)
            for entry, key in _terms(categories, "phrases")
            if not _has_hangul(key)
        )
        by_start: dict[str, list[int]] = {}
        for index, (words, _) in enumerate(phrases):
            for form in words[0].forms:
                by_start.setdefault(form, []).append(index)
        return cls(
            entries,
            _Forms.of(entries),
            _grouped(entries, len),
            phrases,
            _Forms.of(by_start),
            {form: tuple(indexes) for form, indexes in by_start.items()},
            tuple((key, entry) for entry, key in _terms(categories, "words") if _has_hangul(key)),
            tuple(
                (re.compile(_SEPARATORS.join(map(re.escape, key.replace(" ", "")))), entry)
                for entry, key in _terms(categories, "phrases")
                if _has_hangul(key)
            ),
        )

    def find(self, text: _Text) -> Iterator[_Match]:
        for candidate in text.candidates:
            form = self._wildcard(candidate.text) if candidate.wildcard else self.words.match(candidate)
            if form is not None:
                yield _Match(candidate.start, candidate.end, self.entries[form])
            if not candidate.partial and not candidate.wildcard:
                yield from self._substrings(candidate)
        yield from self._phrases(text.sequence)
        for pattern, entry in self.patterns:
            for found in pattern.finditer(text.normalized):
                yield _Match(found.start(), found.end(), entry)

    def _wildcard(self, text: str) -> str | None:
        pattern = re.compile("".join(r"[^\W\d_]" if ch in _MASKS else re.escape(ch) for ch in text))
        return next((form for form in self.by_length.get(len(text), ()) if pattern.fullmatch(form)), None)

    def _substrings(self, candidate: _Candidate) -> Iterator[_Match]:
        for key, entry in self.substrings:
            at = candidate.text.find(key)
            while at >= 0:
                yield _Match(candidate.positions[at], candidate.positions[at + len(key) - 1] + 1, entry)
                at = candidate.text.find(key, at + 1)

    def _phrases(self, sequence: tuple[_Candidate, ...]) -> Iterator[_Match]:
        for first, word in enumerate(sequence):
            start = self.phrase_starts.match(word)
            for index in self.phrases_by_start.get(start, ()) if start is not None else ():
                words, entry = self.phrases[index]
                window = sequence[first : first + len(words)]
                if len(window) == len(words) and all(
                    forms.match(other) is not None for other, forms in zip(window[1:], words[1:], strict=True)
                ):
                    yield _Match(window[0].start, window[-1].end, entry)


# --- loading the lists ---------------------------------------------------------------------------------------------


def load_word_list(path: Path) -> WordList:
    """Read and check one language's list; every mistake names the file and what was expected."""
    data = _read_toml(path)
    categories = []
    allow = Category(ALLOW, STRICTNESS_LEVELS[0], (), ())
    for name, table in data.items():
        if not isinstance(table, dict):
            raise SafetyError(f"{path}: {name} must be a table ([{name}] with level, words and phrases)")
        if name == ALLOW:
            allow = _parse_category(path, name, table, _ALLOW_KEYS)
        else:
            categories.append(_parse_category(path, name, table, _CATEGORY_KEYS))
    if not categories:
        raise SafetyError(f"{path}: no categories; expected tables like [violence] with level, words and phrases")
    return WordList(path, tuple(categories), allow)


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SafetyError(f"{path}: the safety word list is missing") from None
    except tomllib.TOMLDecodeError as e:
        raise SafetyError(f"{path}: TOML syntax error: {e}") from None
    except UnicodeDecodeError as e:
        raise SafetyError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SafetyError(f"{path}: cannot be read: {e.strerror or e}") from None


def _parse_category(path: Path, name: str, table: dict, keys: tuple[str, ...]) -> Category:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise SafetyError(f"{path}: unknown key {name}.{unknown[0]}; expected {', '.join(keys)}")
    level = STRICTNESS_LEVELS[0]
    if "level" in keys:
        given = table.get("level")
        if given not in STRICTNESS_LEVELS:
            shown = "missing" if given is None else f"{given!r}"
            raise SafetyError(f"{path}: {name}.level is {shown}; expected one of: {', '.join(STRICTNESS_LEVELS)}")
        level = str(given)  # one of STRICTNESS_LEVELS
    words = tuple(_check_entry(path, f"{name}.words", term, 1) for term in _strings(path, name, table, "words"))
    phrases = tuple(_check_entry(path, f"{name}.phrases", term, 2) for term in _strings(path, name, table, "phrases"))
    if name != ALLOW and not words and not phrases:
        raise SafetyError(f"{path}: [{name}] has no words and no phrases")
    return Category(name, level, words, phrases)


def _strings(path: Path, name: str, table: dict, key: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SafetyError(f"{path}: {name}.{key} must be a list of strings")
    return value


def _check_entry(path: Path, where: str, term: str, min_words: int) -> str:
    """An entry is one word (words) or two or more (phrases) of letters; Latin ones have no digits (see _LEET)."""
    words = normalize(term).split()
    if not words:
        raise SafetyError(f"{path}: {where} has an empty entry")
    if min_words == 1 and len(words) > 1:
        raise SafetyError(f"{path}: {where} entry {term!r} is more than one word; put it in phrases")
    if len(words) < min_words:
        raise SafetyError(f"{path}: {where} entry {term!r} is a single word; put it in words")
    for word in words:
        if not re.fullmatch(r"[^\W_]+", word):
            raise SafetyError(f"{path}: {where} entry {term!r} has a character that is not a letter or a digit")
        if not _has_hangul(word) and any(ch.isdigit() for ch in word):
            raise SafetyError(f"{path}: {where} entry {term!r} has a digit; digits in a word are read as letters")
    return term.strip()


# --- the filter ----------------------------------------------------------------------------------------------------


def _applies(level: str, strictness: str) -> bool:
    return STRICTNESS_LEVELS.index(level) <= STRICTNESS_LEVELS.index(strictness)


class SafetyFilter:
    """Checks sentences against one language's lists at one strictness; see the module docstring for the rules."""

    def __init__(self, language: str, strictness: str, lists_dir: Path | None = None) -> None:
        """language: "en" or "ko"; strictness: "relaxed" | "standard" | "strict"; lists_dir defaults to
        robot.plumbing.paths.assets_dir() / "safety"."""
        if language not in LANGUAGES:
            raise SafetyError(f"unknown language {language!r}; expected one of: {', '.join(LANGUAGES)}")
        if strictness not in STRICTNESS_LEVELS:
            raise SafetyError(f"unknown strictness {strictness!r}; expected one of: {', '.join(STRICTNESS_LEVELS)}")
        self.language = language
        self.strictness = strictness
        folder = lists_dir if lists_dir is not None else assets_dir() / "safety"
        word_list = load_word_list(Path(folder) / f"{language}.toml")
        self._block = _Matcher.build(c for c in word_list.categories if _applies(c.level, strictness))
        self._allow = _Matcher.build([word_list.allow])
        self.blocked_count = 0  # sentences filter() has dropped; check() alone does not count

    def check(self, sentence: str) -> Verdict:
        """The first listed term in the sentence that no allow entry covers (the longest, at the same place)."""
        text = _analyse(sentence)
        found = list(self._block.find(text))
        if not found:
            return SAFE
        allowed = [(m.start, m.end) for m in self._allow.find(text)]
        found = [m for m in found if not any(start <= m.start < end for start, end in allowed)]
        if not found:
            return SAFE
        first = min(found, key=lambda m: (m.start, m.start - m.end, m.entry.rank))
        return Verdict(True, first.entry.category, first.entry.term)

    def filter(self, sentence: str) -> str | None:
        """The sentence when it is safe; otherwise None (dropped). Logs one warning per blocked sentence with the
        category and term (never the whole sentence)."""
        verdict = self.check(sentence)
        if not verdict.is_blocked:
            return sentence
        self.blocked_count += 1
        log.warning("safety filter dropped a sentence: category %s, term %r", verdict.category, verdict.term)
        return None
