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
