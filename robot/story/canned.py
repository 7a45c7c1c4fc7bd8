"""Stories the robot knows by heart (assets/stories/<language>.toml), for when no language model can answer."""

from __future__ import annotations

import functools
import logging
import re
import tomllib

from robot.plumbing.paths import assets_dir

log = logging.getLogger(__name__)

LAST_RESORT = (
    "Once upon a time, there was a little star who could not sleep.",
    "The moon sang her a quiet song, and the star closed her eyes.",
    "And that is the end of the story.",
)


@functools.cache
def _stories(language: str) -> tuple[tuple[frozenset[str], tuple[str, ...]], ...]:
    path = assets_dir() / "stories" / f"{language}.toml"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        stories = tuple(
            (frozenset(k.lower() for k in table["keywords"]), tuple(table["sentences"])) for table in data.values()
        )
        if not stories or not all(sentences for _, sentences in stories):
            raise ValueError("no stories in it")
        return stories
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        log.error("canned stories %s are unusable (%s); using the last-resort story", path, e)
        return ((frozenset(), LAST_RESORT),)


def canned_story(language: str, request: str, seed: int) -> tuple[str, ...]:
    """The canned story whose keywords the request names, else one picked by the seed."""
    stories = _stories(language)
    words = set(re.findall(r"\w+", request.lower()))
    for keywords, sentences in stories:
        if keywords & words:
            return sentences
    return stories[seed % len(stories)][1]
