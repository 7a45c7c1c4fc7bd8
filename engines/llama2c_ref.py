"""NumPy reference for storybot-llama2c (docs/llama2c-engine.md): formats, forward pass, sampling, tokenizer.

Written from the contract, independently of the C engine, so that the two can be checked against each other:

- writers and readers for llama2.c checkpoints v0 (legacy), v1 (fp32 + header), v2 (int8 Q8_0) and tokenizer.bin;
- random weights for the stories shapes and small test shapes, a small real-looking vocabulary;
- a forward pass in float64 (int8 matmuls follow the contract's two group rules), greedy and llama2.c sampling,
  generation with the context-window shift, and the llama2.c tokenizer (encode, decode, what `run` prints);
- header/size checks with the contract's exit statuses (used by `storybot models verify`).

    python -m engines.llama2c_ref write --shape stories15M --version 2 --seed 1 OUT.bin [--tokenizer TOK.bin]
    python -m engines.llama2c_ref logits CKPT --prompt-ids 1,2,3 --out L.f32    reference logits, one row a step
    python -m engines.llama2c_ref generate CKPT --prompt-ids 1,2,3 -n 40        greedy ids (as --dump-ids writes)
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import struct
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = 0x616B3432
HEADER_BYTES = 256  # v1/v2 header, zero padded
BOS, EOS = 1, 2
BYTE_TOKEN_OFFSET = 3  # ids 3..258 are <0x00>..<0xFF>
EXPORT_GROUP_SIZE = 64  # llama2.c export.py's default, halved while dim % group_size != 0

# exit statuses (contract)
EXIT_OK = 0
EXIT_USAGE = 64
EXIT_MALFORMED = 65
EXIT_MISSING = 66
EXIT_SIZE = 67
EXIT_TOKENIZER = 68
EXIT_VOCAB = 69
EXIT_INTERNAL = 70
EXIT_NOMEM = 71

# every quantized tensor of a v2 file, in file order (wcls last, only when unshared)
LAYER_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")

# v3 (docs/llama2c-engine.md "Format v3")
WEIGHT_FP32, WEIGHT_INT8, WEIGHT_Q4 = 0, 1, 2
WEIGHT_NAMES = {WEIGHT_FP32: "fp32", WEIGHT_INT8: "int8", WEIGHT_Q4: "q4"}
Q4_GROUP_SIZE = 32  # GGUF Q4_0/Q4_1's block; the only group size weight_type 2 has
META_MAGIC = 0x6B746273  # "sbtk"
META_VERSION = 1
TOKENIZER_SENTENCEPIECE, TOKENIZER_BYTE_BPE = 1, 2
PRE_NONE, PRE_GPT2, PRE_SMOLLM = 0, 1, 2
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
MAX_META_TOKENS = 1_000_000
MAX_TOKEN_BYTES = 512
MAX_MERGES = 2_000_000
MAX_TEMPLATE_BYTES = 65_536
V3_GROUP_SIZE = 32  # GGUF Q8_0's block: a v3 int8 file with fp16-exact scales is a Q8_0 GGUF's exact weights


class FormatError(ValueError):
    """A checkpoint or tokenizer that cannot be used; `status` is the contract's exit status for its class."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int  # always positive here; v0's sign trick lives in the writer/reader
    seq_len: int
    rope_theta: float = 10000.0  # v3 header; llama2.c's fixed value otherwise
    norm_eps: float = 1e-5  # v3 header; llama2.c's fixed value otherwise

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads

    def matrix_shape(self, name: str) -> tuple[int, int]:
        """(rows, cols) of one layer's matrix: W x with W [rows][cols]."""
        d, h, kv = self.dim, self.hidden_dim, self.kv_dim
        return {"wq": (d, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, d), "w1": (h, d), "w2": (d, h), "w3": (h, d)}[
            name
        ]

    def as_ints(self) -> tuple[int, ...]:
        return (self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads, self.vocab_size, self.seq_len)


SHAPES: dict[str, Config] = {
    "stories260K": Config(64, 172, 5, 8, 4, 512, 512),
    "stories15M": Config(288, 768, 6, 6, 6, 32000, 256),
    "stories42M": Config(512, 1376, 8, 8, 8, 32000, 1024),
    "stories110M": Config(768, 2048, 12, 12, 12, 32000, 1024),
    # small test shapes
    "tiny": Config(48, 100, 2, 6, 2, 384, 64),  # GQA; export GS 16 and hidden 100 % 16 != 0: groups cross rows
    "tiny_mha": Config(64, 128, 2, 4, 4, 512, 64),  # every n a multiple of GS 64: activations quantized
    "tiny_gqa": Config(32, 64, 2, 4, 1, 360, 32),  # one kv head for four query heads
}


def export_group_size(dim: int) -> int:
    """llama2.c export.py: 64, halved while it does not divide dim."""
    gs = EXPORT_GROUP_SIZE
    while dim % gs != 0:
        gs //= 2
    return gs


@dataclass
class ModelMeta:
    """The v3 metadata block: the tokenizer, special tokens, end ids and chat template (self-contained model)."""

    tokenizer_kind: int  # TOKENIZER_SENTENCEPIECE or TOKENIZER_BYTE_BPE
    pre_tokenizer: int  # PRE_NONE, PRE_GPT2, PRE_SMOLLM
    bos_id: int  # -1: none
    eos_id: int  # -1: none
    add_bos: bool
    token_types: list[int]
    scores: np.ndarray  # float32 [n_tokens]
    token_bytes: list[bytes]  # raw bytes (byte-level BPE: GPT-2 mapping undone); control/user-defined: their text
    merges: np.ndarray  # int32 [n_merges][3]: left, right, result, in rank order
    end_ids: list[int]
    chat_template: str = ""

    @property
    def n_tokens(self) -> int:
        return len(self.token_bytes)

    def special_tokens(self) -> dict[str, int]:
        """Text of every control and user-defined token -> its id (what `special` prompts may contain)."""
        out: dict[str, int] = {}
        for i, (t, b) in enumerate(zip(self.token_types, self.token_bytes, strict=True)):
            if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED):
                out.setdefault(b.decode("utf-8", "replace"), i)
        return out


# ----------------------------------------------------------------------------------------------- weights


@dataclass
class QTensor:
    """A Q8_0 tensor: q has the tensor's shape, s one fp32 scale per group_size values of the flattened tensor."""

    q: np.ndarray  # int8, shape of the fp32 tensor ([L][rows][cols] or [rows][cols])
    s: np.ndarray  # float32 [numel / group_size]
    group_size: int

    def dequantize(self) -> np.ndarray:
        gs = self.group_size
        return (self.q.reshape(-1, gs).astype(np.float32) * self.s[:, None]).reshape(self.q.shape)

    def layer(self, i: int) -> QTensor:
        per = self.q[i].size // self.group_size
        return QTensor(self.q[i], self.s[i * per : (i + 1) * per], self.group_size)


@dataclass
class Q4Tensor:
    """4-bit groups (weight_type 2): value = q * d + m per group of 32 consecutive values of a row, q in 0..15,
    d and m fp16 numbers (held here as float32). GGUF Q4_1 exactly; Q4_0 is m = -8 d."""

    q: np.ndarray  # uint8 0..15, shape of the fp32 tensor ([L][rows][cols] or [rows][cols])
    d: np.ndarray  # float32 [numel / 32], fp16-exact
    m: np.ndarray  # float32 [numel / 32], fp16-exact
    group_size: int = Q4_GROUP_SIZE

    def dequantize(self) -> np.ndarray:
        g = self.q.reshape(-1, self.group_size).astype(np.float32)
        return (g * self.d[:, None] + self.m[:, None]).reshape(self.q.shape)

    def layer(self, i: int) -> Q4Tensor:
        per = self.q[i].size // self.group_size
        sl = slice(i * per, (i + 1) * per)
        return Q4Tensor(self.q[i], self.d[sl], self.m[sl], self.group_size)

    def packed(self) -> bytes:
        """The file's bytes: the nibbles (per group, byte j = value j | value j+16 << 4), then d, then m (fp16)."""
        g = np.ascontiguousarray(self.q, dtype=np.uint8).reshape(-1, self.group_size)
        half = self.group_size // 2
        nibbles = (g[:, :half] | (g[:, half:] << 4)).astype(np.uint8)
        return nibbles.tobytes() + self.d.astype("<f2").tobytes() + self.m.astype("<f2").tobytes()


