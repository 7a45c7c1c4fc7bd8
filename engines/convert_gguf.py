"""Convert a llama-architecture GGUF model into a storybot-llama2c checkpoint, format v3 (docs/llama2c-engine.md).

Every tensor type the `gguf` library can dequantize is read (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants, ...);
the weights are written as int8 in groups of 32 with fp16-exact scales (so the same weights can be written back as
a Q8_0 GGUF, see write_gguf), as fp32, or as 4-bit groups (`--weights q4`: the layer matrices 4-bit, the
embedding int8; Q4_0 and Q4_1 tensors are copied block for block, so they lose nothing more). The tokenizer (byte-level BPE with merges, or sentencepiece-style
scores), special tokens, end ids, rope theta, norm epsilon and chat template go into the v3 metadata, so the file
needs no tokenizer.bin beside it.

GGUF's llama q/k weights are already in the interleaved-pair RoPE layout llama2.c uses (llama.cpp's converter
permutes Hugging Face's half-split layout for the llama architecture), so they are copied as they are;
tests/test_convert_gguf.py checks it with a forward pass against llama.cpp's logits.

    python -m engines.convert_gguf MODEL.gguf OUT.bin [--weights int8|q4|fp32]
    python -m engines.convert_gguf --write-gguf OUT.bin SOURCE.gguf Q8.gguf    the converted int8 weights as Q8_0
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines import llama2c_ref as ref

log = logging.getLogger(__name__)

# exit statuses: one per class of bad input (65-69 as the engine's, 72/73 the converter's own)
EXIT_MALFORMED = 65  # not a GGUF, metadata missing or inconsistent, a tensor of the wrong shape
EXIT_MISSING = 66  # the file cannot be opened
EXIT_TRUNCATED = 67  # shorter than its own header and tensor table say
EXIT_TOKENIZER = 68  # the tokenizer is incomplete: no tokens, no merges, a merge of unknown tokens
EXIT_VOCAB = 69  # the vocabulary's size differs from the embedding's rows
EXIT_ARCHITECTURE = 72  # not the llama architecture, or a llama feature storybot-llama2c does not run
EXIT_TENSOR_TYPE = 73  # a tensor type the gguf library cannot dequantize
EXIT_IOERR = 74  # the output cannot be written

# tokens that end a turn in the chat templates of common instruct models (llama.cpp treats these as end-of-generation
# too); only control and user-defined tokens with exactly this text count
END_OF_TURN_TEXTS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
)
PRE_TOKENIZERS = {"gpt2": ref.PRE_GPT2, "smollm": ref.PRE_SMOLLM}
WEIGHT_KINDS = ("int8", "q4", "fp32")  # --weights

# GGUF tensor names of the llama architecture -> the checkpoint's fields
LAYER_TENSORS = {
    "attn_norm": "rms_att",
    "ffn_norm": "rms_ffn",
    "attn_q": "wq",
    "attn_k": "wk",
    "attn_v": "wv",
    "attn_output": "wo",
    "ffn_gate": "w1",
    "ffn_down": "w2",
    "ffn_up": "w3",
}
GLOBAL_TENSORS = {"token_embd": "token_embedding", "output_norm": "rms_final", "output": "wcls"}


class ConvertError(RuntimeError):
    """A GGUF file that cannot be converted: one line naming the file and what is wrong, and an exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------- the GGUF side


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100.."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


UNICODE_TO_BYTE = {ch: b for b, ch in bytes_to_unicode().items()}


def token_bytes_of(text: str) -> bytes:
    """The raw bytes a byte-level BPE token stands for. A character outside the alphabet (which a byte-level
    vocabulary should not have) keeps its UTF-8 bytes."""
    out = bytearray()
    for ch in text:
        b = UNICODE_TO_BYTE.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


