#!/usr/bin/env python3
"""Native llama2.c engine benchmark: speed, memory and RISC-V instruction counts of storybot-llama2c.

On random-weight checkpoints of the stories15M and stories110M shapes (written once by engines.llama2c_ref into
a cache directory), it prints:

  tok/s      single-thread generation speed, fp32 (v0) and int8 (v2), greedy, best and median of --runs
  RSS        peak resident set size of the child (os.wait4), MB
  insns/tok  guest instructions per token under qemu-riscv64 for the rv64gc and RVV builds (VLEN 128 and 256),
             counted by the QEMU plugin ../shared/tools/qemu_icount.c (the team's shared folder beside the
             checkout): the difference between runs of -n 12 and -n 4 divided by 8, so that loading cancels out

--runq PATH (and --run PATH) time a llama2.c runq (run) binary you built yourself on the same files, for a
side-by-side ratio; this script never builds llama2.c.

Usage: .venv/bin/python scripts/bench_llama2c.py [--shapes stories15M,stories110M] [--runs 3] [--runq PATH]
Builds first: make -C engines/llama2c && make -C engines/llama2c riscv-rvv riscv-scalar
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "engines" / "llama2c" / "build"
HOST_BIN = BUILD / "storybot-llama2c"
RVV_BIN = BUILD / "storybot-llama2c-rvv"
RV64GC_BIN = BUILD / "storybot-llama2c-rv64gc"
PLUGIN_SRC = ROOT.parent / "shared" / "tools" / "qemu_icount.c"  # the team's shared folder sits beside the checkout
TOK_S = re.compile(rb"achieved tok/s: ([0-9.]+)")
STEPS = {"stories15M": 256, "stories110M": 64}  # generated positions per timed run


@dataclass(frozen=True)
class Timing:
    best_tok_s: float
    median_tok_s: float
    peak_rss_mb: float


def ensure_checkpoint(cache: Path, shape: str, version: int) -> tuple[Path, Path]:
    """A random checkpoint of `shape` and its tokenizer, written once by the NumPy reference."""
    cache.mkdir(parents=True, exist_ok=True)
    model = cache / f"{shape}-v{version}.bin"
    tokenizer = cache / f"{shape}-tokenizer.bin"
    if not model.exists() or not tokenizer.exists():
        tmp = model.with_suffix(".part")
        cmd = [
            sys.executable,
            "-m",
            "engines.llama2c_ref",
            "write",
            "--shape",
            shape,
            "--version",
            str(version),
            "--seed",
            "1",
            str(tmp),
            "--tokenizer",
            str(tokenizer),
        ]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        tmp.rename(model)
    return model, tokenizer


def run_once(argv: list[str]) -> tuple[bytes, float]:
    """Runs argv; returns its stderr and its peak RSS in MB (from the child's own rusage)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {stderr.decode(errors='replace')[-300:]}")
    return stderr, usage.ru_maxrss / 1024.0


def time_binaries(argvs: list[list[str]], runs: int) -> list[Timing]:
    """Times each command `runs` times, alternating between them so that load from other processes on a
    shared machine falls on all of them alike."""
    speeds: list[list[float]] = [[] for _ in argvs]
    rss = [0.0 for _ in argvs]
    for _ in range(runs):
        for i, argv in enumerate(argvs):
            stderr, peak = run_once(argv)
            m = TOK_S.search(stderr)
            if not m:
                raise RuntimeError(f"no 'achieved tok/s' from {argv[0]}")
            speeds[i].append(float(m.group(1)))
            rss[i] = max(rss[i], peak)
    return [Timing(max(s), statistics.median(s), r) for s, r in zip(speeds, rss, strict=True)]


def build_plugin(workdir: Path) -> Path | None:
    if not PLUGIN_SRC.exists() or not shutil.which("gcc"):
        return None
    lib = workdir / "libicount.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", str(PLUGIN_SRC), "-o", str(lib)], check=True)
    return lib


def guest_instructions(plugin: Path, cpu: str, binary: Path, model: Path, tokenizer: Path, steps: int) -> int:
    argv = [
        "qemu-riscv64",
        "-cpu",
        cpu,
        "-plugin",
        str(plugin),
        "-d",
        "plugin",
        str(binary),
        str(model),
        "-z",
        str(tokenizer),
        "-t",
        "0",
        "--prompt-ids",
        "1",
        "-n",
        str(steps),
    ]
    proc = subprocess.run(argv, capture_output=True, check=True, timeout=1800)
    m = re.search(rb"insns: (\d+)", proc.stderr)
    if not m:
        raise RuntimeError(f"the plugin reported no count: {proc.stderr[-300:]!r}")
    return int(m.group(1))