def _fp16_toward(x: np.ndarray, up: bool) -> np.ndarray:
    """x rounded to an fp16-exact value, up (toward +inf) or down, as float32; overflow is an error."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    off = h.astype(np.float32) < x if up else h.astype(np.float32) > x
    h[off] = np.nextafter(h[off], np.float16(np.inf if up else -np.inf))
    if not np.all(np.isfinite(h)):
        raise ValueError("a weight group exceeds fp16's range (|w| > 6.5e4) for 4-bit groups")
    return h.astype(np.float32)


def quantize_q4(w: np.ndarray) -> Q4Tensor:
    """4-bit groups of 32 (GGUF Q4_1's rule with fp16-exact numbers): m = min rounded down, d = (max - m) / 15
    rounded up, q = round((w - m) / d), so every q is in 0..15."""
    gs = Q4_GROUP_SIZE
    a = np.ascontiguousarray(w, dtype=np.float32)
    if a.shape[-1] % gs:
        raise ValueError(f"rows of {a.shape[-1]} values are not a multiple of the 4-bit group size {gs}")
    g = a.reshape(-1, gs)
    m = _fp16_toward(g.min(axis=1), up=False)
    d = _fp16_toward((g.max(axis=1) - m) / np.float32(15.0), up=True)
    safe = np.where(d > 0, d, np.float32(1.0))
    q = round_half_away((g - m[:, None]) / safe[:, None]).clip(0, 15).astype(np.uint8)
    return Q4Tensor(q.reshape(a.shape), d, m)


def unpack_q4(raw: bytes | np.ndarray, shape: tuple[int, ...]) -> Q4Tensor:
    """The inverse of Q4Tensor.packed for a tensor of `shape`."""
    gs, n = Q4_GROUP_SIZE, int(np.prod(shape))
    buf = np.frombuffer(raw, dtype=np.uint8)
    groups = n // gs
    nib = buf[: n // 2].reshape(groups, gs // 2)
    q = np.concatenate([nib & 0x0F, nib >> 4], axis=1).reshape(shape)
    d = buf[n // 2 : n // 2 + 2 * groups].view("<f2").astype(np.float32)
    m = buf[n // 2 + 2 * groups : n // 2 + 4 * groups].view("<f2").astype(np.float32)
    return Q4Tensor(q, d, m)


def q4_bytes(numel: int) -> int:
    """Bytes of a 4-bit tensor in the file: 4 bits a value, an fp16 d and m a group of 32."""
    return numel // 2 + numel // Q4_GROUP_SIZE * 4


@dataclass
class Weights:
    config: Config
    token_embedding: np.ndarray  # [vocab][dim]
    rms_att: np.ndarray  # [L][dim]
    wq: np.ndarray  # [L][dim][dim]
    wk: np.ndarray  # [L][kv_dim][dim]
    wv: np.ndarray  # [L][kv_dim][dim]
    wo: np.ndarray  # [L][dim][dim]
    rms_ffn: np.ndarray  # [L][dim]
    w1: np.ndarray  # [L][hidden][dim]
    w2: np.ndarray  # [L][dim][hidden]
    w3: np.ndarray  # [L][hidden][dim]
    rms_final: np.ndarray  # [dim]
    wcls: np.ndarray | None = None  # [vocab][dim]; None = shared with token_embedding
    # int8 (v2, v3 weight_type 1) or 4-bit (v3 weight_type 2: the layer matrices Q4Tensor, the embedding and
    # classifier int8): the quantized tensors; the fp32 fields hold their dequantized values
    quant: dict[str, QTensor | Q4Tensor] | None = None

    @property
    def shared_classifier(self) -> bool:
        return self.wcls is None

    @property
    def group_size(self) -> int | None:
        return None if self.quant is None else self.quant["token_embedding"].group_size

    @property
    def is_q4(self) -> bool:
        return self.quant is not None and isinstance(self.quant["wq"], Q4Tensor)


@dataclass
class Checkpoint:
    version: int
    weights: Weights
    group_size: int | None = None
    meta: ModelMeta | None = None  # v3 only

    @property
    def config(self) -> Config:
        return self.weights.config


def resolve_shape(shape: str | Config) -> Config:
    if isinstance(shape, Config):
        return shape
    try:
        return SHAPES[shape]
    except KeyError:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}") from None


def random_weights(shape: str | Config, seed: int = 0, shared_classifier: bool = True, gain: float = 1.5) -> Weights:
    """Random weights whose greedy output is not degenerate: matrices ~ N(0, gain/sqrt(fan_in)) so that the blocks,
    not the input embedding, steer the next token; embedding/classifier ~ N(0, 3/sqrt(dim)) for logits of std ~3;
    norms ~ 1. (With gain 0.5 a shared classifier just repeats the input token forever; with 1.5 a tiny change
    deep inside, such as one activation rounded the other way, moves the logits by ~1%.)"""
    c = resolve_shape(shape)
    rng = np.random.default_rng(seed)
    L = c.n_layers

    def mat(*shape_: int) -> np.ndarray:
        a = rng.standard_normal(shape_, dtype=np.float32)
        a *= np.float32(gain / math.sqrt(shape_[-1]))
        return a

    def norm(*shape_: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(shape_, dtype=np.float32)).astype(np.float32)

    def emb_like() -> np.ndarray:
        a = rng.standard_normal((c.vocab_size, c.dim), dtype=np.float32)
        a *= np.float32(3.0 / math.sqrt(c.dim))
        return a

    emb = emb_like()
    return Weights(
        config=c,
        token_embedding=emb,
        rms_att=norm(L, c.dim),
        wq=mat(L, c.dim, c.dim),
        wk=mat(L, c.kv_dim, c.dim),
        wv=mat(L, c.kv_dim, c.dim),
        wo=mat(L, c.dim, c.dim),
        rms_ffn=norm(L, c.dim),
        w1=mat(L, c.hidden_dim, c.dim),
        w2=mat(L, c.dim, c.hidden_dim),
        w3=mat(L, c.hidden_dim, c.dim),
        rms_final=norm(c.dim),
        wcls=None if shared_classifier else emb_like(),
    )


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's round(): halves away from zero (np.round rounds halves to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def fp16_scales(scale: np.ndarray) -> np.ndarray:
    """Each scale rounded up to the nearest value an fp16 holds exactly (so no |w|/scale exceeds 127), as float32.

    With such scales and groups of 32 the int8 tensor is exactly a GGUF Q8_0 tensor (fp16 d, 32 int8 per block)."""
    scale = np.asarray(scale, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = scale.astype(np.float16)
    low = h.astype(np.float32) < scale
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    h[(scale > 0) & (h == 0)] = np.float16(2.0**-24)  # the smallest subnormal rather than a zero scale
    if not np.all(np.isfinite(h)):
        raise ValueError("a weight group's scale exceeds fp16's range (|w| > 8.3e6)")
    return h.astype(np.float32)


def quantize_q80(w: np.ndarray, group_size: int, fp16: bool = False) -> QTensor:
    """Symmetric int8 per group of the flattened tensor: scale = max|w|/127, q = round(w/scale) (0 stays 0).

    fp16: the scales are rounded up to fp16-exact values first (v3 files converted from GGUF)."""
    flat = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    if flat.size % group_size:
        raise ValueError(f"{flat.size} values are not a multiple of group size {group_size}")
    groups = flat.reshape(-1, group_size)
    scale = (np.abs(groups).max(axis=1) / np.float32(127.0)).astype(np.float32)
    if fp16:
        scale = fp16_scales(scale)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = round_half_away(groups / safe[:, None]).clip(-127, 127).astype(np.int8)
    return QTensor(q.reshape(w.shape), scale, group_size)


def quantize_activations(x: np.ndarray, group_size: int) -> np.ndarray:
    """The contract's activation rule, returned dequantized: per group of the last axis, in float32 like the engine."""
    x32 = np.asarray(x, dtype=np.float32)
    g = x32.reshape(*x32.shape[:-1], -1, group_size)
    scale = (np.abs(g).max(axis=-1, keepdims=True) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = round_half_away((g / safe).astype(np.float32))
    q = np.where(scale > 0, q, 0.0)
    return (q.astype(np.float64) * scale.astype(np.float64)).reshape(x32.shape)


def quantize_weights(w: Weights, group_size: int, fp16: bool = False, q4: bool = False) -> Weights:
    """A copy of w as v2 (or v3 int8, fp16=True) holds it: int8 tensors, the fp32 fields their dequantized values.

    q4: as v3 weight_type 2 holds it (layer matrices 4-bit, embedding and classifier int8; group_size 32)."""
    if q4 and group_size != Q4_GROUP_SIZE:
        raise ValueError(f"4-bit weights have groups of {Q4_GROUP_SIZE}, not {group_size}")
    quant: dict[str, QTensor | Q4Tensor] = {"token_embedding": quantize_q80(w.token_embedding, group_size, fp16 or q4)}
    for name in LAYER_MATRICES:
        quant[name] = quantize_q4(getattr(w, name)) if q4 else quantize_q80(getattr(w, name), group_size, fp16)
    if w.wcls is not None:
        quant["wcls"] = quantize_q80(w.wcls, group_size, fp16 or q4)
    deq: dict[str, Any] = {name: t.dequantize() for name, t in quant.items()}
    return replace(w, **deq, quant=quant)


# ----------------------------------------------------------------------------------------------- writing


def _f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def rope_tables(c: Config) -> tuple[np.ndarray, np.ndarray]:
    """freq_cis_real/imag [seq_len][head_size/2] as llama2.c's legacy export writes them (run.c ignores them)."""
    hs = c.head_size
    freqs = 1.0 / (10000.0 ** (np.arange(0, hs, 2, dtype=np.float64)[: hs // 2] / hs))
    angles = np.outer(np.arange(c.seq_len, dtype=np.float64), freqs)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def pack_meta(meta: ModelMeta) -> bytes:
    """The v3 metadata block."""
    n = meta.n_tokens
    if not (len(meta.token_types) == len(meta.scores) == n):
        raise ValueError(f"{n} tokens but {len(meta.token_types)} types and {len(meta.scores)} scores")
    parts = [
        struct.pack(
            "<IIIIiiB3xI",
            META_MAGIC,
            META_VERSION,
            meta.tokenizer_kind,
            meta.pre_tokenizer,
            meta.bos_id,
            meta.eos_id,
            int(meta.add_bos),
            n,
        )
    ]
    for t, score, b in zip(meta.token_types, np.asarray(meta.scores, np.float32), meta.token_bytes, strict=True):
        if len(b) > MAX_TOKEN_BYTES:
            raise ValueError(f"a token of {len(b)} bytes is longer than {MAX_TOKEN_BYTES}")
        parts.append(struct.pack("<BfH", t, float(score), len(b)) + b)
    merges = np.ascontiguousarray(np.asarray(meta.merges, dtype="<i4").reshape(-1, 3))
    parts.append(struct.pack("<I", len(merges)) + merges.tobytes())
    parts.append(struct.pack("<I", len(meta.end_ids)) + struct.pack(f"<{len(meta.end_ids)}i", *meta.end_ids))
    template = meta.chat_template.encode("utf-8")
    if len(template) > MAX_TEMPLATE_BYTES:
        raise ValueError(f"the chat template has {len(template)} bytes, more than {MAX_TEMPLATE_BYTES}")
    parts.append(struct.pack("<I", len(template)) + template)
    return b"".join(parts)


def v3_header(
    c: Config, shared: bool, group_size: int, meta_offset: int, meta_size: int, weight_type: int | None = None
) -> bytes:
    """The 256-byte v3 header; weight_type None: group_size 0 = fp32 weights (weight_type 0), else int8 groups
    (weight_type 1); WEIGHT_Q4 (group_size 32) for 4-bit layer matrices."""
    if weight_type is None:
        weight_type = WEIGHT_INT8 if group_size else WEIGHT_FP32
    head = struct.pack("<Ii7iB3xiIffQQ", MAGIC, 3, *c.as_ints(), int(shared), group_size, weight_type,
                       c.rope_theta, c.norm_eps, meta_offset, meta_size)  # fmt: skip
    return head.ljust(HEADER_BYTES, b"\0")


def v3_tensor_order(c: Config, shared: bool) -> list[tuple[str, int | None, tuple[int, ...]]]:
    """(name, layer or None, shape) of every weight tensor of a v3 file in file order.

    The norms first, then (v1/v2 order) the embedding and each matrix layer by layer, the classifier last."""
    L, d = c.n_layers, c.dim
    out: list[tuple[str, int | None, tuple[int, ...]]] = [("rms_att", None, (L, d)), ("rms_ffn", None, (L, d))]
    out += [("rms_final", None, (d,)), ("token_embedding", None, (c.vocab_size, d))]
    out += [(n, i, c.matrix_shape(n)) for n in LAYER_MATRICES for i in range(L)]
    if not shared:
        out.append(("wcls", None, (c.vocab_size, d)))
    return out


def write_v3_tensor(f, a: np.ndarray | QTensor | Q4Tensor, name: str, group_size: int, q4: bool = False) -> None:
    """One tensor of a v3 file: norms always fp32; matrices fp32 (group_size 0) or int8 values then scales;
    q4 (weight_type 2): layer matrices as 4-bit groups (nibbles, d, m), embedding and classifier int8."""
    if name.startswith("rms_") or not group_size:
        f.write(_f32(a.dequantize() if isinstance(a, (QTensor, Q4Tensor)) else a))
        return
    if q4 and name in LAYER_MATRICES:
        f.write((a if isinstance(a, Q4Tensor) else quantize_q4(np.asarray(a))).packed())
        return
    if isinstance(a, QTensor):
        qt = a if a.group_size == group_size else quantize_q80(a.dequantize(), group_size, fp16=True)
    else:
        qt = quantize_q80(a.dequantize() if isinstance(a, Q4Tensor) else a, group_size, fp16=True)
    f.write(np.ascontiguousarray(qt.q, dtype=np.int8).tobytes())
    f.write(_f32(qt.s))


def _write_v3(path: Path, weights: Weights, meta: ModelMeta, group_size: int, shared: bool, q4: bool = False) -> None:
    c = weights.config
    blob = pack_meta(meta)
    wtype = WEIGHT_Q4 if q4 else None
    meta_offset = expected_size(c, 3, shared, group_size, weight_type=wtype)
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as f:
            f.write(v3_header(c, shared, group_size, meta_offset, len(blob), wtype))
            for name, layer, _shape in v3_tensor_order(c, shared):
                if name == "wcls":
                    t = weights.wcls if weights.wcls is not None else weights.token_embedding
                else:
                    t = getattr(weights, name)
                q = weights.quant.get(name) if weights.quant and group_size else None
                if layer is not None:
                    t, q = t[layer], (q.layer(layer) if q is not None else None)
                write_v3_tensor(f, q if q is not None else t, name, group_size, q4)
            assert f.tell() == meta_offset, (f.tell(), meta_offset)
            f.write(blob)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def write_checkpoint(
    path: str | os.PathLike,
    weights: Weights,
    version: int = 0,
    group_size: int | None = None,
    shared_classifier: bool | None = None,
    meta: ModelMeta | None = None,
    q4: bool | None = None,
) -> Path:
    """Write a llama2.c checkpoint. shared_classifier None follows the weights; False with shared weights writes
    the embedding again as wcls. v2 group size: export's rule unless given.

    v3 needs `meta`; group_size 0 writes fp32 weights, None the weights' own int8 group size or 32 (int8 with
    fp16-exact scales, written atomically). q4 (v3 only; None: when the weights are 4-bit and group_size is not
    0) writes weight_type 2: 4-bit layer matrices (the weights' own, else quantized), int8 embedding."""
    c = weights.config
    shared = weights.shared_classifier if shared_classifier is None else shared_classifier
    wcls = None if shared else (weights.wcls if weights.wcls is not None else weights.token_embedding)
    path = Path(path)
    L = c.n_layers
    if version == 3:
        if meta is None:
            raise ValueError("a v3 checkpoint needs its metadata (tokenizer, end ids, template)")
        gs = (weights.group_size or V3_GROUP_SIZE) if group_size is None else group_size
        if q4 is None:
            q4 = weights.is_q4 and gs != 0
        if q4 and gs != Q4_GROUP_SIZE:
            raise ValueError(f"4-bit weights have groups of {Q4_GROUP_SIZE}, not {gs}")
        _write_v3(path, weights, meta, gs, shared, q4)
        return path
    with open(path, "wb") as f:
        if version == 0:
            vocab = c.vocab_size if shared else -c.vocab_size
            f.write(struct.pack("<7i", c.dim, c.hidden_dim, L, c.n_heads, c.n_kv_heads, vocab, c.seq_len))
            for a in (weights.token_embedding, weights.rms_att, weights.wq, weights.wk, weights.wv, weights.wo):
                f.write(_f32(a))
            for a in (weights.rms_ffn, weights.w1, weights.w2, weights.w3, weights.rms_final, *rope_tables(c)):
                f.write(_f32(a))
            if wcls is not None:
                f.write(_f32(wcls))
        elif version == 1:
            header = struct.pack("<Ii7iB", MAGIC, 1, *c.as_ints(), int(shared))
            f.write(header.ljust(HEADER_BYTES, b"\0"))
            for a in (weights.rms_att, weights.rms_ffn, weights.rms_final, weights.token_embedding):
                f.write(_f32(a))
            for name in LAYER_MATRICES:
                f.write(_f32(getattr(weights, name)))
            if wcls is not None:
                f.write(_f32(wcls))
        elif version == 2:
            gs = group_size or weights.group_size or export_group_size(c.dim)
            header = struct.pack("<Ii7iBi", MAGIC, 2, *c.as_ints(), int(shared), gs)
            f.write(header.ljust(HEADER_BYTES, b"\0"))
            for a in (weights.rms_att, weights.rms_ffn, weights.rms_final):
                f.write(_f32(a))
            # one tensor each: the embedding, every layer's matrix (layer by layer), the classifier
            tensors = [weights.token_embedding] + [m for n in LAYER_MATRICES for m in getattr(weights, n)]
            if wcls is not None:
                tensors.append(wcls)
            for t in tensors:
                qt = quantize_q80(t, gs)
                f.write(np.ascontiguousarray(qt.q, dtype=np.int8).tobytes())
                f.write(_f32(qt.s))
        else:
            raise ValueError(f"unknown checkpoint version {version}")
    return path


# ----------------------------------------------------------------------------------------------- checking and reading


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    version: int
    config: Config
    shared_classifier: bool
    group_size: int | None
    size_bytes: int
    payload_offset: int
    weight_type: int | None = None  # v3: WEIGHT_FP32, WEIGHT_INT8 or WEIGHT_Q4
    meta_offset: int = 0  # v3: where the metadata block starts (= where the weights end)
    meta_size: int = 0

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights (what the engine maps), without the header and the v3 metadata."""
        end = self.meta_offset if self.version == 3 else self.size_bytes
        return end - self.payload_offset


def _numel_of_quantized(c: Config, shared: bool) -> list[int]:
    sizes = [c.vocab_size * c.dim]
    for name in LAYER_MATRICES:
        rows, cols = c.matrix_shape(name)
        sizes += [rows * cols] * c.n_layers
    if not shared:
        sizes.append(c.vocab_size * c.dim)
    return sizes


def expected_size(
    c: Config, version: int, shared: bool, group_size: int | None = None, weight_type: int | None = None
) -> int:
    """Bytes a checkpoint of this header must have (contract formats); v3: the weights' end (= meta_offset).

    weight_type WEIGHT_Q4 (v3): the layer matrices 4-bit, the embedding and classifier int8 groups of 32."""
    L, d = c.n_layers, c.dim
    layer_floats = sum(r * k for r, k in (c.matrix_shape(n) for n in LAYER_MATRICES))
    norms = 2 * L * d + d
    cls = 0 if shared else c.vocab_size * d
    if version == 0:
        rope = c.seq_len * (c.head_size // 2) * 2
        return 28 + 4 * (c.vocab_size * d + norms + L * layer_floats + rope + cls)
    if version == 1 or (version == 3 and not group_size):
        return HEADER_BYTES + 4 * (norms + c.vocab_size * d + L * layer_floats + cls)
    assert group_size
    if weight_type == WEIGHT_Q4:
        int8 = c.vocab_size * d * (1 if shared else 2)
        return HEADER_BYTES + 4 * norms + int8 + 4 * (int8 // group_size) + L * q4_bytes(layer_floats)
    return HEADER_BYTES + 4 * norms + sum(n + 4 * (n // group_size) for n in _numel_of_quantized(c, shared))


def _check_ranges(path: str, c: Config, raw_vocab: int) -> None:
    def bad(what: str) -> FormatError:
        return FormatError(EXIT_MALFORMED, f"{path}: header: {what}")

    if not 1 <= c.dim <= 16384:
        raise bad(f"dim {c.dim} is outside 1..16384")
    if not 1 <= c.n_heads <= 256:
        raise bad(f"n_heads {c.n_heads} is outside 1..256")
    if c.dim % c.n_heads:
        raise bad(f"dim {c.dim} is not a multiple of n_heads {c.n_heads}")
    if c.head_size % 2:
        raise bad(f"head_size {c.head_size} (dim/n_heads) is odd")
    if not 1 <= c.hidden_dim <= 65536:
        raise bad(f"hidden_dim {c.hidden_dim} is outside 1..65536")
    if not 1 <= c.n_layers <= 256:
        raise bad(f"n_layers {c.n_layers} is outside 1..256")
    if not 1 <= c.n_kv_heads <= c.n_heads:
        raise bad(f"n_kv_heads {c.n_kv_heads} is outside 1..n_heads ({c.n_heads})")
    if c.n_heads % c.n_kv_heads:
        raise bad(f"n_heads {c.n_heads} is not a multiple of n_kv_heads {c.n_kv_heads}")
    if not 1 <= abs(raw_vocab) <= 1_000_000:
        raise bad(f"vocab_size {raw_vocab} is outside 1..1000000")
    if not 1 <= c.seq_len <= 1_048_576:
        raise bad(f"seq_len {c.seq_len} is outside 1..1048576")


def _os_error(path: str, e: OSError, what: str) -> FormatError:
    name = errno.errorcode.get(e.errno or 0, "error")
    return FormatError(EXIT_MISSING, f"{path}: cannot read the {what}: {e.strerror or e} ({name})")


def check_checkpoint(path: str | os.PathLike, *, with_meta: bool = True) -> CheckpointInfo:
    """Header, ranges and size, without reading the weights. Raises FormatError(status, one-line message).

    v3: the metadata block is parsed and checked too, unless with_meta is False (checkpoint_shape)."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise _os_error(path, e, "checkpoint") from None
    if len(head) >= 8 and struct.unpack_from("<I", head)[0] == MAGIC and struct.unpack_from("<i", head, 4)[0] == 3:
        return _check_v3(path, head, size, with_meta)
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == MAGIC:
        if len(head) < 41:
            raise FormatError(EXIT_SIZE, f"{path}: truncated: {size} bytes, shorter than the 256-byte header")
        version = struct.unpack_from("<i", head, 4)[0]
        if version not in (1, 2):
            raise FormatError(EXIT_MALFORMED, f"{path}: unknown checkpoint version {version} (expected 1, 2 or 3)")
        if len(head) < HEADER_BYTES:
            raise FormatError(EXIT_SIZE, f"{path}: truncated: {size} bytes, shorter than the 256-byte header")
        ints = struct.unpack_from("<7i", head, 8)
        flag = head[36]
        c = Config(*ints)
        _check_ranges(path, c, c.vocab_size)
        if c.vocab_size < 1:
            raise FormatError(
                EXIT_MALFORMED, f"{path}: header: vocab_size {c.vocab_size} must be positive in v{version}"
            )
        if flag not in (0, 1):
            raise FormatError(EXIT_MALFORMED, f"{path}: header: shared_classifier is {flag}, expected 0 or 1")
        shared, gs = bool(flag), None
        if version == 2:
            gs = struct.unpack_from("<i", head, 37)[0]
            _check_group_size(path, c, shared, gs)
        offset = HEADER_BYTES
    else:
        if len(head) < 28:
            raise FormatError(EXIT_SIZE, f"{path}: truncated: {size} bytes, shorter than the 28-byte header")
        dim, hidden_dim, n_layers, n_heads, n_kv_heads, raw_vocab, seq_len = struct.unpack_from("<7i", head)
        c = Config(dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(raw_vocab), seq_len)
        try:
            _check_ranges(path, c, raw_vocab)
        except FormatError as e:
            raise FormatError(EXIT_MALFORMED, f"{e} (no v1/v2 magic, so read as a legacy v0 header)") from None
        version, shared, gs, offset = 0, raw_vocab > 0, None, 28
    want = expected_size(c, version, shared, gs)
    if size != want:
        how = "truncated" if size < want else "trailing bytes"
        raise FormatError(EXIT_SIZE, f"{path}: {how}: the v{version} header implies {want} bytes, the file has {size}")
    return CheckpointInfo(path, version, c, shared, gs, size, offset)


def _check_group_size(path: str, c: Config, shared: bool, gs: int) -> None:
    if not 1 <= gs <= 4096:
        raise FormatError(EXIT_MALFORMED, f"{path}: header: group_size {gs} is outside 1..4096")
    for n in set(_numel_of_quantized(c, shared)):
        if n % gs:
            raise FormatError(
                EXIT_MALFORMED, f"{path}: header: a tensor of {n} values is not a multiple of group_size {gs}"
            )


def _check_v3(path: str, head: bytes, size: int, with_meta: bool = True) -> CheckpointInfo:
    """The v3 header, the file's size and the metadata block (read and checked, not kept)."""
    if len(head) < HEADER_BYTES:
        raise FormatError(EXIT_SIZE, f"{path}: truncated: {size} bytes, shorter than the 256-byte header")
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = struct.unpack_from("<7i", head, 8)
    flag = head[36]
    gs, weight_type, rope_theta, norm_eps, meta_offset, meta_size = struct.unpack_from("<iIffQQ", head, 40)
    c = Config(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, float(rope_theta), float(norm_eps))
    _check_ranges(path, c, c.vocab_size)

    def bad(what: str) -> FormatError:
        return FormatError(EXIT_MALFORMED, f"{path}: header: {what}")

    if c.vocab_size < 1:
        raise bad(f"vocab_size {c.vocab_size} must be positive in v3")
    if flag not in (0, 1) or head[37:40] != b"\0\0\0":
        raise bad(f"shared_classifier is {flag} (bytes 36-39 {head[36:40].hex()}), expected 0 or 1 then zeros")
    shared = bool(flag)
    if weight_type == WEIGHT_FP32:
        if gs != 0:
            raise bad(f"group_size {gs} with fp32 weights (weight_type 0), expected 0")
    elif weight_type == WEIGHT_INT8:
        _check_group_size(path, c, shared, gs)
    elif weight_type == WEIGHT_Q4:
        if gs != Q4_GROUP_SIZE:
            raise bad(f"group_size {gs} with 4-bit weights (weight_type 2), expected {Q4_GROUP_SIZE}")
        for name, n in (("dim", c.dim), ("hidden_dim", c.hidden_dim)):
            if n % Q4_GROUP_SIZE:
                raise bad(f"{name} {n} is not a multiple of {Q4_GROUP_SIZE}, as 4-bit rows need (weight_type 2)")
    else:
        raise bad(f"weight_type {weight_type} is unknown (0 fp32, 1 int8, 2 q4)")
    if not (math.isfinite(rope_theta) and rope_theta > 0):
        raise bad(f"rope_theta {rope_theta} is not a positive number")
    if not (math.isfinite(norm_eps) and 0 < norm_eps < 1):
        raise bad(f"norm_eps {norm_eps} is outside (0, 1)")
    weights_end = expected_size(c, 3, shared, gs, weight_type)
    if meta_offset != weights_end:  # the contract's 67, as the engine's (the sizes disagree)
        raise FormatError(
            EXIT_SIZE,
            f"{path}: header: meta_offset {meta_offset}, but the weights of this header end at byte {weights_end}",
        )
    if meta_offset + meta_size != size:
        how = "truncated" if size < meta_offset + meta_size else "trailing bytes"
        raise FormatError(
            EXIT_SIZE, f"{path}: {how}: the v3 header implies {meta_offset + meta_size} bytes, the file has {size}"
        )
    info = CheckpointInfo(path, 3, c, shared, gs or None, size, HEADER_BYTES, weight_type, meta_offset, meta_size)
    if with_meta:
        read_meta(path, info)
    return info


@dataclass(frozen=True)
class CheckpointShape:
    """What a memory planner needs of a checkpoint (any version), from its header and size alone."""

    version: int
    layers: int
    dim: int
    hidden_dim: int
    heads: int
    kv_heads: int
    kv_dim: int  # dim * kv_heads / heads: K and V per layer and position
    vocab_size: int
    context_tokens: int  # seq_len: the longest context the model was trained for
    weight_bytes: int  # what storybot-llama2c maps or reads: the weights, without header and metadata
    file_bytes: int
    group_size: int | None  # int8 group size, None for fp32
    weight_type: int | None = None  # v3: WEIGHT_FP32, WEIGHT_INT8 or WEIGHT_Q4; None for v0-v2

    def kv_cache_bytes(self, context_tokens: int) -> int:
        """storybot-llama2c keeps K and V in fp32 for every layer and position of its --context."""
        return 2 * self.layers * context_tokens * self.kv_dim * 4


def checkpoint_shape(path: str | os.PathLike) -> CheckpointShape:
    """The shape of a v0-v3 checkpoint (header and size checked, weights and v3 metadata not read)."""
    info = check_checkpoint(path, with_meta=False)
    c = info.config
    return CheckpointShape(
        info.version, c.n_layers, c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, c.kv_dim, c.vocab_size, c.seq_len,
        info.weight_bytes, info.size_bytes, info.group_size, info.weight_type,
    )  # fmt: skip


def read_meta(path: str, info: CheckpointInfo) -> ModelMeta:
    """Parse and check a v3 file's metadata block: FormatError 68 when malformed, 69 when the vocab differs."""
    try:
        with open(path, "rb") as f:
            f.seek(info.meta_offset)
            blob = f.read(info.meta_size)
    except OSError as e:
        raise _os_error(path, e, "checkpoint") from None
    return unpack_meta(blob, info.config.vocab_size, path)


class _MetaCursor:
    def __init__(self, blob: bytes, path: str) -> None:
        self.blob, self.pos, self.path = blob, 0, path

    def take(self, fmt: str) -> tuple:
        n = struct.calcsize(fmt)
        if self.pos + n > len(self.blob):
            raise FormatError(
                EXIT_TOKENIZER, f"{self.path}: metadata block truncated at byte {self.pos} of {len(self.blob)}"
            )
        out = struct.unpack_from(fmt, self.blob, self.pos)
        self.pos += n
        return out

    def raw(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.blob):
            raise FormatError(EXIT_TOKENIZER, f"{self.path}: metadata block truncated in {what}")
        out = self.blob[self.pos : self.pos + n]
        self.pos += n
        return out


def unpack_meta(blob: bytes, vocab_size: int, path: str = "<meta>") -> ModelMeta:
    c = _MetaCursor(blob, path)

    def bad(what: str) -> FormatError:
        return FormatError(EXIT_TOKENIZER, f"{path}: metadata: {what}")

    magic, version, kind, pre, bos, eos, add_bos, n = c.take("<IIIIiiB3xI")
    if magic != META_MAGIC:
        raise bad(f"magic {magic:#x}, expected {META_MAGIC:#x} (sbtk)")
    if version != META_VERSION:
        raise bad(f"version {version}, expected {META_VERSION}")
    if kind not in (TOKENIZER_SENTENCEPIECE, TOKENIZER_BYTE_BPE):
        raise bad(f"tokenizer_kind {kind} is unknown (1 sentencepiece, 2 byte-level BPE)")
    if pre not in (PRE_NONE, PRE_GPT2, PRE_SMOLLM):
        raise bad(f"pre_tokenizer {pre} is unknown (0 none, 1 gpt2, 2 smollm)")
    if add_bos not in (0, 1):
        raise bad(f"add_bos is {add_bos}, expected 0 or 1")
    if n > MAX_META_TOKENS:
        raise bad(f"{n} tokens, more than {MAX_META_TOKENS}")
    if n != vocab_size:
        raise FormatError(EXIT_VOCAB, f"{path}: the metadata has {n} tokens, the header's vocab_size is {vocab_size}")
    for name, tid in (("bos_id", bos), ("eos_id", eos)):
        if not -1 <= tid < n:
            raise bad(f"{name} {tid} is outside -1..{n - 1}")
    types, scores, pieces = [], np.empty(n, np.float32), []
    for i in range(n):
        t, score, nb = c.take("<BfH")
        if not 1 <= t <= 6:
            raise bad(f"token {i} has type {t}, outside 1..6")
        if nb > MAX_TOKEN_BYTES:
            raise bad(f"token {i} has {nb} bytes, more than {MAX_TOKEN_BYTES}")
        types.append(t)
        scores[i] = score
        pieces.append(c.raw(nb, f"token {i}"))
    (n_merges,) = c.take("<I")
    if n_merges > MAX_MERGES:
        raise bad(f"{n_merges} merges, more than {MAX_MERGES}")
    merges = np.frombuffer(c.raw(12 * n_merges, "the merges"), dtype="<i4").reshape(-1, 3).astype(np.int32)
    if merges.size and (merges.min() < 0 or merges.max() >= n):
        raise bad(f"a merge names a token outside 0..{n - 1}")
    (n_end,) = c.take("<I")
    if n_end > n:
        raise bad(f"{n_end} end ids, more than the {n} tokens")
    end_ids = list(c.take(f"<{n_end}i"))
    if any(not 0 <= e < n for e in end_ids):
        raise bad(f"an end id is outside 0..{n - 1}: {end_ids}")
    (n_template,) = c.take("<I")
    if n_template > MAX_TEMPLATE_BYTES:
        raise bad(f"a chat template of {n_template} bytes, more than {MAX_TEMPLATE_BYTES}")
    try:
        template = c.raw(n_template, "the chat template").decode("utf-8")
    except UnicodeDecodeError:
        raise bad("the chat template is not UTF-8") from None
    if c.pos != len(blob):
        raise bad(f"{len(blob) - c.pos} bytes follow the chat template")
    return ModelMeta(kind, pre, bos, eos, bool(add_bos), types, scores, pieces, merges, end_ids, template)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read (and check) a v0/v1/v2/v3 checkpoint; int8 weights carry their int8 tensors in `quant`, v3 its meta."""
    info = check_checkpoint(path)
    c, L, d = info.config, info.config.n_layers, info.config.dim
    data = np.memmap(info.path, dtype=np.uint8, mode="r")
    pos = info.payload_offset

    def take_f32(*shape: int) -> np.ndarray:
        nonlocal pos
        n = int(np.prod(shape))
        a = np.frombuffer(data, dtype="<f4", count=n, offset=pos).reshape(shape).astype(np.float32, copy=False)
        pos += 4 * n
        return a

    def take_q1(*shape: int) -> QTensor:
        nonlocal pos
        gs = info.group_size
        assert gs is not None, "only an int8 checkpoint has int8 tensors, and it has a group size"
        n = int(np.prod(shape))
        q = np.frombuffer(data, dtype=np.int8, count=n, offset=pos).reshape(shape).copy()
        pos += n
        s = np.frombuffer(data, dtype="<f4", count=n // gs, offset=pos).astype(np.float32)
        pos += 4 * (n // gs)
        return QTensor(q, s, gs)

    def take_q4(layers: int, *shape: int) -> Q4Tensor:
        """Per-layer 4-bit tensors (nibbles, d, m each), stacked into one Q4Tensor [L][rows][cols]."""
        nonlocal pos
        parts = []
        for _ in range(layers):
            size = q4_bytes(int(np.prod(shape)))
            parts.append(unpack_q4(np.asarray(data[pos : pos + size]), shape))
            pos += size
        return Q4Tensor(np.stack([p.q for p in parts]), np.concatenate([p.d for p in parts]),
                        np.concatenate([p.m for p in parts]))  # fmt: skip

    def take_q(layers: int, *shape: int) -> QTensor | Q4Tensor:
        """Per-layer tensors, each its values then its scales, stacked into one QTensor [L][rows][cols]."""
        if info.weight_type == WEIGHT_Q4:
            return take_q4(layers, *shape)
        parts = [take_q1(*shape) for _ in range(layers)]
        return QTensor(np.stack([p.q for p in parts]), np.concatenate([p.s for p in parts]), parts[0].group_size)

    mats = {n: (L, *c.matrix_shape(n)) for n in LAYER_MATRICES}
    f: dict[str, Any] = {}  # Weights fields by name: arrays, and wcls None when shared
    quant: dict[str, QTensor | Q4Tensor] | None = None
    if info.version == 0:
        f["token_embedding"] = take_f32(c.vocab_size, d)
        f["rms_att"] = take_f32(L, d)
        for n in ("wq", "wk", "wv", "wo"):
            f[n] = take_f32(*mats[n])
        f["rms_ffn"] = take_f32(L, d)
        for n in ("w1", "w2", "w3"):
            f[n] = take_f32(*mats[n])
        f["rms_final"] = take_f32(d)
        pos += 2 * 4 * c.seq_len * (c.head_size // 2)
        f["wcls"] = None if info.shared_classifier else take_f32(c.vocab_size, d)
    elif info.version == 1 or (info.version == 3 and info.weight_type == WEIGHT_FP32):
        f["rms_att"], f["rms_ffn"], f["rms_final"] = take_f32(L, d), take_f32(L, d), take_f32(d)
        f["token_embedding"] = take_f32(c.vocab_size, d)
        for n in LAYER_MATRICES:
            f[n] = take_f32(*mats[n])
        f["wcls"] = None if info.shared_classifier else take_f32(c.vocab_size, d)
    else:
        f["rms_att"], f["rms_ffn"], f["rms_final"] = take_f32(L, d), take_f32(L, d), take_f32(d)
        quant = {"token_embedding": take_q1(c.vocab_size, d)}
        for n in LAYER_MATRICES:
            quant[n] = take_q(*mats[n])
        if not info.shared_classifier:
            quant["wcls"] = take_q1(c.vocab_size, d)
        for n, t in quant.items():
            f[n] = t.dequantize()
        f.setdefault("wcls", None)
    meta = None
    if info.version == 3:
        assert pos == info.meta_offset, (pos, info.meta_offset)
        meta = read_meta(info.path, info)
    else:
        assert pos == info.size_bytes, (pos, info.size_bytes)
    return Checkpoint(info.version, Weights(config=c, quant=quant, **f), info.group_size, meta)


# ----------------------------------------------------------------------------------------------- forward pass


class Cache:
    """Keys and values of every layer for `capacity` positions."""

    def __init__(self, c: Config, capacity: int) -> None:
        self.k = np.zeros((c.n_layers, capacity, c.kv_dim))  # [L][pos][kv_dim]
        self.v = np.zeros((c.n_layers, capacity, c.kv_dim))
        self.capacity = capacity


class Transformer:
    """The contract's forward pass in float64 (int8 matmuls per the contract's group rules when quantized)."""

    def __init__(self, weights: Weights) -> None:
        self.w = weights
        self.c = weights.config
        self.gs = weights.group_size
        self._mat: dict[str, np.ndarray] = {}
        for n in (*LAYER_MATRICES, "wcls"):
            a = weights.token_embedding if n == "wcls" and weights.wcls is None else getattr(weights, n)
            self._mat[n] = np.asarray(a, dtype=np.float64)
        self._emb = np.asarray(weights.token_embedding, dtype=np.float64)

    def _matmul(self, name: str, layer: int | None, x: np.ndarray) -> np.ndarray:
        """x [T][n] -> [T][rows]."""
        w = self._mat[name] if layer is None else self._mat[name][layer]
        n = w.shape[1]
        if self.gs is not None and n % self.gs == 0:
            x = quantize_activations(x, self.gs)  # groups never cross a row: x quantized like the weights
        return x @ w.T

    def _rmsnorm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        ss = np.mean(x * x, axis=-1, keepdims=True) + float(np.float32(self.c.norm_eps))
        return x / np.sqrt(ss) * weight.astype(np.float64)

    def _rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x [T][n_heads*head_size]: rotate pairs (2i, 2i+1) of every head by pos / theta^(2i/head_size)."""
        hs = self.c.head_size
        t = x.reshape(x.shape[0], -1, hs // 2, 2)
        freq = 1.0 / float(np.float32(self.c.rope_theta)) ** (np.arange(0, hs, 2, dtype=np.float64) / hs)
        ang = positions[:, None].astype(np.float64) * freq[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = t[..., 0], t[..., 1]
        out = np.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
        return out.reshape(x.shape)

    def step(self, tokens: list[int], start: int, cache: Cache) -> np.ndarray:
        """Forward tokens at positions start.. (causal, using and filling cache); logits [T][vocab] float64."""
        c, w = self.c, self.w
        T = len(tokens)
        if start + T > cache.capacity:
            raise ValueError(f"positions {start}..{start + T - 1} do not fit a cache of {cache.capacity}")
        pos = np.arange(start, start + T)
        x = self._emb[np.asarray(tokens)]
        hs, H, KVH = c.head_size, c.n_heads, c.n_kv_heads
        kv_of_head = np.arange(H) // (H // KVH)
        mask = np.arange(start + T)[None, :] > pos[:, None]  # [T][P] True = future
        for layer in range(c.n_layers):
            xb = self._rmsnorm(x, w.rms_att[layer])
            q = self._rope(self._matmul("wq", layer, xb), pos)
            k = self._rope(self._matmul("wk", layer, xb), pos)
            v = self._matmul("wv", layer, xb)
            cache.k[layer, start : start + T] = k
            cache.v[layer, start : start + T] = v
            keys = cache.k[layer, : start + T].reshape(start + T, KVH, hs)[:, kv_of_head]  # [P][H][hs]
            vals = cache.v[layer, : start + T].reshape(start + T, KVH, hs)[:, kv_of_head]
            qh = q.reshape(T, H, hs)
            scores = np.einsum("thd,phd->htp", qh, keys) / math.sqrt(hs)
            scores = np.where(mask[None], -np.inf, scores)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            att = np.einsum("htp,phd->thd", scores, vals).reshape(T, c.dim)
            x = x + self._matmul("wo", layer, att)
            xb = self._rmsnorm(x, w.rms_ffn[layer])
            h1, h3 = self._matmul("w1", layer, xb), self._matmul("w3", layer, xb)
            h = h1 / (1.0 + np.exp(-h1)) * h3
            x = x + self._matmul("w2", layer, h)
        x = self._rmsnorm(x, w.rms_final)
        return self._matmul("wcls", None, x)

    def forward(self, tokens: list[int]) -> np.ndarray:
        """Fresh forward pass from position 0: logits [T][vocab] for every position."""
        cache = Cache(self.c, max(len(tokens), 1))
        return self.step(list(tokens), 0, cache)


# ----------------------------------------------------------------------------------------------- sampling


class Sampler:
    """llama2.c's sampler: argmax at temperature 0, else softmax and multinomial or top-p with xorshift64*."""

    def __init__(self, vocab_size: int, temperature: float, topp: float, seed: int) -> None:
        self.vocab_size = vocab_size
        self.temperature = np.float32(temperature)
        self.topp = np.float32(topp)
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def random_u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) >> 32

    def random_f32(self) -> np.float32:
        return np.float32((self.random_u32() >> 8) / 16777216.0)

    def sample(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return argmax(logits)
        x = np.asarray(logits, dtype=np.float32) / self.temperature
        x = np.exp(x - x.max()).astype(np.float32)
        x = (x / np.cumsum(x, dtype=np.float32)[-1]).astype(np.float32)  # C sums in order
        coin = self.random_f32()
        if self.topp <= 0 or self.topp >= 1:
            cdf = np.cumsum(x, dtype=np.float32)
            hit = np.nonzero(coin < cdf)[0]
            return int(hit[0]) if hit.size else self.vocab_size - 1
        cutoff = np.float32((np.float32(1.0) - self.topp) / np.float32(self.vocab_size - 1))
        idx = np.nonzero(x >= cutoff)[0]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        probs = x[idx]
        cum = np.cumsum(probs, dtype=np.float32)
        over = np.nonzero(cum > self.topp)[0]
        last = int(over[0]) if over.size else len(idx) - 1
        r = np.float32(coin * cum[last])
        hit = np.nonzero(r < cum[: last + 1])[0]
        return int(idx[hit[0]]) if hit.size else int(idx[last])


def argmax(logits: np.ndarray) -> int:
    """Lowest index on ties, as llama2.c's sample_argmax."""
    return int(np.argmax(logits))


# ----------------------------------------------------------------------------------------------- generation


@dataclass
class Generation:
    ids: list[int]  # the sequence as --dump-ids writes it: prompt then generated (a stop token not included)
    logits: list[np.ndarray] = field(default_factory=list)  # one row per forward step of the sequence
    stop_token: int | None = None  # EOS/BOS that ended generation, if any
    shifts: int = 0  # how many times the window shifted
    windows: list[list[int]] = field(default_factory=list)  # the token list behind each logits row


def kept_after_shift(window: list[int], context: int, keep: int) -> list[int]:
    """The contract's shift: the first `keep` tokens and the newest (context - keep) // 2 after them."""
    newest = (context - keep) // 2
    return window[:keep] + (window[len(window) - newest :] if newest > 0 else [])


def generate(
    model: Transformer,
    prompt: list[int],
    steps: int,
    *,
    context: int | None = None,
    keep: int | None = None,
    sampler: Sampler | None = None,
    record_windows: bool = False,
    stop_ids: tuple[int, ...] | list[int] = (BOS, EOS),
) -> Generation:
    """run.c's loop: forward the current token, force the prompt, else sample; stop after the prompt at EOS or BOS.

    The window: when the cache holds `context` tokens and another must be forwarded, keep the first `keep` and
    the newest (context - keep) // 2 cached tokens, recompute their cache from position 0, then go on.
    """
    c = model.c
    if not prompt:
        raise ValueError("empty prompt")
    steps = steps or c.seq_len
    ctx = context or min(steps, c.seq_len)
    if keep is None:
        keep = min(len(prompt), ctx // 2)
    sampler = sampler or Sampler(c.vocab_size, 0.0, 0.9, 0)
    cache = Cache(c, ctx)
    window: list[int] = []
    out = Generation(ids=[prompt[0]])
    token = prompt[0]
    pos = 0
    while pos < steps:
        if len(window) == ctx:
            window = kept_after_shift(window, ctx, keep)
            model.step(window, 0, cache)
            out.shifts += 1
        logits = model.step([token], len(window), cache)[0]
        window.append(token)
        out.logits.append(logits)
        if record_windows:
            out.windows.append(list(window))
        if pos < len(prompt) - 1:
            nxt = prompt[pos + 1]
        else:
            nxt = sampler.sample(logits)
        pos += 1
        if pos >= len(prompt) and nxt in stop_ids:
            out.stop_token = nxt
            break
        out.ids.append(nxt)
        token = nxt
    return out


# ----------------------------------------------------------------------------------------------- tokenizer


_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{1,2})")


@dataclass
class Tokenizer:
    pieces: list[bytes]
    scores: np.ndarray  # float32 [vocab]
    max_token_length: int = 0
    _lookup: dict[bytes, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if not self.max_token_length:
            self.max_token_length = max(len(p) for p in self.pieces)
        for i, p in enumerate(self.pieces):
            self._lookup.setdefault(p, i)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def lookup(self, piece: bytes) -> int:
        return self._lookup.get(piece, -1)

    def encode(self, text: str | bytes, bos: bool = True, eos: bool = False) -> list[int]:
        """llama2.c's encode: BOS, a dummy-prefix " ", codepoints looked up (else bytes + 3), then merges."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        ids: list[int] = [BOS] if bos else []
        if data:
            space = self.lookup(b" ")
            if space < 0:
                raise ValueError('the vocabulary has no " " piece for the dummy prefix')
            ids.append(space)
        buf = b""
        for i, ch in enumerate(data):
            if ch & 0xC0 != 0x80:
                buf = b""
            buf += bytes([ch])
            nxt = data[i + 1] if i + 1 < len(data) else 0
            if nxt & 0xC0 == 0x80 and len(buf) < 4:
                continue
            tid = self.lookup(buf)
            if tid >= 0:
                ids.append(tid)
            else:
                ids.extend(b + BYTE_TOKEN_OFFSET for b in buf)
            buf = b""
        while True:
            best_score, best_id, best_idx = np.float32(-1e10), -1, -1
            for i in range(len(ids) - 1):
                tid = self.lookup(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if tid >= 0 and self.scores[tid] > best_score:
                    best_score, best_id, best_idx = self.scores[tid], tid, i
            if best_idx < 0:
                break
            ids[best_idx : best_idx + 2] = [best_id]
        if eos:
            ids.append(EOS)
        return ids

    def decode(self, prev: int, token: int) -> bytes:
        """The piece run.c prints for token after prev: leading space dropped after BOS, <0xXX> as the raw byte."""
        piece = self.pieces[token]
        if prev == BOS and piece.startswith(b" "):
            piece = piece[1:]
        m = _BYTE_PIECE.match(piece)
        if m:
            b = int(m.group(1), 16)
            piece = bytes([b]) if b else b""
        return piece

    @staticmethod
    def printable(piece: bytes) -> bytes:
        """run.c's safe_printf: a lone byte that is neither printable nor space is dropped."""
        if len(piece) == 1 and not (0x20 <= piece[0] <= 0x7E or 0x09 <= piece[0] <= 0x0D):
            return b""
        return piece

    def render(self, ids: list[int]) -> bytes:
        """What run prints on stdout for a sequence: every token after the first, then a newline."""
        return b"".join(self.printable(self.decode(a, b)) for a, b in zip(ids, ids[1:], strict=False)) + b"\n"

    def text(self, ids: list[int]) -> str:
        """The sequence's text without run's byte filter (for whole-character streams)."""
        return b"".join(self.decode(a, b) for a, b in zip(ids, ids[1:], strict=False)).decode("utf-8", "replace")


def write_tokenizer(path: str | os.PathLike, tok: Tokenizer | list[bytes], scores=None) -> Path:
    if not isinstance(tok, Tokenizer):
        tok = Tokenizer(list(tok), np.zeros(len(tok), np.float32) if scores is None else scores)
    path = Path(path)
    parts = [struct.pack("<i", tok.max_token_length)]
    for piece, score in zip(tok.pieces, tok.scores, strict=True):
        parts.append(struct.pack("<fi", float(score), len(piece)) + piece)
    path.write_bytes(b"".join(parts))
    return path


def check_tokenizer(path: str | os.PathLike, vocab_size: int) -> Tokenizer:
    """Read tokenizer.bin for a model of vocab_size tokens; FormatError 66/68/69 as the contract."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise _os_error(path, e, "tokenizer") from None
    if len(data) < 4:
        raise FormatError(EXIT_TOKENIZER, f"{path}: truncated: {len(data)} bytes, no max_token_length")
    (max_len,) = struct.unpack_from("<i", data)
    if not 1 <= max_len <= 65536:
        raise FormatError(EXIT_TOKENIZER, f"{path}: max_token_length {max_len} is outside 1..65536")
    pos, pieces, scores = 4, [], []
    for i in range(vocab_size):
        if pos == len(data):
            raise FormatError(
                EXIT_VOCAB, f"{path}: the tokenizer has {i} tokens, the checkpoint's vocab_size is {vocab_size}"
            )
        if pos + 8 > len(data):
            raise FormatError(EXIT_TOKENIZER, f"{path}: truncated in token {i}")
        score, n = struct.unpack_from("<fi", data, pos)
        if n < 0 or n > max_len:
            raise FormatError(
                EXIT_TOKENIZER, f"{path}: token {i} has length {n}, outside 0..max_token_length ({max_len})"
            )
        if pos + 8 + n > len(data):
            raise FormatError(EXIT_TOKENIZER, f"{path}: truncated in token {i}")
        pieces.append(data[pos + 8 : pos + 8 + n])
        scores.append(score)
        pos += 8 + n
    if pos != len(data):
        raise FormatError(
            EXIT_VOCAB,
            f"{path}: {len(data) - pos} bytes follow token {vocab_size - 1}: the tokenizer has more tokens than the "
            f"checkpoint's vocab_size {vocab_size}",
        )
    return Tokenizer(pieces, np.asarray(scores, np.float32), max_len)


def read_tokenizer(path: str | os.PathLike, vocab_size: int) -> Tokenizer:
    return check_tokenizer(path, vocab_size)


def _specials_and_bytes() -> list[bytes]:
    return [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)]


# merges first (highest scores), in the order a BPE trainer would have learned them
_MERGES = (
    " t", "he", " a", "in", " the", "er", "an", "ou", "nd", " s", " w", "ed", " h", "on", "it", " b", "at", " and",
    " c", " l", "re", "en", " f", "ing", "is", " T", " d", " m", "ar", " p", " o", " He", "le", "as", "ll", "om",
    "ay", " to", " S", " was", " The", " L", "ly", " her", "ime", " day", " Lily", " happy", " upon", " time",
    " Once", "ent", " play", " re", "id", " his", " friend", " big", " dog", " cat", " saw", " said", " she",
    " he", " it", " in", " of", " a", "ve", "ir", "ow", "ut", "ig", "al", "ch", " n", " g", " u", " y", " I", " B",
    " One", " tree", " bird", " sun", " story", " little", " dragon", " Bo", " loved", " tea", " there",
    "이", "야", "기", "야기", "이야기", " 이야기", "용", " 용", "는", "가", "요", "다",
    "\u00e9", "caf", "caf\u00e9",
)  # fmt: skip
_CHARS = tuple(chr(c) for c in range(0x20, 0x7F))


def small_vocab(vocab_size: int = 512, seed: int = 0) -> Tokenizer:
    """A real-looking vocabulary: specials 0-2, bytes 3..258, printable ASCII, merges with scores, then filler.

    Korean pieces (이, 야기, 이야기 ...) and "café" are in it, emoji are not (they need the byte fallback).
    """
    pieces = _specials_and_bytes()
    scores = [0.0] * len(pieces)
    room = vocab_size - len(pieces)
    if room < len(_CHARS):
        raise ValueError(f"a small vocab needs at least {len(pieces) + len(_CHARS)} tokens")
    merges = [m for m in dict.fromkeys(_MERGES) if m not in _CHARS]
    rng = np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    seen = set(pieces) | {p.encode() for p in merges} | {c.encode() for c in _CHARS}
    while len(merges) < room - len(_CHARS):  # filler merges: made-up pieces no text in the tests needs
        n = int(rng.integers(3, 7))
        p = ("\u2581" if rng.random() < 0.5 else "") + "".join(rng.choice(list(letters), n))
        p = p.replace("\u2581", " ")
        if p.encode() not in seen:
            seen.add(p.encode())
            merges.append(p)
    merges = merges[: room - len(_CHARS)]
    for rank, m in enumerate(merges):
        pieces.append(m.encode())
        scores.append(-float(rank))
    for i, ch in enumerate(_CHARS):
        pieces.append(ch.encode())
        scores.append(-1e6 - i)
    return Tokenizer(pieces, np.asarray(scores, np.float32))


def random_tokenizer(vocab_size: int, seed: int = 0) -> Tokenizer:
    """Any size >= 355: small_vocab's pieces first, then distinct made-up pieces with random scores."""
    return small_vocab(vocab_size, seed)


# ----------------------------------------------------------------------------------------------- command line


def _ids(text: str) -> list[int]:
    return [int(t) for t in text.replace(",", " ").split()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.llama2c_ref", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write a random-weight checkpoint (and tokenizer) of a named shape")
    w.add_argument("out")
    w.add_argument("--shape", default="stories260K", help=f"one of {', '.join(SHAPES)}")
    w.add_argument("--version", type=int, choices=(0, 1, 2), default=0)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--group-size", type=int, help="v2 group size (default: export's rule)")
    w.add_argument("--unshared", action="store_true", help="write a separate classifier (v0: negative vocab_size)")
    w.add_argument("--tokenizer", help="also write a tokenizer.bin of the shape's vocab size here")
    for name in ("logits", "generate"):
        g = sub.add_parser(name, help="reference " + ("logits (float32 rows)" if name == "logits" else "greedy ids"))
        g.add_argument("checkpoint")
        g.add_argument("--prompt-ids", required=True, help="A,B,C (no BOS added)")
        g.add_argument("-n", "--steps", type=int, default=0, help="positions incl. the prompt (0 = seq_len)")
        g.add_argument("--context", type=int)
        g.add_argument("--keep", type=int)
        g.add_argument("--out", help="logits: the float32 file to write (as --dump-logits)")
    args = p.parse_args(argv)
    if args.command == "write":
        weights = random_weights(args.shape, args.seed, shared_classifier=not args.unshared)
        write_checkpoint(args.out, weights, args.version, args.group_size)
        if args.tokenizer:
            write_tokenizer(args.tokenizer, random_tokenizer(weights.config.vocab_size, args.seed))
        print(f"{args.out}: {args.shape} v{args.version}, {os.path.getsize(args.out)} bytes")
        return 0
    try:
        ckpt = read_checkpoint(args.checkpoint)
    except FormatError as e:
        print(e, file=sys.stderr)
        return e.status
    model = Transformer(ckpt.weights)
    prompt = _ids(args.prompt_ids)
    steps = args.steps or (len(prompt) if args.command == "logits" else ckpt.config.seq_len)
    stops = ckpt.meta.end_ids if ckpt.meta is not None else (BOS, EOS)
    gen = generate(model, prompt, steps, context=args.context, keep=args.keep, stop_ids=stops)
    if args.command == "logits":
        rows = np.asarray(gen.logits, dtype="<f4")
        if args.out:
            rows.tofile(args.out)
        else:
            np.savetxt(sys.stdout, rows, fmt="%.6g")
    else:
        print(" ".join(map(str, gen.ids)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
