"""The safety filter with the parents' own words: their blocked words join the language's list as one more
category (at every strictness), their allowed words join its [allow] table. The merged list is written to the
state directory and loaded by the filter's own loader, so it is checked as the shipped lists are."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from robot.plumbing.paths import assets_dir
from robot.story.safety import STRICTNESS_LEVELS, SafetyError, SafetyFilter

PARENTS_CATEGORY = "parents"


def build_filter(language: str, strictness: str, blocked: tuple[str, ...], allowed: tuple[str, ...], folder: Path):
    """A SafetyFilter for the choices; raises SafetyError (naming the file) when the lists cannot be used."""
    if not blocked and not allowed:
        return SafetyFilter(language, strictness)
    base = assets_dir() / "safety" / f"{language}.toml"
    try:
        tables = tomllib.loads(base.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SafetyError(f"{base}: {e}") from None
    allow = tables.setdefault("allow", {})
    for word in allowed:
        allow.setdefault("phrases" if " " in word else "words", []).append(word)
    if blocked:
        tables[PARENTS_CATEGORY] = {
            "level": STRICTNESS_LEVELS[0],
            "words": [w for w in blocked if " " not in w],
            "phrases": [w for w in blocked if " " in w],
        }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{language}.toml").write_text(_toml(tables), encoding="utf-8")
    return SafetyFilter(language, strictness, lists_dir=folder)


def _toml(tables: dict) -> str:
    """The word lists as TOML: tables of strings and lists of strings (JSON's string escapes are TOML's too)."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{json.dumps(name)}]")
        for key, value in table.items():
            if isinstance(value, list):
                lines.append(f"{key} = [{', '.join(json.dumps(v, ensure_ascii=False) for v in value)}]")
            else:
                lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
        lines.append("")
    return "\n".join(lines)
