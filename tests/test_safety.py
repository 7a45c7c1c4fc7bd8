"""Child-safety filter: listed words are blocked through every disguise, innocent look-alikes pass, strictness levels
include the ones below them, and a mistake in a word list names the file."""

from __future__ import annotations

import functools
import logging
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot.story.safety import (
    LANGUAGES,
    STRICTNESS_LEVELS,
    SafetyError,
    SafetyFilter,
    Verdict,
    load_word_list,
    matching_words,
)

LISTS = Path(__file__).resolve().parent.parent / "assets" / "safety"


@functools.cache
def shipped(language: str, strictness: str) -> SafetyFilter:
    """The filter on the lists in assets/safety, built once per language and strictness (they are read-only)."""
    return SafetyFilter(language, strictness, LISTS)


def custom(tmp_path: Path, text: str, language: str = "en") -> Path:
    """A lists directory holding one word list with the given TOML text."""
    (tmp_path / f"{language}.toml").write_text(text, encoding="utf-8")
    return tmp_path


def blocked(verdict: Verdict, category: str, term: str) -> bool:
    return verdict == Verdict(True, category, term)


# --- what is blocked -----------------------------------------------------------------------------------------------

BLOCKED = [
    # (sentence, lowest strictness that blocks it, category, term)
    ("What the fuck is that?", "relaxed", "profanity", "fuck"),
    ("The motherfucker ran away.", "relaxed", "profanity", "motherfuck"),
    ("Shitty weather.", "relaxed", "profanity", "shitty"),  # listed itself, so not reported as "shit"
    ("This is bullshit.", "relaxed", "profanity", "bullshit"),
    ("You are a retard.", "relaxed", "slurs", "retard"),
    ("They had sex in the barn.", "relaxed", "sexual", "sex"),
    ("The rapist was caught.", "relaxed", "sexual", "rapist"),
    ("He would just smile at them with open legs.", "relaxed", "sexual", "open legs"),  # SmolLM2 drift, seed 7
    ("She sat there with her legs open.", "relaxed", "sexual", "legs open"),
    ("She spread her legs.", "relaxed", "sexual", "spread her legs"),
    ("She thought about suicide.", "relaxed", "self_harm", "suicide"),
    ("He wanted to kill himself.", "relaxed", "self_harm", "kill himself"),  # the phrase, not "kill"
    ("She took her own life.", "relaxed", "self_harm", "took her own life"),
    ("The giant will kill the goat.", "standard", "violence", "kill"),
    ("The murderer hid in the woods.", "standard", "violence", "murder"),
    ("The pirate stabbed the sailor.", "standard", "violence", "stab"),
    ("There was blood on the floor.", "standard", "violence", "blood"),
    ("He waved a bloody axe.", "standard", "violence", "bloody"),
    ("The hunter raised his gun.", "standard", "violence", "gun"),
    ("The soldiers are shooting at the village.", "standard", "violence", "shoot"),
    ("They found a corpse in the lake.", "standard", "violence", "corpse"),
    ("The guard was shot dead.", "standard", "violence", "shot dead"),
    ("A demon lived under the stairs.", "standard", "scary", "demon"),
    ("The film was full of gore.", "standard", "scary", "gore"),
    ("The man sold cocaine.", "standard", "drugs_alcohol", "cocaine"),
    ("The king was drunk again.", "standard", "drugs_alcohol", "drunk"),
    ("Dad opened a beer.", "standard", "drugs_alcohol", "beer"),
    ("Damn, the cake burned.", "standard", "mild_language", "damn"),
    ("The old dog will die soon.", "strict", "death", "die"),
    ("The old dog died.", "strict", "death", "die"),
    ("The flowers were dying.", "strict", "death", "die"),
    ("The fish is dead.", "strict", "death", "dead"),
    ("Nobody talked about death.", "strict", "death", "death"),
    ("Grandpa's funeral was on Sunday.", "strict", "death", "funeral"),
    ("Don't be stupid.", "strict", "insults", "stupid"),
    ("Shut up, said the frog.", "strict", "insults", "shut up"),
    ("The queen sipped her wine.", "strict", "drinking", "wine"),
]


