"""Voice commands: stop, another story, louder, softer, repeat; phrase lists per language in assets/commands/.

An utterance is a command only when all of it is one of the command's phrases (fillers such as "please" aside):
"stop" is a command, "a dragon who could not stop singing" is a story request. While the robot speaks the
recognizer listens for these phrases alone (a grammar), and a phrase the robot itself said a moment ago is not
taken from the microphone: that is its own voice coming back.
"""

from __future__ import annotations

import enum
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from robot.plumbing.paths import assets_dir

UNKNOWN_WORD = "[unk]"  # what Vosk's grammar mode answers for words outside the grammar
MAX_EXTRA_WORDS = 2


class Command(enum.Enum):
    STOP = "stop"
    ANOTHER = "another"  # stop this story, tell a new one
    LOUDER = "louder"
    SOFTER = "softer"
    REPEAT = "repeat"  # say the last sentence again and go on


class CommandsError(ValueError):
    """A phrase file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class CommandPhrases:
    language: str
    phrases: dict[str, Command]  # normalised phrase -> command
    fillers: frozenset[str]
    surprise: tuple[str, ...] = ()  # subjects for "another story"

    @classmethod
    def load(cls, language: str, path: Path | None = None) -> CommandPhrases:
        path = path or assets_dir() / "commands" / f"{language}.toml"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise CommandsError(f"{path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise CommandsError(f"{path}: {e}") from None
        fillers = data.get("fillers", [])
        if not isinstance(fillers, list) or not all(isinstance(f, str) for f in fillers):
            raise CommandsError(f"{path}: fillers must be a list of strings")
        surprise = data.get("surprise", [])
        if not isinstance(surprise, list) or not all(isinstance(x, str) and x.strip() for x in surprise):
            raise CommandsError(f"{path}: surprise must be a list of story subjects")
        table = data.get("commands")
        if not isinstance(table, dict):
            raise CommandsError(f"{path}: a [commands] table is missing")
        phrases: dict[str, Command] = {}
        for key, values in table.items():
            try:
                command = Command(key)
            except ValueError:
                known = ", ".join(c.value for c in Command)
                raise CommandsError(f"{path}: commands.{key} is not a command (known: {known})") from None
            if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
                raise CommandsError(f"{path}: commands.{key} must be a non-empty list of phrases")
            for value in values:
                phrase = normalise(value)
                if phrases.setdefault(phrase, command) is not command:
                    raise CommandsError(f"{path}: {value!r} is a phrase of both {phrases[phrase].value} and {key}")
        return cls(language, phrases, frozenset(normalise(f) for f in fillers), tuple(surprise))

    def match(self, text: str) -> Command | None:
        """The command that (nearly) the whole of `text` asks for, or None.

        The command's phrase must be in the utterance, with at most MAX_EXTRA_WORDS other words beside it:
        a breath or an edge of the robot's own voice that the recognizer turned into a word ([unk] in grammar
        mode, or the nearest word of the grammar where the model has no [unk]) is forgiven; a sentence that
        merely contains "stop" is not a command.
        """
        words = [w for w in normalise(text).split() if w not in self.fillers]
        best: Command | None = None
        best_length = 0
        for start in range(len(words)):
            for end in range(len(words), start, -1):
                command = self.phrases.get(" ".join(words[start:end]))
                if command is not None and end - start > best_length:
                    best, best_length = command, end - start
        if best is None or len(words) - best_length > MAX_EXTRA_WORDS:
            return None
        return best

    def grammar(self) -> tuple[str, ...]:
        """Every phrase, for a recognizer's grammar mode."""
        return tuple(sorted(self.phrases))

    def is_echo(self, text: str, recently_said: str) -> bool:
        """True when every word of the heard command is in what the robot said a moment ago."""
        said = set(normalise(recently_said).split())
        words = [w for w in normalise(text).split() if w not in self.fillers and w != UNKNOWN_WORD]
        return bool(words) and all(w in said for w in words)


_NOT_WORD = re.compile(r"[^\w\s\[\]]+")


def normalise(text: str) -> str:
    """Lower case, compatibility-normalised, punctuation dropped, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().replace("'", "")
    return " ".join(_NOT_WORD.sub(" ", text).split())