def per_token(plugin: Path, cpu: str, binary: Path, model: Path, tokenizer: Path) -> float:
    short = guest_instructions(plugin, cpu, binary, model, tokenizer, 4)
    long = guest_instructions(plugin, cpu, binary, model, tokenizer, 12)
    return (long - short) / 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="stories15M,stories110M", help="comma-separated model shapes")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per binary and file (default 5)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "storybot-bench-llama2c",
        help="where the random checkpoints are kept between runs",
    )
    parser.add_argument("--runq", type=Path, help="a llama2.c runq binary to time on the int8 files")
    parser.add_argument("--run", type=Path, help="a llama2.c run binary to time on the fp32 files")
    parser.add_argument("--no-qemu", action="store_true", help="skip the RISC-V instruction counts")
    args = parser.parse_args()
    if not HOST_BIN.exists():
        print(f"{HOST_BIN} is missing: make -C engines/llama2c", file=sys.stderr)
        return 2
    shapes = [s for s in args.shapes.split(",") if s]

    print(f"{'model':<24} {'binary':<22} {'best tok/s':>10} {'median':>8} {'RSS MB':>7}")
    for shape in shapes:
        steps = STEPS.get(shape, 128)
        for version, kind, other in ((0, "fp32", args.run), (2, "int8", args.runq)):
            model, tokenizer = ensure_checkpoint(args.cache, shape, version)
            common = ["-z", str(tokenizer), "-t", "0", "-n", str(steps)]
            argvs = [[str(HOST_BIN), str(model), *common, "--prompt-ids", "1", "-j", "1"]]
            if other:
                argvs.append([str(other), str(model), *common, "-i", "Once upon a time"])
            timings = time_binaries(argvs, args.runs)
            ours = timings[0]
            label = f"{shape} {kind}"
            print(
                f"{label:<24} {'storybot-llama2c':<22} {ours.best_tok_s:>10.1f} {ours.median_tok_s:>8.1f} "
                f"{ours.peak_rss_mb:>7.1f}"
            )
            if other:
                theirs = timings[1]
                print(
                    f"{label:<24} {other.name:<22} {theirs.best_tok_s:>10.1f} {theirs.median_tok_s:>8.1f} "
                    f"{theirs.peak_rss_mb:>7.1f}   ours/theirs: {ours.best_tok_s / theirs.best_tok_s:.2f}x best, "
                    f"{ours.median_tok_s / theirs.median_tok_s:.2f}x median"
                )

    if args.no_qemu:
        return 0
    if not shutil.which("qemu-riscv64"):
        print("qemu-riscv64 not found: no instruction counts")
        return 0
    with tempfile.TemporaryDirectory() as work:
        plugin = build_plugin(Path(work))
        if plugin is None:
            print(f"cannot build the counting plugin from {PLUGIN_SRC}: no instruction counts")
            return 0
        model, tokenizer = ensure_checkpoint(args.cache, "stories15M", 2)
        print("\nstories15M int8, guest instructions per token (qemu-riscv64, -n 12 minus -n 4, / 8)")
        targets = [
            ("rv64gc (scalar)", "rv64", RV64GC_BIN),
            ("RVV VLEN 128", "rv64,v=true,vlen=128,vext_spec=v1.0", RVV_BIN),
            ("RVV VLEN 256", "rv64,v=true,vlen=256,vext_spec=v1.0", RVV_BIN),
        ]
        for label, cpu, binary in targets:
            if not binary.exists():
                print(f"  {label:<18} {binary.name} not built (make -C engines/llama2c riscv-rvv riscv-scalar)")
                continue
            count = per_token(plugin, cpu, binary, model, tokenizer)
            print(f"  {label:<18} {count / 1e6:8.2f} M")
        # make riscv-thead: QEMU 10's thead-c906 has no XTheadVector, and its static build loads no plugins
        print(f"  {'XTheadVector':<18} not countable here: no emulator runs th.v* (engines/llama2c/README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