@pytest.mark.parametrize("sentence,lowest,category,term", BLOCKED, ids=[b[0] for b in BLOCKED])
def test_a_listed_word_is_blocked_from_its_level_up_and_passes_below(sentence, lowest, category, term):
    for strictness in STRICTNESS_LEVELS:
        verdict = shipped("en", strictness).check(sentence)
        if STRICTNESS_LEVELS.index(strictness) >= STRICTNESS_LEVELS.index(lowest):
            assert blocked(verdict, category, term), (strictness, verdict)
        else:
            assert not verdict.is_blocked, (strictness, verdict)


DISGUISES = [
    # (how "kill" is disguised, the disguised word); each goes into "The giant will ___ the goat." at standard
    ("plain", "kill"),
    ("capitals", "KILL"),
    ("inflected", "killing"),
    ("accent", "kíll"),
    ("combining accent", "ki\u0301ll"),
    ("fullwidth", "ｋｉｌｌ"),
    ("mathematical bold", "𝐤𝐢𝐥𝐥"),
    ("circled", "ⓚⓘⓛⓛ"),
    ("zero-width space", "k\u200bill"),
    ("zero-width joiner", "ki\u200dll"),
    ("word joiner", "kil\u2060l"),
    ("soft hyphen", "ki\u00adll"),
    ("byte order mark", "\ufeffkill"),
    ("Cyrillic i", "kіll"),
    ("leet 1 for i", "k1ll"),
    ("leet 1 for l", "ki11"),
    ("leet !", "k!ll"),
    ("spaced", "k i l l"),
    ("spaced capitals", "K I L L"),
    ("spaced after a stray letter", "x k i l l"),
    ("dotted", "k.i.l.l"),
    ("dotted with spaces", "k. i. l. l."),
    ("hyphenated", "k-i-l-l"),
    ("underscored", "k_i_l_l"),
    ("asterisks between", "k*i*l*l"),
    ("asterisk for a letter", "k*ll"),
    ("markdown emphasis", "**kill**"),
    ("repeated letters", "kiiiill"),
    ("doubled i", "kiill"),
    ("repeated letters, inflected", "kiiilllinggg"),
    ("halves glued by a hyphen", "ki-ll"),
    ("leet and spaced", "k 1 l l"),
    ("fullwidth, spaced, leet", "Ｋ 1 Ｌ Ｌ"),
]


@pytest.mark.parametrize("word", [d[1] for d in DISGUISES], ids=[d[0] for d in DISGUISES])
def test_every_disguise_of_a_listed_word_is_blocked(word):
    verdict = shipped("en", "standard").check(f"The giant will {word} the goat.")
    assert blocked(verdict, "violence", "kill"), verdict


MORE_DISGUISES = [
    # (sentence, strictness, category, term)
    ("Oh f*ck.", "relaxed", "profanity", "fuck"),
    ("Oh f**k!", "relaxed", "profanity", "fuck"),
    ("That is sh*t.", "relaxed", "profanity", "shit"),
    ("That is $hit.", "relaxed", "profanity", "shit"),
    ("That is sh!t.", "relaxed", "profanity", "shit"),
    ("f u c k", "relaxed", "profanity", "fuck"),
    ("They had s.e.x.", "relaxed", "sexual", "sex"),
    ("Don't k1ll yourself.", "relaxed", "self_harm", "kill yourself"),
    ("killyourself", "relaxed", "self_harm", "kill yourself"),
    ("No self-harm.", "relaxed", "self_harm", "self harm"),
    ("There was bl00d.", "standard", "violence", "blood"),
    ("There was bloooood.", "standard", "violence", "blood"),
    ("He went to 5tab him.", "standard", "violence", "stab"),
    ("They were gunning for him.", "standard", "violence", "gun"),
    ("A murd3r!", "standard", "violence", "murder"),
    ("The dog will d-i-e.", "strict", "death", "die"),
]


