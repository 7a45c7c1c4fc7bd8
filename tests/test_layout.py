"""The architecture's import rule, read from the source: robot/ uses audio/ and engines/; audio/ and engines/ never
import robot/ and never import each other (ARCHITECTURE.md, "Dependencies point one way"). Every import counts,
also one inside a function or under TYPE_CHECKING, since any of them ties one stack to the other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"audio": {"robot", "engines"}, "engines": {"robot", "audio"}}


def imported_packages(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def crossings(package: str) -> list[str]:
    """Every import in package/ of a package it must not use, as "file:line imports name"."""
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported_packages(path.read_text()):
            if name in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


def test_audio_imports_neither_robot_nor_engines():
    assert len(list((ROOT / "audio").rglob("*.py"))) > 5  # the walk sees the package
    assert crossings("audio") == []


def test_engines_import_neither_robot_nor_audio():
    assert len(list((ROOT / "engines").rglob("*.py"))) > 5
    assert crossings("engines") == []


def test_the_rule_sees_every_kind_of_import():
    source = (
        "import engines.child\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from robot.events import Event\n"
        "def f():\n"
        "    import audio.tts as t\n"
        "from . import speech\n"  # relative: its own package
    )
    assert imported_packages(source) == [(1, "engines"), (2, "typing"), (4, "robot"), (6, "audio")]
