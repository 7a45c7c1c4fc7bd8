"""storybot-llama2c for T-Head's vector unit (XTheadVector, RVV 0.7.1: C906/C910), built by `make riscv-thead`
with Debian 13's GCC 14 in the chroot of scripts/trixie-chroot.sh.

No emulator here runs XTheadVector (QEMU 10's thead-c906 model has T-Head's scalar extensions only), so the
proof is in three parts: the build's disassembly has th.v* instructions in the hot kernels and nothing a C906
could trap on; the build runs on QEMU's thead-c906 with the portable kernels and gives the host's tokens
(so everything but the vector kernels is checked on a C906 model); and the same kernel source built for
RVV 1.0 gives the host's tokens with every tail and masked-off element clobbered, which is what makes it
safe for RVV 0.7.1, whose tail elements are zeroed rather than left alone.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from engines import llama2c_ref as R
from tests import test_llama2c_qemu
from tests.conftest import ROOT, need
from tests.test_llama2c_engine import assert_logits_close, engine_path
from tests.test_llama2c_qemu import LLAMA2C, run_greedy

# test_llama2c_qemu's fixtures, shared: the RVV 1.0 and rv64gc cross builds and the random checkpoints
cross_builds = test_llama2c_qemu.cross_builds
checkpoints = test_llama2c_qemu.checkpoints

TRIXIE = ROOT / "scripts" / "trixie-chroot.sh"
THEAD = LLAMA2C / "build" / "storybot-llama2c-thead"
KERNELS_RVV = LLAMA2C / "src" / "kernels_rvv.c"
# The hot kernels and one instruction each must have: int8 loads widened by th.vlb.v and a widening
# reduction per group in the int8 matmul, a vector multiply-add in the fp32 matmul, a conversion in quantize.
HOT = {"matmul_q8": ("th.vlb.v", "th.vwredsum.vs"), "matmul_f32": ("th.vfmacc.vv",), "quantize": ("th.vfcvt.x.f.v",)}
# RVV 1.0 with every tail and masked-off element written with ones (QEMU's stress option for the agnostic policy).
CLOBBER = "rvv_ta_all_1s=true,rvv_ma_all_1s=true"
CPU_V128_CLOBBER = f"rv64,v=true,vlen=128,elen=64,vext_spec=v1.0,{CLOBBER}"
CPU_V256_CLOBBER = f"rv64,v=true,vlen=256,elen=64,vext_spec=v1.0,{CLOBBER}"


def chroot_root() -> Path:
    out = subprocess.run([str(TRIXIE), "path"], capture_output=True, text=True, check=True, timeout=30)
    return Path(out.stdout.strip())


def in_chroot(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a tool of the trixie chroot with engines/llama2c as the working directory (bind-mounted)."""
    return subprocess.run(
        [str(TRIXIE), "run", *argv], cwd=LLAMA2C, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="module")