@pytest.mark.parametrize("sentence,strictness,category,term", MORE_DISGUISES, ids=[d[0] for d in MORE_DISGUISES])
def test_disguises_of_other_words_are_blocked(sentence, strictness, category, term):
    verdict = shipped("en", strictness).check(sentence)
    assert blocked(verdict, category, term), verdict


def test_the_first_match_in_the_sentence_wins_and_at_one_place_the_longest():
    f = shipped("en", "strict")
    assert blocked(f.check("The demon wanted to kill the dragon."), "scary", "demon")
    assert blocked(f.check("The dragon wanted to kill the demon."), "violence", "kill")
    assert blocked(f.check("He killed himself."), "self_harm", "kill himself")


def test_an_allowance_covers_only_its_own_place():
    f = shipped("en", "standard")
    assert not f.check("A killer whale swam by.").is_blocked
    assert blocked(f.check("A killer whale saw the man kill a seal."), "violence", "kill")
    assert blocked(f.check("The killer waved at the whale."), "violence", "kill")


# --- what passes ---------------------------------------------------------------------------------------------------

PASSING = [
    # sentences that contain a listed word inside an innocent one, or in an allowed phrase; all checked at strict
    "Mia practised her skill until she was skilled.",  # kill
    "The bus drove past Scunthorpe.",  # cunt
    "The therapist listened kindly.",  # rapist
    "Dad mixed a fruit cocktail.",  # cock
    "The assistant brought a bowl of grapes.",  # ass, rape
    "The drapes were scraped.",  # rape
    "The team marched to the arsenal.",  # arse
    "The teacher will demonstrate the trick.",  # demon
    "The ladies studied the candies.",  # dies, died
    "The deadline was on Friday.",  # dead
    "The hero and the heroine rode home.",  # heroin
    "Gunther the goose honked.",  # gun
    "They sailed to Essex with a sextant.",  # sex
    "The crab said hello from its shell.",  # hell
    "The cook added spices to the spiced apples.",  # spic + -es, -ed
    "The fox rapped on the door.",  # raped, with a doubled letter
    "The rapper was rapping.",  # raper, raping
    "The knot got looser.",  # loser
    "Mr Gunn waved.",  # gun
    "Slowly the sun went down over the hills.",  # no listed word at all
    "The pirate stood with his legs apart.",  # legs, not in a listed phrase
    "The frog spread its legs and jumped.",
    "The door was open and the table's legs were wobbly.",
    "We made a wish on a shooting star.",  # allowed phrase
    "Shooting stars lit up the sky.",
    "A killer whale leapt out of the sea.",
    "Killer whales sing to each other.",
    "The bloodhound sniffed the trail.",  # a compound word is not split
    "The blood-hound sniffed the trail.",  # and when it is, [allow] lists it
    "Her lips were as red as blood.",  # Snow White
    "Lizards are cold-blooded.",
    "A murder of crows sat on the fence.",
    "The kids had a water gun fight.",
    "Bamboo shoots grew tall.",
    "She will shoot the ball into the net.",
    "They were just killing time.",
    "Everything was spic and span.",
    "He drank a root beer.",
    "I have 3 cats and 4 dogs.",
    "Stop! Wow!!! Look at that!",
    "It was 7:30 and 5 ducks swam by.",
]


@pytest.mark.parametrize("sentence", PASSING)
def test_innocent_sentences_pass_even_at_strict(sentence):
    assert shipped("en", "strict").check(sentence) == Verdict(False, "", "")


