"""The biggest modules and functions of the packages, by lines: what the closing notes of a clean-up compare.

.venv/bin/python scripts/code_sizes.py [--top 10] [ROOT]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGES = ("robot", "audio", "engines")


def modules(root: Path) -> list[tuple[int, str]]:
    """(lines, path) of every module in the packages."""
    return [
        (len(path.read_text().splitlines()), str(path.relative_to(root)))
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    ]


def functions(root: Path) -> list[tuple[int, str]]:
    """(lines, path:qualified name) of every function and method, decorators and docstring included."""
    found = []
    for _, name in modules(root):
        tree = ast.parse((root / name).read_text())
        found += [(lines, f"{name}:{qualname}") for lines, qualname in _walk(tree, "")]
    return found


def _walk(node: ast.AST, prefix: str) -> list[tuple[int, str]]:
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            qualname = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found.append(((child.end_lineno or child.lineno) - first + 1, qualname))
            found += _walk(child, qualname + ".")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    root = Path(args.root)
    mods = modules(root)
    print(f"modules: {len(mods)}, lines: {sum(n for n, _ in mods)}")
    for lines, name in sorted(mods, reverse=True)[: args.top]:
        print(f"{lines:6d}  {name}")
    print("functions:")
    for lines, name in sorted(functions(root), reverse=True)[: args.top]:
        print(f"{lines:6d}  {name}")


if __name__ == "__main__":
    main()
