"""The text stages: prompt builder, sentence splitter, stop strings and UTF-8 pieces."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from engines.text import StopMatcher, Utf8Pieces
from robot.story.prompt import DEFAULT_SUBJECT, MAX_SUBJECT_CHARS, build_prompt
from robot.story.sentences import SentenceSplitter

# --- prompt builder --------------------------------------------------------------------------------

OPENINGS = [
    ("tell me a story about a dragon who loves tea", "Once upon a time, there was a dragon who loved tea."),
    ("a dragon who loves tea", "Once upon a time, there was a dragon who loved tea."),
    (
        "Tell me a story about a dragon called Bo who loves tea.",
        "Once upon a time, there was a dragon called Bo who loved tea.",
    ),
    (
        "can you please tell us a bedtime story about an owl that sings",
        "Once upon a time, as the stars came out one quiet evening, there was an owl that sang.",
    ),
    ("story about Bo the bunny", "Once upon a time, there was Bo the bunny."),
    ("tell me a story about a robot who wants to fly", "Once upon a time, there was a robot who wanted to fly."),
    ("elephant", "Once upon a time, there was an elephant."),
    (
        "a story about a clown who can't stop laughing",
        "Once upon a time, there was a clown who couldn't stop laughing.",
    ),
    ("a story about a cat who doesn't like rain", "Once upon a time, there was a cat who didn't like rain."),
]


@pytest.mark.parametrize("request_text,opening", OPENINGS)
def test_a_request_becomes_an_opening_that_names_its_subject(request_text, opening):
    assert build_prompt(request_text).opening == opening


@pytest.mark.parametrize(
    "request_text",
    ["", "   ", "tell me a story", "please tell me a story please", "😀🐉", "\x00\x07\x1b[]", "?!...", "{}[]()"],
)
def test_a_request_without_a_subject_gets_the_default_one(request_text):
    assert build_prompt(request_text).subject == DEFAULT_SUBJECT


@given(st.text(max_size=20000))
def test_any_transcript_gives_a_bounded_printable_opening(text):
    prompt = build_prompt(text)
    assert prompt.opening.startswith("Once upon a time, there was ")
    assert len(prompt.subject) <= MAX_SUBJECT_CHARS + 3
    assert all(ch.isprintable() for ch in prompt.opening)


# --- sentence splitter -----------------------------------------------------------------------------

SPLITS = [
    (
        "The dragon woke up. She wanted tea. Then she flew away.",
        ["The dragon woke up.", "She wanted tea.", "Then she flew away."],
    ),
    (
        "Mr. Fox met Dr. Owl at 3.5 miles from home. They talked.",
        ["Mr. Fox met Dr. Owl at 3.5 miles from home.", "They talked."],
    ),
    (
        '"Hello!" said Bo. "Do you like tea?" asked the cat. Bo nodded.',
        ['"Hello!" said Bo.', '"Do you like tea?" asked the cat.', "Bo nodded."],
    ),
    ("She waited... and waited. Nothing came.", ["She waited... and waited.", "Nothing came."]),
    ("It was dark... The owl hooted.", ["It was dark...", "The owl hooted."]),
    ("The End\n\nOnce upon another time", ["The End", "Once upon another time"]),
    ("**The Dragon** sat down. It was *very* tired.", ["The Dragon sat down.", "It was very tired."]),
]


@pytest.mark.parametrize("text,expected", SPLITS)
def test_the_splitter_cuts_at_sentence_ends_only(text, expected):
    splitter = SentenceSplitter(min_chars=1, max_chars=300)
    assert splitter.feed(text) + splitter.flush() == expected


@pytest.mark.parametrize("text,expected", SPLITS)
def test_the_splitter_gives_the_same_sentences_token_by_token(text, expected):
    splitter = SentenceSplitter(min_chars=1, max_chars=300)
    out = []
    for ch in text:
        out += splitter.feed(ch)
    assert out + splitter.flush() == expected


def test_a_sentence_is_released_as_soon_as_the_next_one_starts():
    splitter = SentenceSplitter(min_chars=1)
    assert splitter.feed("The dragon woke up.") == []  # "Mr." or "3." could still follow
    assert splitter.feed(" S") == ["The dragon woke up."]


def test_short_sentences_are_joined_to_the_next():
    splitter = SentenceSplitter(min_chars=24)
    assert splitter.feed("Yes. No. Maybe so, said the little fox. ") == []
    assert splitter.feed("Then") == ["Yes. No. Maybe so, said the little fox."]


def test_a_run_on_is_cut_at_a_comma_never_inside_a_word():
    splitter = SentenceSplitter(min_chars=1, max_chars=60)
    words = "and the dragon flew on, and on, and on over the hills and far away " * 4
    out = splitter.feed(words) + splitter.flush()
    assert all(len(s) <= 60 for s in out)
    assert " ".join(out).split() == words.split()


@given(st.lists(st.text(max_size=40), max_size=40))
@example(["000000\r", "0" * 74])  # a carriage return between words is a space too
def test_the_splitter_loses_no_word(pieces):
    splitter = SentenceSplitter(min_chars=10, max_chars=80)
    out = []
    for piece in pieces:
        out += splitter.feed(piece)
    out += splitter.flush()
    spoken = " ".join(out)
    for word in "".join(pieces).split():
        if len(word) <= 80 and any(ch.isalnum() for ch in word) and not set(word) & set("*#_`~<>|\\"):
            assert word in spoken


# --- stop strings and UTF-8 ------------------------------------------------------------------------


def test_a_stop_string_split_across_pieces_is_never_emitted():
    stops = StopMatcher(("<h3>", "\n\n\n"))
    out = [stops.feed(piece) for piece in ["The end", ".\n\n", "<", "h", "3>More"]]
    assert "".join(out) == "The end.\n\n"
    assert stops.is_stopped and stops.flush() == ""


def test_text_that_only_looks_like_a_stop_start_is_released():
    stops = StopMatcher(("<h3>",))
    assert stops.feed("a <") == "a "
    assert stops.feed("b") == "<b"
    assert stops.flush() == ""
    assert not stops.is_stopped


def test_multibyte_characters_split_across_tokens_come_out_whole():
    pieces = Utf8Pieces()
    data = "Bo 🐉 über".encode()
    out = "".join(pieces.feed(data[i : i + 1]) for i in range(len(data))) + pieces.flush()
    assert out == "Bo 🐉 über"


@pytest.mark.parametrize(
    "request_text,factor,is_bedtime",
    [
        ("tell me a story about a fox", 1.0, False),
        ("tell me a short story about a fox", 0.5, False),
        ("tell me a long story about a fox", 1.5, False),
        ("a bedtime story about a fox", 0.6, True),
        ("a long bedtime story about a fox", 0.6, True),  # bedtime stays short
        ("a story about a fox who is sleepy", 0.6, True),
    ],
)
def test_length_and_bedtime_come_from_the_request(request_text, factor, is_bedtime):
    prompt = build_prompt(request_text)
    assert prompt.length_factor == factor and prompt.is_bedtime is is_bedtime
    assert "a fox" in prompt.opening
    assert ("stars came out" in prompt.opening) is is_bedtime


def test_bedtime_mode_can_be_forced():
    assert build_prompt("a fox", is_bedtime=True).is_bedtime


GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_a_chat_template_puts_the_request_in_the_users_turn():
    from robot.story.prompt import chat_prefix

    prefix = chat_prefix(GEMMA_STYLE_TEMPLATE, build_prompt("a bedtime story about a fox"))
    assert prefix.startswith("<start_of_turn>user\nTell a short, calm bedtime story for a young child about a fox.")
    assert prefix.endswith("<start_of_turn>model\n")


@pytest.mark.parametrize("template", ["{% for %}", "{{ ().__class__.__bases__[0].__subclasses__() }}"])
def test_a_broken_or_hostile_template_is_refused(template):
    from robot.story.prompt import chat_prefix

    with pytest.raises(ValueError, match="chat template"):
        chat_prefix(template, build_prompt("a fox"))


KOREAN_OPENINGS = [
    ("차를 좋아하는 용 이야기 해 줘", "옛날 옛적에 차를 좋아하는 용이 살았어요."),
    ("용에 대한 이야기 해줘", "옛날 옛적에 용이 살았어요."),
    ("토끼 이야기 들려줘", "옛날 옛적에 토끼가 살았어요."),  # 가 after a vowel
    ("공룡이 나오는 이야기", "옛날 옛적에 공룡이 살았어요."),
    ("잠자리 곰 이야기 들려주세요", "옛날 옛적, 별이 반짝이는 조용한 밤에 곰이 살았어요."),
    ("", "옛날 옛적에 바다를 보고 싶은 아기 곰이 살았어요."),
]


@pytest.mark.parametrize("request_text,opening", KOREAN_OPENINGS)
def test_a_korean_request_becomes_a_korean_opening(request_text, opening):
    assert build_prompt(request_text, language="ko").opening == opening


@pytest.mark.parametrize(
    "text,expected", [("계속 해 줘", True), ("이어서 들려줘", True), ("더 해 주세요", True), ("용 이야기 해 줘", False)]
)
def test_korean_continue_requests(text, expected):
    from robot.story.prompt import is_continue_request

    assert is_continue_request(text, "ko") is expected


def test_the_splitter_cuts_korean_sentences():
    splitter = SentenceSplitter(min_chars=1)
    text = "옛날 옛적에 용이 살았어요. 용은 차를 좋아했어요! 어느 날"
    assert splitter.feed(text) + splitter.flush() == ["옛날 옛적에 용이 살았어요.", "용은 차를 좋아했어요!", "어느 날"]
