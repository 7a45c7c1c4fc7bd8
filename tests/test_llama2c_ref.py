"""Self-checks of the NumPy reference for storybot-llama2c (engines/llama2c_ref.py).

The engine tests trust this reference, so it is checked here against things it did not compute itself: the
published sizes of the real checkpoints, a plain per-token loop written straight from the contract, GQA against
the same model with duplicated kv heads, hand-built vocabularies with known tokenizations.
"""

from __future__ import annotations

import math
import struct
import subprocess

import numpy as np
import pytest

from engines import llama2c_ref as R
from tests.conftest import PYTHON, ROOT

# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "shape,version,shared,size",
    [
        # sizes of the published files (stories15M.bin is 60,816,028 bytes) and of runq's export
        ("stories260K", 0, True, 1_056_540),
        ("stories260K", 2, True, 278_608),
        ("stories15M", 0, True, 60_816_028),
        ("stories15M", 2, True, 17_101_696),
        ("stories42M", 0, True, 167_020_572),
        ("stories42M", 2, True, 44_321_024),
        ("stories110M", 0, True, 438_381_596),
        ("stories110M", 2, True, 116_432_128),
    ],
)
def test_expected_sizes_match_the_published_checkpoints(shape, version, shared, size):
    c = R.SHAPES[shape]
    gs = R.export_group_size(c.dim) if version == 2 else None
    assert R.expected_size(c, version, shared, gs) == size


def test_export_group_size_is_llama2c_export_rule():
    assert [R.export_group_size(d) for d in (64, 288, 512, 768, 48, 100)] == [64, 32, 64, 64, 16, 4]


@pytest.mark.parametrize("shape", ["tiny", "tiny_gqa"])
@pytest.mark.parametrize("version", [0, 1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_write_read_round_trip(tmp_path, shape, version, shared):
    w = R.random_weights(shape, seed=3, shared_classifier=shared)
    path = R.write_checkpoint(tmp_path / "m.bin", w, version)
    ck = R.read_checkpoint(path)
    assert ck.version == version and ck.config == w.config
    assert ck.weights.shared_classifier == shared
    assert path.stat().st_size == R.expected_size(w.config, version, shared, ck.group_size)
    gs = ck.group_size
    for name in ("token_embedding", "rms_att", "rms_ffn", "rms_final", *R.LAYER_MATRICES, "wcls"):
        want, got = getattr(w, name), getattr(ck.weights, name)
        if want is None:
            assert got is None
            continue
        if version == 2 and name not in ("rms_att", "rms_ffn", "rms_final"):
            want = R.quantize_q80(want, gs).dequantize()
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_headers_are_laid_out_as_llama2c_export(tmp_path):
    w = R.random_weights("tiny", seed=1, shared_classifier=False)
    v0 = R.write_checkpoint(tmp_path / "v0.bin", w, 0).read_bytes()
    assert struct.unpack_from("<7i", v0) == (48, 100, 2, 6, 2, -384, 64)  # unshared: negative vocab
    v2 = R.write_checkpoint(tmp_path / "v2.bin", w, 2).read_bytes()
    assert v2[:4] == b"24ka"  # 0x616b3432 little-endian
    assert struct.unpack_from("<i7iBi", v2, 4) == (2, 48, 100, 2, 6, 2, 384, 64, 0, 16)
    assert v2[41:256] == bytes(215)
    # the first payload floats are rms_att of layer 0
    assert np.frombuffer(v2, "<f4", 48, 256).tolist() == w.rms_att[0].tolist()
    v1 = R.write_checkpoint(tmp_path / "v1.bin", w, 1, shared_classifier=True).read_bytes()
    assert struct.unpack_from("<Ii7iB", v1) == (R.MAGIC, 1, 48, 100, 2, 6, 2, 384, 64, 1)


def test_v2_tensors_are_quantized_each_on_its_own(tmp_path):
    """wq of layer 1 starts a new tensor: its int8 values follow all of layer 0's values and scales."""
    w = R.random_weights("tiny", seed=2)
    data = R.write_checkpoint(tmp_path / "v2.bin", w, 2).read_bytes()
    c, gs = w.config, 16
    pos = 256 + 4 * (2 * c.n_layers * c.dim + c.dim) + c.vocab_size * c.dim * 5 // 4  # past norms, embedding
    per = c.dim * c.dim
    pos += per + 4 * per // gs  # layer 0's wq
    q1 = np.frombuffer(data, np.int8, per, pos)
    np.testing.assert_array_equal(q1, R.quantize_q80(w.wq[1], gs).q.reshape(-1))


# ---------------------------------------------------------------------------------------------- quantization


def test_round_half_away_from_zero():
    assert R.round_half_away(np.array([2.5, -2.5, 0.5, -0.5, 1.49, -1.51])).tolist() == [3, -3, 1, -1, 1, -2]


def test_quantize_error_is_at_most_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 96)).astype(np.float32) * 0.1
    w[3, :32] = 0  # an all-zero group stays zero, scale 0, no NaN
    qt = R.quantize_q80(w, 32)
    deq = qt.dequantize()
    assert np.isfinite(deq).all() and (deq[3, :32] == 0).all() and qt.s[3 * 3] == 0
    step = np.repeat(qt.s, 32).reshape(w.shape)
    assert (np.abs(deq - w) <= step / 2 * (1 + 1e-5) + 1e-12).all()
    assert np.abs(qt.q).max() == 127 and qt.q.dtype == np.int8
    # every nonzero group uses its full range
    assert (np.abs(qt.q.reshape(-1, 32)).max(axis=1)[qt.s > 0] == 127).all()