LOOK_ALIKES = [
    # (sentence, whether it is blocked) against a list of the bare roots: matching is by whole words, not substrings
    ("The assistant smiled.", False),
    ("Dad mixed a cocktail.", False),
    ("She showed great skill.", False),
    ("The grapes were sweet.", False),
    ("We drove to Scunthorpe.", False),
    ("The title was long.", False),
    ("Hello, little shell.", False),
    ("You ass.", True),
    ("The cock crowed.", True),
    ("Kill it.", True),
    ("They were raped.", True),
    ("Blue tits sang.", True),
    ("Go to hell.", True),
]


@pytest.mark.parametrize("sentence,is_blocked", LOOK_ALIKES)
def test_words_that_contain_a_listed_root_pass_but_the_root_itself_does_not(tmp_path, sentence, is_blocked):
    words = '["ass", "cock", "kill", "rape", "cunt", "tit", "hell"]'
    lists = custom(tmp_path, f'[roots]\nlevel = "relaxed"\nwords = {words}\n')
    assert SafetyFilter("en", "relaxed", lists).check(sentence).is_blocked is is_blocked


def test_digits_are_letters_only_inside_a_word():
    assert matching_words("I have 3 cats.") == ["i", "have", "3", "cats"]
    assert matching_words("k1ll 3 c4ts") == ["kill", "3", "cats"]
    assert matching_words("Stop! Sh!t.") == ["stop", "shit"]
    assert matching_words("k i l l the 2 goats") == ["kill", "the", "2", "goats"]


# --- strictness ----------------------------------------------------------------------------------------------------

STRICTNESS = [
    # (sentence, blocked at relaxed, at standard, at strict)
    ("fuck", True, True, True),
    ("suicide", True, True, True),
    ("kill", False, True, True),
    ("cocaine", False, True, True),
    ("zombie", False, True, True),
    ("die", False, False, True),
    ("wine", False, False, True),
    ("idiot", False, False, True),
    ("bunny", False, False, False),
]


@pytest.mark.parametrize("sentence,relaxed,standard,strict", STRICTNESS, ids=[s[0] for s in STRICTNESS])
def test_each_strictness_includes_the_levels_below_it(sentence, relaxed, standard, strict):
    expected = {"relaxed": relaxed, "standard": standard, "strict": strict}
    assert {level: shipped("en", level).check(sentence).is_blocked for level in STRICTNESS_LEVELS} == expected


def test_a_category_applies_from_its_own_level(tmp_path):
    lists = custom(
        tmp_path,
        '[a]\nlevel = "relaxed"\nwords = ["apple"]\n'
        '[b]\nlevel = "standard"\nwords = ["banana"]\n'
        '[c]\nlevel = "strict"\nwords = ["cherry"]\n',
    )
    seen = {
        level: [SafetyFilter("en", level, lists).check(fruit).is_blocked for fruit in ("apple", "banana", "cherry")]
        for level in STRICTNESS_LEVELS
    }
    assert seen == {"relaxed": [True, False, False], "standard": [True, True, False], "strict": [True, True, True]}


# --- Korean --------------------------------------------------------------------------------------------------------

KOREAN_BLOCKED = [
    # (sentence, strictness, category, term)
    ("씨발 이게 뭐야", "relaxed", "profanity", "씨발"),
    ("시 발 이게 뭐야", "relaxed", "profanity", "시발"),  # syllables spaced apart
    ("씨.발", "relaxed", "profanity", "씨발"),
    ("씨-발", "relaxed", "profanity", "씨발"),
    ("시1발", "relaxed", "profanity", "시발"),  # a digit between syllables
    ("ㅅㅂ", "relaxed", "profanity", "ㅅㅂ"),
    ("이 개새끼야", "relaxed", "profanity", "개새끼"),
    ("개 새 끼", "relaxed", "profanity", "개새끼"),
    ("그들은 섹스를 했다", "relaxed", "sexual", "섹스"),
    ("그는 자살했다", "relaxed", "self_harm", "자살"),
    ("호랑이가 토끼를 죽였어요.", "standard", "violence", "죽였"),
    ("사냥꾼이 곰을 죽이려고 했다", "standard", "violence", "죽이려"),
    ("살인마가 나타났다", "standard", "violence", "살인마"),
    ("온몸이 피투성이였다", "standard", "violence", "피투성이"),
    ("그는 총을 쐈다", "standard", "violence", "총을"),
    ("도둑이 칼로 찔렀다", "standard", "violence", "칼로 찔렀"),
    ("도둑이 칼로, 찔렀다", "standard", "violence", "칼로 찔렀"),
    ("그는 마약을 했다", "standard", "drugs_alcohol", "마약"),
    ("악마가 웃었다", "standard", "scary", "악마"),
    ("할아버지는 술을 마셨다", "strict", "drinking", "술"),
    ("강아지가 죽었어요", "strict", "death", "죽었"),
    ("fuck you", "relaxed", "profanity", "fuck"),
]


