"""Requests only when meant: in `run` mode (always listening) an utterance starts a story only when it asks for one.

The request grammar takes a bare subject ("a dragon who loves tea") for a request, which suits push-to-talk: the
child pressed the button to ask. An always-open microphone also hears a radio and grown-ups talking, and the
grammar forces that talk onto its nearest subjects ("the weather today..." came out as "the wizard and the silly
witch..."): there a request must ask for a story in words ("tell me", "a story about", "go on").
"""

from __future__ import annotations

from robot.controls.commands import normalise

# a request asks in words: "(a) story about ...", "tale of ...", or it begins "tell me" / "tell us"; talk forced onto
# the grammar makes "story" now and then ("read short story old bird": a grown-up saying "buy more bread"), but
# seldom in that order
STORY_WORDS = frozenset({"story", "stories", "tale"})
ABOUT_WORDS = frozenset({"about", "of", "with"})
# before "story" a request says "a", "another" or "the" (or kind words after one), or starts with it: the grammar
# lets the article go, and radio talk forced onto it came out as "can you read us story with a big kitten"
ARTICLES = frozenset({"a", "an", "another", "the", "one", "some", "more", "your"})
KIND_WORDS = frozenset({"short", "long", "bedtime", "funny", "silly", "little", "new", "happy", "magic"})
KO_STORY = "이야기"  # Korean requests all say "story", in any of its inflected forms
# a continue request that names what goes on: "continue", "go on with the story"; a bare "go on", "keep going" or
# "tell me more" also comes out of a radio (scripts/bench_requests.py: 3 of the 6 false starts in 400 radio-like
# sentences were these) and counts only soon after a story (robot.robot.BARE_CONTINUE_WITHIN_S)
NAMING_CONTINUE_WORDS = frozenset({"continue", "story"})


def asks_for_a_story(text: str, language: str) -> bool:
    """True when the transcript asks for a story in words (not only names a subject), or to go on with one."""
    from robot.story.prompt import is_continue_request

    if is_continue_request(text, language):
        return True
    if language == "ko":
        return KO_STORY in text
    words = normalise(text).split()
    while words[:1] in (["please"], ["can"], ["could"], ["would"], ["you"]):
        words = words[1:]
    if words[:2] in (["tell", "me"], ["tell", "us"]):
        return True
    return any(
        w in STORY_WORDS and after in ABOUT_WORDS and _is_introduced(words[:i], after)
        for i, (w, after) in enumerate(zip(words, words[1:], strict=False))
    )


def is_bare_continue(text: str, language: str) -> bool:
    """A continue request that says neither "continue" nor "story" ("go on please", "keep going"); English only."""
    from robot.story.prompt import is_continue_request

    if language != "en" or not is_continue_request(text, language):
        return False
    return not NAMING_CONTINUE_WORDS & set(normalise(text).split())


def _is_introduced(before: list[str], after: str) -> bool:
    """The words before "story" end in an article (and kind words), or there are none and "about" follows: a child
    who leaves the article out says "story about a dragon"; "story of a duck that..." was a grown-up's "...and then
    go straight on" forced onto the grammar."""
    while before and before[-1] in KIND_WORDS:
        before = before[:-1]
    return before[-1] in ARTICLES if before else after == "about"
