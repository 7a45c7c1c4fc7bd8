"""storybot-llama2c cross-built for RISC-V and run under qemu-riscv64: the RVV 1.0 build (VLEN 128 and 256), the
rv64gc scalar build and the host build give the same greedy tokens and logits that match the reference; the
RVV build on a CPU without V dies of SIGILL, which proves it really runs vector instructions.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engines import llama2c_ref as R
from tests.conftest import ROOT, need
from tests.test_llama2c_bpe import smollm_gguf, smollm_v3  # noqa: F401 (session fixtures: one conversion)
from tests.test_llama2c_engine import assert_logits_close, assert_same_greedy, engine_path

LLAMA2C = ROOT / "engines" / "llama2c"
RVV = LLAMA2C / "build" / "storybot-llama2c-rvv"
RV64GC = LLAMA2C / "build" / "storybot-llama2c-rv64gc"
CPU_V128 = "rv64,v=true,vlen=128,elen=64,vext_spec=v1.0"
CPU_V256 = "rv64,v=true,vlen=256,elen=64,vext_spec=v1.0"
CPU_NO_V = "rv64"
GAIN = 1.5  # varied greedy text (at 1.0 it repeats one token)
PROMPT = [1, 300, 41, 77, 290, 12]
STEPS = 48


@pytest.fixture(scope="module")
def cross_builds() -> tuple[Path, Path]:
    for tool, package in (("qemu-riscv64", "qemu-user"), ("clang-19", "clang-19"),
                          ("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu")):  # fmt: skip
        need(shutil.which(tool) is not None, f"{tool} is not installed (Debian package {package})")
    need((LLAMA2C / "Makefile").exists(), "engines/llama2c/Makefile does not exist yet")
    proc = subprocess.run(
        ["make", "-C", str(LLAMA2C), "-j2", "riscv-rvv", "riscv-scalar"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"cross build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert RVV.exists() and RV64GC.exists()
    return RVV, RV64GC


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qemu")
    out = {}
    for name, version in (("int8", 2), ("fp32", 0)):
        d = root / name
        d.mkdir()
        w = R.random_weights("stories260K", seed=21, gain=GAIN)
        R.write_checkpoint(d / "model.bin", w, version)
        R.write_tokenizer(d / "tokenizer.bin", R.small_vocab(512))
        out[name] = d / "model.bin"
    return out


def run_greedy(argv: list[str], model: Path, tmp: Path, tag: str) -> tuple[list[int], np.ndarray, bytes]:
    ids_file, logits_file = tmp / f"{tag}.ids", tmp / f"{tag}.f32"
    proc = subprocess.run(
        [*argv, str(model), "-t", "0", "-n", str(STEPS), "--prompt-ids", ",".join(map(str, PROMPT)),
         "--dump-ids", str(ids_file), "--dump-logits", str(logits_file)],
        capture_output=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, f"{tag}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
    ids = [int(t) for t in ids_file.read_text().split()]
    return ids, np.fromfile(logits_file, "<f4").reshape(-1, 512).astype(np.float64), proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_riscv_builds_give_the_host_tokens(cross_builds, checkpoints, tmp_path, kind):
    rvv, rv64gc = cross_builds
    model = checkpoints[kind]
    host = run_greedy([engine_path()], model, tmp_path, "host")
    runs = {
        "rvv-vlen128": run_greedy(["qemu-riscv64", "-cpu", CPU_V128, str(rvv)], model, tmp_path, "v128"),
        "rvv-vlen256": run_greedy(["qemu-riscv64", "-cpu", CPU_V256, str(rvv)], model, tmp_path, "v256"),
        "rv64gc": run_greedy(["qemu-riscv64", "-cpu", CPU_NO_V, str(rv64gc)], model, tmp_path, "rv64gc"),
    }
    ref = R.Transformer(R.read_checkpoint(model).weights)
    assert_same_greedy(host[0], ref, PROMPT, kind == "int8")
    for tag, (ids, logits, stdout) in runs.items():
        assert len(set(ids)) > 10, f"{tag}: degenerate output {ids}"
        # same tokens as the host build, and (teacher-forced) the reference's logits
        assert ids == host[0], f"{tag} differs from the host build:\n{tag} {ids}\nhost   {host[0]}"
        assert stdout == host[2]
        want = ref.forward(ids[: len(logits)])
        assert_logits_close(logits, want, kind == "int8", f"{tag} {kind}")


@pytest.mark.slow
@pytest.mark.parametrize("build", ["rvv-vlen128", "rv64gc"])
def test_riscv_batched_prefill_gives_the_token_by_token_logits(cross_builds, checkpoints, tmp_path, build):
    """The prompt in batches (of 4 and 2) on the RISC-V kernels: the token-by-token run's ids, and its logits to the
    bit from the prompt's last token on."""
    rvv, rv64gc = cross_builds
    argv = ["qemu-riscv64", "-cpu", CPU_V128, str(rvv)] if build == "rvv-vlen128" else ["qemu-riscv64", "-cpu",
            CPU_NO_V, str(rv64gc)]  # fmt: skip
    model = checkpoints["int8"]
    one = run_greedy([*argv, "--batch", "1"], model, tmp_path, "one")
    batched = run_greedy([*argv, "--batch", "4"], model, tmp_path, "batched")
    assert batched[0] == one[0]
    np.testing.assert_array_equal(batched[1], one[1][len(PROMPT) - 1 :])