@pytest.mark.parametrize("sentence,lowest,category,term", KOREAN_BLOCKED, ids=[k[0] for k in KOREAN_BLOCKED])
def test_korean_words_are_blocked_from_their_level_up(sentence, lowest, category, term):
    for strictness in STRICTNESS_LEVELS:
        verdict = shipped("ko", strictness).check(sentence)
        if STRICTNESS_LEVELS.index(strictness) >= STRICTNESS_LEVELS.index(lowest):
            assert blocked(verdict, category, term), (strictness, verdict)
        else:
            assert not verdict.is_blocked, (strictness, verdict)


KOREAN_PASSING = [
    # sentences with a listed syllable inside an innocent word; all checked at strict
    "마술사가 마술을 보여 주었어요.",  # 술
    "빨간 입술이 예뻤어요.",  # 술
    "술래잡기를 했어요.",  # 술
    "팥죽 할멈이 팥죽을 끓였어요.",  # 죽을
    "호박죽이다!",  # 죽이다
    "별이 총총 빛나요.",  # 총
    "사과가 총 다섯 개 있어요.",  # 총 (in all)
    "삼총사가 모였어요.",  # 총
    "물총을 쏘며 놀았어요.",  # 총을
    "일곱 살인 지우는 웃었어요.",  # 살인 (being seven)
    "몇 살인지 물었어요.",  # 살인
    "엄마를 졸라서 장난감을 샀어요.",  # 졸라 (begging)
    "할머니는 집으로 돌아가셨어요.",  # went back (not passed away)
    "포도주스를 마셨어요.",  # 포도주
    "시발점으로 돌아왔어요.",  # 시발
    "숨지 마!",  # 숨지 (don't hide)
    "개 새끼가 태어났어요.",  # a dog's young, written apart
    "맛있는 음식인 김치.",  # 식인
    "옛날 옛적 호랑이 담배 피우던 시절에.",  # 담배 in the folktale opening
]


@pytest.mark.parametrize("sentence", KOREAN_PASSING)
def test_innocent_korean_sentences_pass_even_at_strict(sentence):
    assert shipped("ko", "strict").check(sentence) == Verdict(False, "", "")


# --- mistakes in the lists -----------------------------------------------------------------------------------------