@dataclass
class GgufModel:
    path: str
    reader: Any  # gguf.GGUFReader (gguf's reader objects are not typed)
    fields: dict[str, Any]  # name -> gguf ReaderField
    tensors: dict[str, Any]  # name -> gguf ReaderTensor

    def value(self, key: str, default=None):
        f = self.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except (ValueError, IndexError, TypeError) as e:
            raise ConvertError(EXIT_MALFORMED, f"{self.path}: metadata {key} cannot be read: {e}") from None

    def require(self, key: str):
        v = self.value(key)
        if v is None:
            raise ConvertError(EXIT_MALFORMED, f"{self.path}: metadata {key} is missing")
        return v


def open_gguf(path: str | os.PathLike) -> GgufModel:
    """Check the file's structure (engines/gguf.py: truncation, tensor table) then open it with gguf's reader."""
    from engines.gguf import GgufError, check_gguf

    path = str(path)
    try:
        check_gguf(path)
    except GgufError as e:
        status = EXIT_TRUNCATED if ": truncated" in str(e) or "too small" in str(e) else EXIT_MALFORMED
        raise ConvertError(status, str(e)) from None
    except OSError as e:
        raise ConvertError(EXIT_MISSING, f"{path}: cannot read: {e.strerror or e}") from None
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise ConvertError(EXIT_MALFORMED, f"{path}: the gguf library cannot read it: {e}") from None
    return GgufModel(path, reader, dict(reader.fields), {t.name: t for t in reader.tensors})


@dataclass
class Plan:
    """What the GGUF holds, checked, before any weight is read."""

    config: ref.Config
    shared: bool
    meta: ref.ModelMeta


def plan(g: GgufModel) -> Plan:
    arch = g.value("general.architecture")
    if arch != "llama":
        raise ConvertError(
            EXIT_ARCHITECTURE, f"{g.path}: architecture {arch!r} is not supported (storybot-llama2c runs 'llama')"
        )
    config = _config(g)
    shared = "output.weight" not in g.tensors
    _check_tensors(g, config, shared)
    meta = _tokenizer_meta(g, config.vocab_size)
    return Plan(config, shared, meta)


def _config(g: GgufModel) -> ref.Config:
    def num(key: str, default=None) -> int:
        v = g.value(f"llama.{key}", default)
        if v is None:
            raise ConvertError(EXIT_MALFORMED, f"{g.path}: metadata llama.{key} is missing")
        return int(v)

    emb = g.tensors.get("token_embd.weight")
    if emb is None:
        raise ConvertError(EXIT_MALFORMED, f"{g.path}: tensor token_embd.weight is missing")
    dim, heads = num("embedding_length"), num("attention.head_count")
    kv_heads = num("attention.head_count_kv", heads)
    vocab = int(emb.shape[1]) if len(emb.shape) == 2 else 0
    if vocab <= 0:
        raise ConvertError(EXIT_MALFORMED, f"{g.path}: token_embd.weight has shape {list(emb.shape)}, expected 2-D")
    declared = g.value("llama.vocab_size")
    if declared is not None and int(declared) != vocab:
        raise ConvertError(EXIT_VOCAB, f"{g.path}: llama.vocab_size is {declared}, token_embd.weight has {vocab} rows")
    theta = float(g.value("llama.rope.freq_base", 10000.0))
    eps = float(g.value("llama.attention.layer_norm_rms_epsilon", 1e-5))
    c = ref.Config(
        dim, num("feed_forward_length"), num("block_count"), heads, kv_heads, vocab, num("context_length"),
        rope_theta=theta, norm_eps=eps,
    )  # fmt: skip
    try:
        ref._check_ranges(g.path, c, vocab)
    except ref.FormatError as e:
        raise ConvertError(EXIT_MALFORMED, f"{e} (from the GGUF metadata)") from None
    head = c.head_size
    for key, want in (("attention.key_length", head), ("attention.value_length", head), ("rope.dimension_count", head)):
        have = g.value(f"llama.{key}")
        if have is not None and int(have) != want:
            raise ConvertError(
                EXIT_ARCHITECTURE, f"{g.path}: llama.{key} is {have}, storybot-llama2c needs dim/heads = {want}"
            )
    scaling = g.value("llama.rope.scaling.type")
    if scaling not in (None, "none") or g.value("llama.rope.scaling.factor", 1.0) not in (0.0, 1.0):
        raise ConvertError(EXIT_ARCHITECTURE, f"{g.path}: rope scaling {scaling!r} is not supported")
    if g.value("llama.expert_count", 0):
        raise ConvertError(EXIT_ARCHITECTURE, f"{g.path}: a mixture of experts is not supported")
    if not (math.isfinite(theta) and theta > 0 and math.isfinite(eps) and 0 < eps < 1):
        raise ConvertError(EXIT_MALFORMED, f"{g.path}: rope theta {theta} or norm epsilon {eps} is out of range")
    return c