@pytest.mark.slow
def test_rvv_build_uses_vector_instructions(cross_builds, checkpoints):
    rvv, _ = cross_builds
    proc = subprocess.run(
        ["qemu-riscv64", "-cpu", CPU_NO_V, str(rvv), str(checkpoints["int8"]), "-t", "0", "-n", "8"],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode in (-signal.SIGILL, 128 + signal.SIGILL), (
        f"the RVV build ran on a CPU without V (exit {proc.returncode}): it uses no vector instructions"
    )


@pytest.mark.slow
def test_rvv_build_rejects_a_bad_checkpoint_like_the_host(cross_builds, checkpoints, tmp_path):
    rvv, _ = cross_builds
    bad = tmp_path / "cut.bin"
    bad.write_bytes(checkpoints["int8"].read_bytes()[:-16])
    proc = subprocess.run(
        [
            "qemu-riscv64",
            "-cpu",
            CPU_V128,
            str(rvv),
            str(bad),
            "-z",
            str(checkpoints["int8"].with_name("tokenizer.bin")),
        ],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 67 and b"cut.bin" in proc.stderr


# ---------------------------------------------------------------------------------------------- SmolLM2 (v3)


@pytest.mark.slow
def test_rvv_build_gives_the_host_tokens_on_smollm2(cross_builds, smollm_v3, tmp_path):  # noqa: F811
    """The real model converted to v3 int8 (byte-level BPE, GQA 9/3, rope theta 100000): a short chat prompt of
    11 tokens, four greedy tokens, the same ids and text from the RVV build under qemu as from the host build."""
    rvv, _ = cross_builds
    model = smollm_v3
    prompt = "<|im_start|>user\nA cat<|im_end|>\n<|im_start|>assistant\n"
    runs = {}
    for tag, argv in (("host", [engine_path()]), ("rvv", ["qemu-riscv64", "-cpu", CPU_V128, str(rvv)])):
        ids_file = tmp_path / f"{tag}.ids"
        proc = subprocess.run(
            [*argv, str(model), "-t", "0", "-n", "14", "--context", "16", "--special", "-i", prompt,
             "--dump-ids", str(ids_file)],
            capture_output=True, timeout=1200, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.returncode == 0, f"{tag}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
        runs[tag] = ([int(t) for t in ids_file.read_text().split()], proc.stdout)
    assert len(runs["host"][0]) == 15, runs["host"]  # the prompt's 11 tokens and 4 generated ones
    assert runs["rvv"] == runs["host"], f"rvv {runs['rvv']}\nhost {runs['host']}"