BAD_LISTS = [
    # (TOML text, what the message must contain)
    ('[violence]\nlevel = "medium"\nwords = ["kill"]\n', ["violence.level", "'medium'", "relaxed, standard, strict"]),
    ('[violence]\nwords = ["kill"]\n', ["violence.level is missing"]),
    ('[violence]\nlevel = "standard"\nwords = "kill"\n', ["violence.words", "a list of strings"]),
    ('[violence]\nlevel = "standard"\nwords = ["kill", 3]\n', ["violence.words", "a list of strings"]),
    ('[violence]\nlevel = "standard"\nwords = ["kill it"]\n', ["'kill it'", "more than one word", "phrases"]),
    ('[violence]\nlevel = "standard"\nphrases = ["kill"]\n', ["'kill'", "single word", "words"]),
    ('[violence]\nlevel = "standard"\nwords = ["k1ll"]\n', ["'k1ll'", "digit"]),
    ('[violence]\nlevel = "standard"\nwords = ["k*ll"]\n', ["'k*ll'", "not a letter"]),
    ('[violence]\nlevel = "standard"\nwords = [" "]\n', ["violence.words", "empty"]),
    ('[violence]\nlevel = "standard"\nword = ["kill"]\n', ["unknown key violence.word", "level, words, phrases"]),
    ('[violence]\nlevel = "standard"\n', ["[violence] has no words and no phrases"]),
    ('violence = "kill"\n', ["violence must be a table"]),
    ('[allow]\nwords = ["skill"]\n', ["no categories"]),
    ('[v]\nlevel = "strict"\nwords = ["kill"]\n[allow]\nlevel = "relaxed"\n', ["unknown key allow.level"]),
    ('[violence\nlevel = "standard"\n', ["TOML syntax error", "line 1"]),
    ('[violence]\nlevel = = "standard"\n', ["TOML syntax error", "line 2"]),
]


@pytest.mark.parametrize("text,expected", BAD_LISTS, ids=[b[0].replace("\n", " ")[:50] for b in BAD_LISTS])
def test_a_malformed_list_names_the_file_and_the_mistake(tmp_path, text, expected):
    lists = custom(tmp_path, text)
    with pytest.raises(SafetyError) as e:
        SafetyFilter("en", "standard", lists)
    message = str(e.value)
    assert str(lists / "en.toml") in message
    for part in expected:
        assert part in message, message


def test_a_list_that_is_not_utf8_names_the_file(tmp_path):
    (tmp_path / "ko.toml").write_bytes(b'[v]\nlevel = "strict"\nwords = ["\xc0\xc1"]\n')
    with pytest.raises(SafetyError, match="not UTF-8") as e:
        SafetyFilter("ko", "strict", tmp_path)
    assert str(tmp_path / "ko.toml") in str(e.value)


def test_a_missing_list_names_the_file(tmp_path):
    with pytest.raises(SafetyError) as e:
        SafetyFilter("ko", "standard", tmp_path)
    assert str(tmp_path / "ko.toml") in str(e.value)
    assert "missing" in str(e.value)


@pytest.mark.parametrize(
    "language,strictness,expected",
    [
        ("fr", "standard", ["unknown language 'fr'", "en, ko"]),
        ("EN", "standard", ["unknown language 'EN'", "en, ko"]),
        ("en", "medium", ["unknown strictness 'medium'", "relaxed, standard, strict"]),
        ("ko", "", ["unknown strictness ''", "relaxed, standard, strict"]),
    ],
)
def test_an_unknown_language_or_strictness_names_the_allowed_values(language, strictness, expected):
    with pytest.raises(SafetyError) as e:
        SafetyFilter(language, strictness, LISTS)
    for part in expected:
        assert part in str(e.value)


def test_the_shipped_lists_load_and_every_category_has_a_known_level():
    for language in LANGUAGES:
        word_list = load_word_list(LISTS / f"{language}.toml")
        assert {c.level for c in word_list.categories} == set(STRICTNESS_LEVELS)
        assert word_list.allow.words or word_list.allow.phrases


def test_the_lists_are_found_in_the_assets_directory_by_default(tmp_path, monkeypatch):
    (tmp_path / "safety").mkdir()
    custom(tmp_path / "safety", '[fruit]\nlevel = "relaxed"\nwords = ["pumpkin"]\n')
    monkeypatch.setenv("STORYBOT_ASSETS", str(tmp_path))
    assert SafetyFilter("en", "relaxed").check("a big pumpkin").is_blocked
    monkeypatch.delenv("STORYBOT_ASSETS")
    assert blocked(SafetyFilter("en", "standard").check("kill"), "violence", "kill")


# --- filter() ------------------------------------------------------------------------------------------------------