def thead_build() -> Path:
    root = chroot_root()
    need(
        (root / ".storybot-recipe").exists(),
        f"no Debian 13 chroot at {root}: `scripts/setup.sh --test` creates it (root and mmdebstrap needed)",
    )
    proc = subprocess.run(
        ["make", "-C", str(LLAMA2C), "-j2", "riscv-thead"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"make riscv-thead failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert THEAD.exists()
    return THEAD


def functions(disassembly: str) -> dict[str, list[str]]:
    """objdump -d text split into {function: [mnemonic, ...]}."""
    out: dict[str, list[str]] = {}
    current = None
    for line in disassembly.splitlines():
        head = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if head:
            current = out.setdefault(head.group(1), [])
            continue
        fields = line.split("\t")
        if current is not None and len(fields) >= 2 and re.match(r"^\s*[0-9a-f]+:$", fields[0]):
            current.append(fields[1].strip() + (" " + fields[2] if len(fields) > 2 else ""))
    return out


@pytest.mark.slow
def test_thead_build_targets_xtheadvector_and_not_v(thead_build):
    proc = in_chroot("riscv64-linux-gnu-readelf", "-A", str(thead_build.relative_to(LLAMA2C)))
    assert proc.returncode == 0, proc.stderr
    arch = re.search(r'Tag_RISCV_arch: "([^"]+)"', proc.stdout)
    assert arch, proc.stdout
    exts = arch.group(1).split("_")
    assert "xtheadvector1p0" in exts, arch.group(1)
    # standard V (RVV 1.0) code anywhere would be illegal or mean something else on a C906
    assert not [e for e in exts if re.fullmatch(r"v\d+p\d+|zve\w+|zvl\w+", e)], arch.group(1)


@pytest.mark.slow
def test_thead_hot_kernels_use_th_vector_instructions(thead_build):
    proc = in_chroot("riscv64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(thead_build.relative_to(LLAMA2C)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    funcs = functions(proc.stdout)
    for name, wanted in HOT.items():
        assert name in funcs, f"{name} is not in the XTheadVector build's symbols"
        mnemonics = {insn.split()[0] for insn in funcs[name]}
        vector = sorted(m for m in mnemonics if m.startswith("th.v"))
        assert len(vector) >= 5, f"{name} has almost no XTheadVector instructions: {vector}"
        for insn in wanted:
            assert insn in mnemonics, f"{name} lacks {insn}; it has {vector}"
    # Every function with vector code must not read vlenb: T-Head's spec has th.vlenb, but shipped C906/C910
    # parts lack it (Linux reads VLEN from the device tree there). GCC reads it to spill vector registers.
    for name, insns in funcs.items():
        if any(i.startswith("th.v") for i in insns):
            reads = [i for i in insns if "vlenb" in i]
            assert not reads, f"{name} reads vlenb (a vector spill?): {reads[:3]}"


@pytest.mark.slow
def test_thead_build_runs_on_the_c906_model_with_portable_kernels(thead_build, checkpoints, tmp_path):
    """QEMU 10's thead-c906 runs T-Head's scalar extensions the build uses, not XTheadVector: with the portable
    kernels the whole program (loader, tokenizer, sampler, forward pass) runs and gives the host's tokens; with
    its own vector kernels the same binary stops at the first th.v instruction."""
    qemu = chroot_root() / "usr" / "local" / "bin" / "qemu-riscv64"  # QEMU 10, static: runs on the host
    need(qemu.exists(), f"{qemu} is missing: recreate the chroot (scripts/trixie-chroot.sh ensure)")
    c906 = [str(qemu), "-cpu", "thead-c906", str(thead_build)]
    for kind in ("int8", "fp32"):
        model = checkpoints[kind]
        host = run_greedy([engine_path()], model, tmp_path, f"host-{kind}")
        ids, logits, stdout = run_greedy([*c906, "--kernels", "portable"], model, tmp_path, f"c906-{kind}")
        assert ids == host[0], f"{kind}: thead build on thead-c906 differs from the host:\n{ids}\n{host[0]}"
        assert stdout == host[2]
        want = R.Transformer(R.read_checkpoint(model).weights).forward(ids[: len(logits)])
        assert_logits_close(logits, want, kind == "int8", f"thead-c906 portable {kind}")
    proc = subprocess.run(
        [*c906, str(checkpoints["int8"]), "-t", "0", "-n", "4"], capture_output=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode in (-signal.SIGILL, 128 + signal.SIGILL), (
        f"exit {proc.returncode}: either the vector kernels are not used by default, or this QEMU now runs "
        "XTheadVector (then run the token tests on it)"
    )


def test_rvv_kernels_use_no_undisturbed_policy():
    """RVV 0.7.1 has no tail or mask policy (its tail elements are zeroed), so the shared kernel source may only
    use the default (agnostic) intrinsics; the clobbering QEMU runs below then prove nothing reads a tail."""
    source = KERNELS_RVV.read_text()
    undisturbed = re.findall(r"__riscv_\w+_(?:tu|tum|tumu|mu)\b", source)
    assert not undisturbed, f"{KERNELS_RVV.name} uses undisturbed-policy intrinsics: {sorted(set(undisturbed))}"
    assert "__riscv_vsext" in source and "__riscv_th_vlb" in source  # both flavours of the int8 widening load


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_rvv_build_gives_the_host_tokens_with_tails_clobbered(cross_builds, checkpoints, tmp_path, kind):
    rvv, _ = cross_builds
    model = checkpoints[kind]
    host = run_greedy([engine_path()], model, tmp_path, "host")
    ref = R.Transformer(R.read_checkpoint(model).weights)
    for tag, cpu in (("vlen128", CPU_V128_CLOBBER), ("vlen256", CPU_V256_CLOBBER)):
        ids, logits, stdout = run_greedy(["qemu-riscv64", "-cpu", cpu, str(rvv)], model, tmp_path, tag)
        assert len(set(ids)) > 10, f"{tag}: degenerate output {ids}"
        assert ids == host[0], f"{tag} with clobbered tails differs from the host build:\n{ids}\n{host[0]}"
        assert stdout == host[2]
        assert_logits_close(logits, ref.forward(ids[: len(logits)]), kind == "int8", f"{tag} clobbered {kind}")


# dim 128: every matmul's n is a multiple of 64 and 128, so the activations are quantized (matmul_q8)
WIDE = R.Config(128, 256, 2, 4, 4, 512, 64)


@pytest.mark.slow
@pytest.mark.parametrize("group_size", [64, 128])
def test_rvv_int8_paths_for_wide_groups_and_odd_row_splits(cross_builds, tmp_path, group_size):
    """At VLEN 128 a group of 64 needs LMUL 8 (four rows at once) and one of 128 the one-row strips; -j 3 splits
    the fused matmuls into row ranges that are not multiples of four, so the one-row loop runs too."""
    rvv, _ = cross_builds
    w = R.random_weights(WIDE, seed=5, gain=1.5)
    model = R.write_checkpoint(tmp_path / "model.bin", w, 2, group_size=group_size)
    R.write_tokenizer(tmp_path / "tokenizer.bin", R.small_vocab(WIDE.vocab_size))
    host = run_greedy([engine_path()], model, tmp_path, "host")
    ids, logits, _ = run_greedy(["qemu-riscv64", "-cpu", CPU_V128_CLOBBER, str(rvv), "-j", "3"], model, tmp_path, "v")
    assert len(set(ids)) > 10, f"degenerate output {ids}"
    assert ids == host[0], f"GS {group_size}, -j 3 at VLEN 128 differs from the host build:\n{ids}\n{host[0]}"
    ref = R.Transformer(R.read_checkpoint(model).weights)
    assert_logits_close(logits, ref.forward(ids[: len(logits)]), True, f"GS {group_size} -j 3 VLEN 128")