def _expected_shapes(c: ref.Config, shared: bool) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> (rows, cols) as the dequantized array has it."""
    want = {"token_embd.weight": (c.vocab_size, c.dim), "output_norm.weight": (c.dim,)}
    if not shared:
        want["output.weight"] = (c.vocab_size, c.dim)
    for i in range(c.n_layers):
        for gname, field in LAYER_TENSORS.items():
            want[f"blk.{i}.{gname}.weight"] = (c.dim,) if field.startswith("rms_") else c.matrix_shape(field)
    return want


def _check_tensors(g: GgufModel, c: ref.Config, shared: bool) -> None:
    want = _expected_shapes(c, shared)
    probed: set = set()
    extra = sorted(set(g.tensors) - set(want))
    if extra:
        raise ConvertError(
            EXIT_ARCHITECTURE,
            f"{g.path}: tensor {extra[0]} is not part of the llama layout storybot-llama2c runs"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""),
        )
    for name, shape in want.items():
        t = g.tensors.get(name)
        if t is None:
            raise ConvertError(EXIT_MALFORMED, f"{g.path}: tensor {name} is missing")
        have = tuple(int(n) for n in reversed(t.shape))  # GGUF lists ne0 (the row length) first
        if have != shape:
            raise ConvertError(
                EXIT_MALFORMED, f"{g.path}: tensor {name} has shape {list(have)}, the metadata implies {list(shape)}"
            )
        if t.tensor_type not in probed:  # one row of each type, so an unreadable type fails before writing
            probed.add(t.tensor_type)
            _dequantize_rows(g, name, t.data[:1])


def _tokenizer_meta(g: GgufModel, vocab: int) -> ref.ModelMeta:
    model = g.value("tokenizer.ggml.model")
    tokens = g.value("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise ConvertError(EXIT_TOKENIZER, f"{g.path}: no tokenizer (tokenizer.ggml.model / tokens is missing)")
    if len(tokens) != vocab:
        raise ConvertError(
            EXIT_VOCAB, f"{g.path}: the vocabulary has {len(tokens)} tokens, token_embd.weight has {vocab} rows"
        )
    types = [int(t) for t in g.value("tokenizer.ggml.token_type", [ref.TOKEN_NORMAL] * vocab)]
    scores = np.asarray(g.value("tokenizer.ggml.scores", [0.0] * vocab), dtype=np.float32)
    if len(types) != vocab or len(scores) != vocab:
        raise ConvertError(
            EXIT_TOKENIZER, f"{g.path}: {vocab} tokens but {len(types)} token types and {len(scores)} scores"
        )
    if any(not 1 <= t <= 6 for t in types):
        raise ConvertError(EXIT_TOKENIZER, f"{g.path}: a token type is outside 1..6")
    special = (ref.TOKEN_CONTROL, ref.TOKEN_USER_DEFINED)
    if model == "gpt2":
        kind = ref.TOKENIZER_BYTE_BPE
        pre_name = g.value("tokenizer.ggml.pre", "gpt2")
        if pre_name not in PRE_TOKENIZERS:
            raise ConvertError(
                EXIT_ARCHITECTURE,
                f"{g.path}: pre-tokenizer {pre_name!r} is not supported (storybot-llama2c knows "
                f"{', '.join(PRE_TOKENIZERS)})",
            )
        pre = PRE_TOKENIZERS[pre_name]
        pieces = [
            t.encode("utf-8") if ty in special else token_bytes_of(t) for t, ty in zip(tokens, types, strict=True)
        ]
        merges = _merges(g, tokens)
    elif model == "llama":
        kind, pre, merges = ref.TOKENIZER_SENTENCEPIECE, ref.PRE_NONE, np.zeros((0, 3), np.int32)
        pieces = [t.replace("\u2581", " ").encode("utf-8") for t in tokens]
    else:
        raise ConvertError(EXIT_ARCHITECTURE, f"{g.path}: tokenizer model {model!r} is not supported (gpt2, llama)")
    too_long = next((i for i, p in enumerate(pieces) if len(p) > ref.MAX_TOKEN_BYTES), None)
    if too_long is not None:
        raise ConvertError(EXIT_TOKENIZER, f"{g.path}: token {too_long} is longer than {ref.MAX_TOKEN_BYTES} bytes")
    bos = _token_id(g, "tokenizer.ggml.bos_token_id", vocab)
    eos = _token_id(g, "tokenizer.ggml.eos_token_id", vocab)
    add_bos = bool(g.value("tokenizer.ggml.add_bos_token", kind == ref.TOKENIZER_SENTENCEPIECE))
    end_ids = [eos] if eos >= 0 else []
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        tid = _token_id(g, key, vocab)
        if tid >= 0:
            end_ids.append(tid)
    for i, (text, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty in special and text in END_OF_TURN_TEXTS:
            end_ids.append(i)
    template = g.value("tokenizer.chat_template", "") or ""
    if len(template.encode("utf-8")) > ref.MAX_TEMPLATE_BYTES:
        raise ConvertError(EXIT_TOKENIZER, f"{g.path}: the chat template is longer than {ref.MAX_TEMPLATE_BYTES} bytes")
    return ref.ModelMeta(
        kind, pre, bos, eos, add_bos, types, scores, pieces, merges, list(dict.fromkeys(end_ids)), template
    )


def _token_id(g: GgufModel, key: str, vocab: int) -> int:
    v = g.value(key)
    if v is None:
        return -1
    if not 0 <= int(v) < vocab:
        raise ConvertError(EXIT_TOKENIZER, f"{g.path}: {key} is {v}, outside the vocabulary 0..{vocab - 1}")
    return int(v)


def _merges(g: GgufModel, tokens: list[str]) -> np.ndarray:
    """tokenizer.ggml.merges ("left right" in the byte-level alphabet) as (left, right, result) ids by rank."""
    merges = g.value("tokenizer.ggml.merges")
    if not merges:
        raise ConvertError(EXIT_TOKENIZER, f"{g.path}: the byte-level BPE tokenizer has no tokenizer.ggml.merges")
    if len(merges) > ref.MAX_MERGES:
        raise ConvertError(EXIT_TOKENIZER, f"{g.path}: {len(merges)} merges, more than {ref.MAX_MERGES}")
    ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        ids.setdefault(t, i)
    out = np.empty((len(merges), 3), dtype=np.int32)
    for rank, m in enumerate(merges):
        cut = m.find(" ", 1)  # the left part may itself start with a space character
        left, right = (m[:cut], m[cut + 1 :]) if cut > 0 else (m, "")
        left_id, right_id, result_id = ids.get(left), ids.get(right), ids.get(left + right)
        if cut <= 0 or left_id is None or right_id is None or result_id is None:
            raise ConvertError(
                EXIT_TOKENIZER, f"{g.path}: merge {rank} ({m!r}) names a token that is not in the vocabulary"
            )
        out[rank] = (left_id, right_id, result_id)
    return out


def _dequantize_rows(g: GgufModel, name: str, data: np.ndarray) -> np.ndarray:
    from gguf.quants import dequantize

    ttype = g.tensors[name].tensor_type
    try:
        return np.asarray(dequantize(data, ttype), dtype=np.float32)
    except NotImplementedError:
        raise ConvertError(
            EXIT_TENSOR_TYPE, f"{g.path}: tensor {name} has type {ttype.name}, which the gguf library cannot dequantize"
        ) from None


def _dequantize(g: GgufModel, name: str) -> np.ndarray:
    t = g.tensors[name]
    shape = tuple(int(n) for n in reversed(t.shape))
    a = _dequantize_rows(g, name, t.data).reshape(shape)
    if not np.all(np.isfinite(a)):
        raise ConvertError(EXIT_MALFORMED, f"{g.path}: tensor {name} holds NaN or infinite values")
    return a


def _q4_blocks(g: GgufModel, name: str) -> ref.Q4Tensor | None:
    """A Q4_0 or Q4_1 tensor's own blocks as 4-bit groups (same nibble order; Q4_0's (q - 8) d is q d + m with
    m = -8 d, exact in fp16 unless it overflows); None for other types (they are quantized from their values)."""
    from gguf import GGMLQuantizationType as T

    t = g.tensors[name]
    if t.tensor_type not in (T.Q4_0, T.Q4_1):
        return None
    rows, cols = (int(n) for n in reversed(t.shape))
    width = 18 if t.tensor_type == T.Q4_0 else 20
    blocks = np.ascontiguousarray(t.data, dtype=np.uint8).reshape(rows * cols // 32, width)
    d = blocks[:, 0:2].copy().view("<f2").reshape(-1)
    if t.tensor_type == T.Q4_0:
        with np.errstate(over="ignore"):
            m = (d * np.float16(-8)).astype(np.float16)
        qs = blocks[:, 2:]
    else:
        m = blocks[:, 2:4].copy().view("<f2").reshape(-1)
        qs = blocks[:, 4:]
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(m))):
        return None  # an fp16 overflow (or a NaN, which _dequantize then names)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).reshape(rows, cols)
    return ref.Q4Tensor(q, d.astype(np.float32), m.astype(np.float32))


def _tensor(g: GgufModel, c: ref.Config, field: str, layer: int | None, q4: bool = False) -> np.ndarray | ref.Q4Tensor:
    """One tensor of the checkpoint, in file order (v3_tensor_order's names)."""
    if field in ("rms_att", "rms_ffn"):
        gname = "attn_norm" if field == "rms_att" else "ffn_norm"
        return np.stack([_dequantize(g, f"blk.{i}.{gname}.weight") for i in range(c.n_layers)])
    if layer is None:
        gname = {v: k for k, v in GLOBAL_TENSORS.items()}[field]
        return _dequantize(g, f"{gname}.weight")
    gname = {v: k for k, v in LAYER_TENSORS.items()}[field]
    if q4:
        blocks = _q4_blocks(g, f"blk.{layer}.{gname}.weight")
        if blocks is not None:
            return blocks
    return _dequantize(g, f"blk.{layer}.{gname}.weight")


# ---------------------------------------------------------------------------------------------- converting


def convert(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fp32: bool = False,
    group_size: int = ref.V3_GROUP_SIZE,
    progress: bool | None = None,
    weights: str | None = None,
) -> ref.CheckpointInfo:
    """Write `source` (a llama GGUF) as a v3 checkpoint at `out` (atomically: OUT.part, then renamed).

    weights: "int8" (the default), "fp32" (also fp32=True) or "q4" (weight_type 2: 4-bit layer matrices, int8
    embedding and classifier, groups of 32). Raises ConvertError for bad input (its status names the class) or an
    unwritable output."""
    from tqdm import tqdm

    weights = weights or ("fp32" if fp32 else "int8")
    if weights not in WEIGHT_KINDS:
        raise ConvertError(64, f"weights {weights!r} is not one of {', '.join(WEIGHT_KINDS)}")
    q4 = weights == "q4"
    g = open_gguf(source)
    p = plan(g)
    c = p.config
    gs = 0 if weights == "fp32" else group_size
    if q4 and (gs != ref.Q4_GROUP_SIZE or c.dim % gs or c.hidden_dim % gs):
        raise ConvertError(
            EXIT_ARCHITECTURE,
            f"{source}: 4-bit weights need rows of a multiple of {ref.Q4_GROUP_SIZE} values (dim {c.dim}, hidden "
            f"{c.hidden_dim}, group size {gs})",
        )
    if gs:
        ref._check_group_size(str(out), c, p.shared, gs)
    blob = ref.pack_meta(p.meta)
    wtype = ref.WEIGHT_Q4 if q4 else None
    meta_offset = ref.expected_size(c, 3, p.shared, gs, wtype)
    order = ref.v3_tensor_order(c, p.shared)
    out = Path(out)
    part = out.with_name(out.name + ".part")
    show = sys.stderr.isatty() if progress is None else progress
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as f:
            f.write(ref.v3_header(c, p.shared, gs, meta_offset, len(blob), wtype))
            bar = tqdm(order, desc=f"converting {Path(source).name}", unit="tensor", disable=not show, leave=False)
            copied = 0
            for field, layer, _shape in bar:
                t = _tensor(g, c, field, layer, q4)
                copied += isinstance(t, ref.Q4Tensor)
                ref.write_v3_tensor(f, t, field, gs, q4)
            if q4:
                matrices = c.n_layers * len(ref.LAYER_MATRICES)
                log.info("%s: %d of %d layer matrices copied from Q4_0/Q4_1 blocks, the rest quantized to 4 bits",
                         out, copied, matrices)  # fmt: skip
            if f.tell() != meta_offset:
                raise ConvertError(
                    ref.EXIT_INTERNAL, f"{out}: wrote {f.tell()} bytes of weights, expected {meta_offset}"
                )
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, out)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise ConvertError(EXIT_IOERR, f"{out}: cannot write: {e.strerror or e}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return ref.check_checkpoint(out)


# ---------------------------------------------------------------------------------------------- back to GGUF


def write_gguf(checkpoint: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a v3 checkpoint's exact weights as a GGUF llama.cpp loads, with the source GGUF's metadata.

    An int8 checkpoint (groups of 32, fp16-exact scales, as convert writes it) becomes Q8_0 with the very same
    values; an fp32 one becomes F32. For comparing storybot-llama2c with llama.cpp on the same weights."""
    import gguf

    ckpt = ref.read_checkpoint(checkpoint)
    if ckpt.version != 3:
        raise ValueError(f"{checkpoint}: a v{ckpt.version} checkpoint; write_gguf needs a v3 one")
    w, c = ckpt.weights, ckpt.config
    quant = w.quant or {}
    q8 = w.quant is not None
    if q8 and ckpt.group_size != 32:
        raise ValueError(f"{checkpoint}: group size {ckpt.group_size}; Q8_0 needs 32")
    src = open_gguf(source)
    out = Path(out)
    part = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(part), "llama")
    try:
        _copy_metadata(src, writer, gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.ALL_F32)

        def matrix(name: str, field: str, layer: int | None = None) -> None:
            if not q8:
                a = getattr(w, field) if field != "wcls" or w.wcls is not None else w.token_embedding
                writer.add_tensor(name, np.ascontiguousarray(a if layer is None else a[layer], dtype=np.float32))
                return
            qt = quant[field] if layer is None else quant[field].layer(layer)
            if not isinstance(qt, ref.QTensor):
                raise ValueError(f"{checkpoint}: {field} holds 4-bit weights; only int8 ones are written as Q8_0")
            writer.add_tensor(name, q8_0_blocks(qt), raw_dtype=gguf.GGMLQuantizationType.Q8_0)

        matrix("token_embd.weight", "token_embedding")
        for i in range(c.n_layers):
            writer.add_tensor(f"blk.{i}.attn_norm.weight", np.asarray(w.rms_att[i], np.float32))
            writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.asarray(w.rms_ffn[i], np.float32))
            for gname, field in LAYER_TENSORS.items():
                if not field.startswith("rms_"):
                    matrix(f"blk.{i}.{gname}.weight", field, i)
        writer.add_tensor("output_norm.weight", np.asarray(w.rms_final, np.float32))
        if not w.shared_classifier:
            matrix("output.weight", "wcls")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(part, out)
    except BaseException:
        writer.close()
        part.unlink(missing_ok=True)
        raise
    return out


def q8_0_blocks(qt: ref.QTensor) -> np.ndarray:
    """A [rows][cols] int8 tensor with fp16-exact scales per 32 values as GGUF Q8_0 bytes [rows][cols/32*34]."""
    rows, cols = qt.q.shape
    if qt.group_size != 32 or cols % 32:
        raise ValueError(f"Q8_0 needs groups of 32 within rows; got group {qt.group_size}, {cols} columns")
    d = qt.s.astype(np.float16)
    if not np.array_equal(d.astype(np.float32), qt.s):
        raise ValueError("the scales are not fp16-exact: this checkpoint was not written by convert_gguf")
    q = np.ascontiguousarray(qt.q, dtype=np.int8).reshape(rows, cols // 32, 32).view(np.uint8)
    d_bytes = d.reshape(rows, cols // 32, 1).view(np.uint8)  # little-endian fp16, 2 bytes
    return np.ascontiguousarray(np.concatenate([d_bytes, q], axis=-1).reshape(rows, cols // 32 * 34))


def _copy_metadata(src: GgufModel, writer, file_type) -> None:
    from gguf import GGUFValueType

    for key, f in src.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = GGUFValueType(f.types[0])
        sub = GGUFValueType(f.types[1]) if vtype == GGUFValueType.ARRAY else None
        value = int(file_type) if key == "general.file_type" else f.contents()
        writer.add_key_value(key, value, vtype, sub_type=sub)
    if "general.file_type" not in src.fields:
        writer.add_file_type(int(file_type))


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.convert_gguf", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="a llama-architecture GGUF (or, with --write-gguf, a v3 checkpoint)")
    p.add_argument("output", nargs="+", help="the v3 checkpoint to write (with --write-gguf: SOURCE.gguf OUT.gguf)")
    p.add_argument("--fp32", action="store_true", help="fp32 weights instead of int8 groups of 32 (= --weights fp32)")
    p.add_argument("--weights", choices=WEIGHT_KINDS, help="int8 (default), q4 (4-bit layer matrices) or fp32")
    p.add_argument("--write-gguf", action="store_true", help="write a v3 checkpoint's weights back as a GGUF")
    args = p.parse_args(argv)
    try:
        if args.write_gguf:
            if len(args.output) != 2:
                p.error("--write-gguf needs CHECKPOINT SOURCE.gguf OUT.gguf")
            out = write_gguf(args.input, *args.output)
            print(f"{out}: {out.stat().st_size} bytes")
            return 0
        if len(args.output) != 1:
            p.error("one output file")
        info = convert(args.input, args.output[0], fp32=args.fp32, weights=args.weights)
    except ConvertError as e:
        print(f"storybot models: {e}", file=sys.stderr)
        return e.status
    except ref.FormatError as e:
        print(f"storybot models: {e}", file=sys.stderr)
        return e.status
    print(describe(info))
    return 0


def describe(info: ref.CheckpointInfo) -> str:
    c = info.config
    if info.weight_type == ref.WEIGHT_Q4:
        kind = f"q4: 4-bit layer matrices, int8 embedding, groups of {info.group_size}"
    else:
        kind = f"int8 groups of {info.group_size}" if info.group_size else "fp32"
    return (
        f"{info.path}: v3 ({kind}), dim {c.dim}, hidden {c.hidden_dim}, {c.n_layers} layers, {c.n_heads} heads "
        f"({c.n_kv_heads} kv), vocab {c.vocab_size}, context {c.seq_len}, rope theta {c.rope_theta:g}, "
        f"norm eps {c.norm_eps:g}, {info.size_bytes} bytes"
    )


if __name__ == "__main__":
    sys.exit(main())