def test_filter_returns_safe_sentences_drops_blocked_ones_and_counts_them(caplog):
    f = SafetyFilter("en", "standard", LISTS)
    safe = "The bunny hopped home."
    caplog.set_level(logging.WARNING, logger="robot.story.safety")
    assert f.filter(safe) is safe
    assert f.blocked_count == 0
    assert f.filter("The wizard wanted to kill the dragon.") is None
    assert f.filter("Then he found a gun.") is None
    assert f.filter(safe) is safe
    f.check("kill")  # check() alone drops nothing and counts nothing
    assert f.blocked_count == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "robot.story.safety"]
    assert len(warnings) == 2
    assert "violence" in warnings[0] and "'kill'" in warnings[0]
    assert "'gun'" in warnings[1]
    assert not any("wizard" in w or "dragon" in w or "found" in w for w in warnings)


# --- properties ----------------------------------------------------------------------------------------------------


def _entries(language: str) -> list[tuple[str, str]]:
    word_list = load_word_list(LISTS / f"{language}.toml")
    return [(language, term) for c in word_list.categories for term in c.words + c.phrases]


ALL_ENTRIES = _entries("en") + _entries("ko")
ENGLISH_WORDS = [term for language, term in ALL_ENTRIES if language == "en" and " " not in term]
FILLER = st.lists(
    st.text(alphabet=string.ascii_letters + string.digits + ',.;:?"()', min_size=1, max_size=10), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(entry=st.sampled_from(ALL_ENTRIES), words=FILLER, data=st.data())
def test_a_listed_entry_inserted_anywhere_in_a_random_sentence_is_blocked(entry, words, data):
    language, term = entry
    at = data.draw(st.integers(0, len(words)), label="position")
    sentence = " ".join(words[:at] + [term] + words[at:])
    assert shipped(language, "strict").check(sentence).is_blocked, sentence


def _disguise(word: str, how: str, at: int) -> str:
    at = at % len(word)
    leet = {"o": "0", "i": "1", "e": "3", "a": "4", "s": "5", "t": "7"}
    match how:
        case "capitals":
            return word.upper()
        case "invisible":
            return word[:at] + "\u200b" + word[at:]
        case "soft hyphen":
            return word[:at] + "\u00ad" + word[at:]
        case "accent":
            return word[: at + 1] + "\u0301" + word[at + 1 :]
        case "fullwidth":
            return "".join(chr(ord(ch) + 0xFEE0) for ch in word)
        case "spaced":
            return " ".join(word)
        case "dotted":
            return ".".join(word)
        case "repeated":
            return word[: at + 1] + word[at] * 3 + word[at + 1 :]
        case "leet":
            return word[:at] + leet.get(word[at], word[at]) + word[at + 1 :]
        case "masked":
            inner = 1 + at % (len(word) - 2) if len(word) > 2 else 0
            return word[:inner] + "*" + word[inner + 1 :] if inner else word
    raise AssertionError(how)


DISGUISE_KINDS = ["capitals", "invisible", "soft hyphen", "accent", "fullwidth", "spaced", "dotted", "repeated"]


@settings(max_examples=300, deadline=None)
@given(
    word=st.sampled_from(ENGLISH_WORDS),
    how=st.sampled_from(DISGUISE_KINDS + ["leet", "masked"]),
    at=st.integers(0, 40),
    words=st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8), max_size=8),
)
def test_a_disguised_listed_word_in_a_random_sentence_is_blocked(word, how, at, words):
    sentence = " ".join(words[: at % (len(words) + 1)] + [_disguise(word, how, at)] + words[at % (len(words) + 1) :])
    assert shipped("en", "strict").check(sentence).is_blocked, sentence


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_gets_a_verdict_and_the_same_one_twice(text):
    f = shipped("en", "strict")
    first = f.check(text)
    assert isinstance(first, Verdict) and first == f.check(text)
    assert first.is_blocked == bool(first.category) == bool(first.term)