def test_activation_quantization_follows_the_contract():
    x = np.array([[0.0, 1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 0.0]])
    got = R.quantize_activations(x, 4)
    s = np.float32(1.0) / np.float32(127)
    want = [0.0, 127 * s, -64 * s, 32 * s, 0, 0, 0, 0]  # -63.5 rounds away from zero to -64, 31.75 to 32
    np.testing.assert_allclose(got[0], want, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- forward pass


def naive_forward(w: R.Weights, tokens: list[int]) -> np.ndarray:
    """The contract's forward pass as a plain per-token loop (run.c's structure), fp32 weights only."""
    c = w.config
    hs, kv_mul = c.head_size, c.n_heads // c.n_kv_heads
    keys = np.zeros((c.n_layers, len(tokens), c.kv_dim))
    vals = np.zeros_like(keys)
    out = []

    def rmsnorm(x, g):
        return g * (x / math.sqrt(float(np.dot(x, x)) / len(x) + 1e-5))

    def rope(vec, pos):
        vec = vec.copy()
        for i in range(0, len(vec), 2):
            theta = pos / 10000.0 ** ((i % hs) / hs)
            a, b = vec[i], vec[i + 1]
            vec[i], vec[i + 1] = a * math.cos(theta) - b * math.sin(theta), a * math.sin(theta) + b * math.cos(theta)
        return vec

    for pos, tok in enumerate(tokens):
        x = w.token_embedding[tok].astype(np.float64)
        for layer in range(c.n_layers):
            xb = rmsnorm(x, w.rms_att[layer])
            q = rope(w.wq[layer] @ xb, pos)
            keys[layer, pos] = rope(w.wk[layer] @ xb, pos)
            vals[layer, pos] = w.wv[layer] @ xb
            att = np.zeros(c.dim)
            for h in range(c.n_heads):
                kvh = h // kv_mul
                qh = q[h * hs : (h + 1) * hs]
                scores = np.array(
                    [qh @ keys[layer, t, kvh * hs : (kvh + 1) * hs] / math.sqrt(hs) for t in range(pos + 1)]
                )
                p = np.exp(scores - scores.max())
                p /= p.sum()
                att[h * hs : (h + 1) * hs] = sum(
                    p[t] * vals[layer, t, kvh * hs : (kvh + 1) * hs] for t in range(pos + 1)
                )
            x = x + w.wo[layer] @ att
            xb = rmsnorm(x, w.rms_ffn[layer])
            h1, h3 = w.w1[layer] @ xb, w.w3[layer] @ xb
            x = x + w.w2[layer] @ (h1 / (1 + np.exp(-h1)) * h3)
        x = rmsnorm(x, w.rms_final)
        out.append((w.token_embedding if w.wcls is None else w.wcls) @ x)
    return np.array(out)


@pytest.mark.parametrize("shape,shared", [("tiny", True), ("tiny_gqa", False)])
def test_forward_matches_a_plain_loop_from_the_contract(shape, shared):
    w = R.random_weights(shape, seed=5, shared_classifier=shared)
    tokens = [1, 17, 300 % w.config.vocab_size, 42, 5, 42]
    np.testing.assert_allclose(R.Transformer(w).forward(tokens), naive_forward(w, tokens), rtol=1e-9, atol=1e-9)


def test_gqa_equals_mha_with_duplicated_kv_heads():
    w = R.random_weights("tiny", seed=7)  # 6 heads, 2 kv heads
    c = w.config
    mha = R.Config(c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_heads, c.vocab_size, c.seq_len)
    hs, mul = c.head_size, c.n_heads // c.n_kv_heads

    def dup(m):  # [L][kv_dim][dim] -> [L][dim][dim], kv head j serving query heads j*mul..
        return np.repeat(m.reshape(c.n_layers, c.n_kv_heads, hs, c.dim), mul, axis=1).reshape(c.n_layers, c.dim, c.dim)

    w2 = R.Weights(**{**w.__dict__, "config": mha, "wk": dup(w.wk), "wv": dup(w.wv)})
    tokens = [1, 9, 99, 199, 299]
    np.testing.assert_allclose(R.Transformer(w).forward(tokens), R.Transformer(w2).forward(tokens), atol=1e-10)


def test_incremental_cache_equals_fresh_forward():
    m = R.Transformer(R.random_weights("tiny_mha", seed=1))
    tokens = [1, 5, 6, 7, 300, 301, 2]
    cache = R.Cache(m.c, len(tokens))
    rows = [m.step(tokens[:3], 0, cache)] + [m.step([t], i, cache) for i, t in enumerate(tokens[3:], start=3)]
    np.testing.assert_allclose(np.vstack(rows), m.forward(tokens), atol=1e-10)


def test_window_shift_logits_equal_a_fresh_pass_over_the_kept_tokens():
    m = R.Transformer(R.random_weights("tiny", seed=2))
    gen = R.generate(m, [1, 50, 60, 70], 40, context=16, keep=4, record_windows=True)
    assert gen.shifts >= 2 and len(gen.ids) == 41
    for row, window in zip(gen.logits, gen.windows, strict=True):
        assert len(window) <= 16
        np.testing.assert_allclose(row, m.forward(window)[-1], atol=1e-9)
    # the first shift: the cache held 16 tokens; kept are the first 4 and the newest (16-4)//2 = 6, then the 17th
    seq = gen.ids
    assert gen.windows[16] == seq[:4] + seq[10:16] + [seq[16]]


def test_generation_is_greedy_and_stops_at_the_sequence_markers():
    w = R.random_weights("tiny_mha", seed=4)
    m = R.Transformer(w)
    gen = R.generate(m, [1, 100], 30)
    for i, row in enumerate(gen.logits[1:], start=1):
        assert gen.ids[i + 1] == int(np.argmax(row))

    class Script(R.Sampler):  # samples 7, 8, then EOS
        def __init__(self):
            super().__init__(w.config.vocab_size, 0.0, 0.9, 0)
            self.todo = [7, 8, 2, 9]

        def sample(self, logits):
            return self.todo.pop(0)

    # EOS inside the prompt is forced, not a stop; after the prompt it ends generation and is not in the ids
    gen = R.generate(m, [1, 100, 2, 101], 30, sampler=Script())
    assert gen.ids == [1, 100, 2, 101, 7, 8] and gen.stop_token == 2 and len(gen.logits) == 6


@pytest.mark.parametrize("shape,gs", [("tiny", 16), ("stories260K", 64), ("tiny_gqa", 128), ("tiny_mha", 64)])
def test_int8_rules_are_far_enough_apart_to_be_tested(shape, gs):
    """The engine tests' int8 criterion (most rows within INT8_ROW_TOLERANCE) must reject the wrong group rule.

    tiny and stories260K have hidden_dim % GS != 0 (w2's groups cross rows); tiny_gqa's GS 128 exceeds dim, so
    every matmul's groups cross rows; tiny_mha has every n a multiple of GS.
    """
    w = R.quantize_weights(R.random_weights(shape, seed=3, gain=LOGITS_GAIN), gs)
    tokens = [1, *np.random.default_rng(0).integers(3, w.config.vocab_size, 30).tolist()]
    right = R.Transformer(w).forward(tokens)

    class AlwaysQuantize(R.Transformer):  # runq.c-like: quantize x whatever n is
        def _matmul(self, name, layer, x):
            mat = self._mat[name] if layer is None else self._mat[name][layer]
            n = mat.shape[1]
            xq = R.quantize_activations(np.pad(x, ((0, 0), (0, -n % gs))), gs)[:, :n]
            return xq @ mat.T

    class NeverQuantize(R.Transformer):
        def _matmul(self, name, layer, x):
            return x @ (self._mat[name] if layer is None else self._mat[name][layer]).T

    wrongs = [NeverQuantize(w)] if shape == "tiny_mha" else [AlwaysQuantize(w)]
    if shape in ("tiny", "stories260K"):
        wrongs.append(NeverQuantize(w))
    for wrong in wrongs:
        rows = np.abs(wrong.forward(tokens) - right).max(axis=1) / np.abs(right).max()
        assert rows.min() > 5 * INT8_ROW_TOLERANCE, type(wrong).__name__


LOGITS_GAIN = 0.5  # the engine tests' logits models: a rounding flip moves the logits by < 0.2%
INT8_ROW_TOLERANCE = 1e-4  # relative to max |logit|: what most int8 rows must meet in tests/test_llama2c_engine.py


# ---------------------------------------------------------------------------------------------- sampling


def test_sampler_argmax_takes_the_lowest_index_on_ties():
    s = R.Sampler(5, 0.0, 0.9, 1)
    assert s.sample(np.array([0.0, 3.0, 1.0, 3.0, -1.0], np.float32)) == 1


def test_sampler_is_seeded_and_topp_keeps_to_the_nucleus():
    logits = np.array([5.0, 4.0, 0.0, -2.0, -9.0] + [-20.0] * 95, np.float32)
    a = [R.Sampler(100, 1.0, 0.9, 7).sample(logits) for _ in range(1)]
    s1, s2 = R.Sampler(100, 1.0, 0.9, 7), R.Sampler(100, 1.0, 0.9, 7)
    draws = [s1.sample(logits) for _ in range(200)]
    assert draws == [s2.sample(logits) for _ in range(200)] and a[0] == draws[0]
    assert set(draws) <= {0, 1} and draws.count(0) > draws.count(1) > 0  # p(0)=.73, p(1)=.27: the nucleus
    s3 = R.Sampler(100, 1.0, 1.0, 7)  # no top-p: the tail is reachable
    assert len(set(s3.sample(logits) for _ in range(2000))) >= 3


def test_xorshift_first_values():
    """llama2.c's random_u32 for seed 1: computed by hand from its three shifts and multiplier."""
    s = R.Sampler(10, 1.0, 0.9, 1)
    state = 1
    state ^= state >> 12
    state ^= (state << 25) & (2**64 - 1)
    state ^= state >> 27
    assert (
        s.random_u32() == ((state * 0x2545F4914F6CDD1D) % 2**64) >> 32 == (0x2000001 * 0x2545F4914F6CDD1D % 2**64) >> 32
    )


# ---------------------------------------------------------------------------------------------- tokenizer


def hand_vocab(extra: list[tuple[str, float]]) -> R.Tokenizer:
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    scores = [0.0] * len(pieces)
    for p, s in extra:
        pieces.append(p.encode())
        scores.append(s)
    return R.Tokenizer(pieces, np.array(scores, np.float32))


SP, A, B, C, AB, SPAB, ABC, KO_I, KO_YA, KO_GI, KO_YAGI, KO_IYAGI = range(259, 271)
HAND = hand_vocab(
    [(" ", -100), ("a", -101), ("b", -102), ("c", -103), ("ab", -1), (" ab", -2), ("abc", -3),
     ("이", -104), ("야", -105), ("기", -106), ("야기", -5), ("이야기", -4)]
)  # fmt: skip
HAE = [b + 3 for b in "해".encode()]  # not a piece


@pytest.mark.parametrize(
    "text,ids",
    [
        ("", [1]),
        ("a", [1, SP, A]),
        ("ab", [1, SPAB]),  # " "+"a"+"b": "ab" (-1) merges first, then " "+"ab" -> " ab" (-2)
        ("abc", [1, SPAB, C]),  # " ab"(-2) beats "abc"(-3) once "ab" exists: greedy, best score first
        ("cab", [1, SP, C, AB]),
        ("a\nb", [1, SP, A, 10 + 3, B]),  # no "\n" piece: byte fallback
        ("이야기", [1, SP, KO_IYAGI]),  # three-byte codepoints looked up whole, then 야+기, then 이+야기
        ("기야", [1, SP, KO_GI, KO_YA]),
        ("이야기 해해", [1, SP, KO_IYAGI, SP, *HAE, *HAE]),  # byte tokens never merge
        ("이해", [1, SP, KO_I, *HAE]),
        ("🐉", [1, SP, 0xF0 + 3, 0x9F + 3, 0x90 + 3, 0x89 + 3]),  # 4-byte UTF-8, no piece: four byte tokens
        ("é", [1, SP, 0xC3 + 3, 0xA9 + 3]),
    ],
)
def test_encode_known_cases(text, ids):
    assert HAND.encode(text) == ids


def test_decode_and_what_run_prints():
    t = HAND
    assert t.decode(1, SPAB) == b"ab" and t.decode(A, SPAB) == b" ab"  # leading space dropped after BOS only
    assert t.decode(A, 10 + 3) == b"\n" and t.decode(A, 3) == b""  # <0x0A>, <0x00> (an empty C string)
    ids = t.encode("ab\né🐉")
    assert t.text(ids) == "ab\né🐉"
    # run prints lone bytes only when printable or space: the UTF-8 byte tokens of é and 🐉 are dropped
    assert t.render(ids) == b"ab\n\n"


def test_small_vocab_encodes_real_text_and_survives_a_file(tmp_path):
    t = R.small_vocab(512)
    assert t.vocab_size == 512 and len(set(t.pieces)) == 512
    text = "Once upon a time, there was a little dragon named Bo who loved tea. 이야기 🐉\n"
    ids = t.encode(text)
    assert ids[0] == 1 and len(ids) < len(text.encode())  # merges happened
    assert t.text(ids) == text
    path = R.write_tokenizer(tmp_path / "tok.bin", t)
    back = R.read_tokenizer(path, 512)
    assert back.pieces == t.pieces and back.scores.tolist() == t.scores.tolist()
    assert back.encode(text) == ids


def test_command_line_writes_a_checkpoint_and_tokenizer(tmp_path):
    out, tok = tmp_path / "m.bin", tmp_path / "tok.bin"
    proc = subprocess.run(
        [PYTHON, "-m", "engines.llama2c_ref", "write", "--shape", "stories260K", "--version", "2", "--seed", "1",
         str(out), "--tokenizer", str(tok)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = R.check_checkpoint(out)
    assert (info.version, info.group_size, info.size_bytes) == (2, 64, 278_608)
    assert R.check_tokenizer(tok, 512).vocab_size == 512
