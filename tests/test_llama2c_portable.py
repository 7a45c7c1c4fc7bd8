"""The portable int8 matmul's copies: one inlined per common group size (32, 64), a generic one for the others,
rows in fours with single rows left over. Each is checked against the NumPy reference, with -j 3 so that the
thread split gives odd row ranges (the leftover row) in the fused matmuls and the classifier."""

from __future__ import annotations

import numpy as np
import pytest

from engines import llama2c_ref as R
from tests.test_llama2c_engine import (
    LOGITS_GAIN,
    assert_logits_close,
    engine_path,
    generate,
    random_prompt,
    stop_free,
)


@pytest.mark.parametrize("group_size", [32, 64, 16])  # 16: the generic copy
@pytest.mark.parametrize("threads", ["1", "3"])
def test_portable_int8_matmul_matches_the_reference(tmp_path, group_size, threads):
    w = R.random_weights("tiny_mha", seed=7, gain=LOGITS_GAIN)  # dim 64, hidden 128: every n % GS == 0
    model = R.write_checkpoint(tmp_path / "model.bin", w, 2, group_size=group_size)
    R.write_tokenizer(tmp_path / "tokenizer.bin", R.small_vocab(w.config.vocab_size))
    checkpoint = R.read_checkpoint(model)
    assert checkpoint.weights.group_size == group_size
    ref = R.Transformer(checkpoint.weights)
    got, want = [], []
    for seed in range(3):
        prompt = random_prompt(w.config.vocab_size, 8, seed=seed)
        out = generate(engine_path(), model, tmp_path, "--prompt-ids", ",".join(map(str, prompt)), "-n", "12",
                       "--kernels", "portable", "-j", threads)  # fmt: skip
        ids = stop_free(out.ids, len(prompt))
        got.append(out.logits)
        want.append(ref.forward(ids[: len(out.logits)]))
    assert_logits_close(np.vstack(got), np.vstack(want), True, f"portable int8, GS {group_size}, -j {threads}")
