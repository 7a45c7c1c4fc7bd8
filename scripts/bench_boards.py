#!/usr/bin/env python3
"""Each board profile (assets/boards/*.toml) on this machine: the memory plan, a story told inside a memory
cgroup v1 of the board's room and a CPU quota that stands in for its core, the peak RSS of each process, whether
it fits, tok/s, the daemon's idle CPU, and RISC-V instructions per token; a PNG plot.

    .venv/bin/python scripts/bench_boards.py [--boards k230-512m,milkv-duo-256m] [--png boards.png] [--no-qemu]

How the board is approximated (root is needed for the cgroups; without them the plan and the host figures only):
- memory: a cgroup v1 child of ours with memory.limit_in_bytes = the plan's room (the board's MemAvailable less
  the reserve: what the plan says storybot's processes fit in), swap off for it; the model file is dropped from the
  page cache first, so its pages count. The daemon plans with the board's own numbers (memory.board) and its
  profile's [plan]; the peak anonymous memory of each process in the cgroup is printed beside the plan's figures.
- CPU: a cgroup v1 `cpu` child with cpu.cfs_quota_us / cpu.cfs_period_us = the board's [cpu] host_core_fraction
  x its cores: the share of one of this host's cores that does per second what the board's core does, estimated
  from the board's clock and instructions per cycle (documented per profile) against the RISC-V instruction
  count per token of storybot-llama2c (qemu + the icount plugin) and this host's own speed on the same model.
- the model: a random-weight int8 checkpoint of the planned shape (speed and memory are a matter of shapes).

Instructions per token come from qemu-riscv64 with the QEMU plugin ../shared/tools/qemu_icount.c (found beside
the checkout), the difference between runs of 12 and 4 tokens, for the scalar (rv64gc) and RVV 1.0 builds that
`make -C engines/llama2c riscv-scalar riscv-rvv` writes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.backends import llama2c  # noqa: E402
from robot.memory import plan as mp  # noqa: E402
from robot.memory.measure import MeasureError, daemon_until, drop_from_page_cache  # noqa: E402
from robot.memory.rooms import (  # noqa: E402
    CPU_ROOT,
    MEMORY_ROOT,
    make_cpu_room,
    make_memory_room,
    oom_kills,
    remove_cgroup,
)

MiB = mp.MiB
BUILD = ROOT / "engines" / "llama2c" / "build"
HOST_BIN = Path(sys.executable).with_name("storybot-llama2c")
STORYBOT = str(Path(sys.executable).with_name("storybot"))
PLUGIN_SRC = ROOT.parent / "shared" / "tools" / "qemu_icount.c"
IDLE_S = 30.0


@dataclass
class BoardRun:
    name: str
    plan: mp.MemoryPlan | None
    refusal: str = ""
    cpu_fraction: float = 0.0
    tok_s: float | None = None
    first_token_s: float | None = None
    daemon_peak_mib: float | None = None
    engine_peak_mib: float | None = None
    tts_peak_mib: float | None = None
    parts_anon_mib: dict[str, float] = field(default_factory=dict)  # peak RssAnon of each program in the cgroup
    cgroup_peak_mib: float | None = None
    oom_kills: int | None = None
    outcome: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool | None:
        if self.plan is None:
            return False
        if self.oom_kills is None:
            return None
        return self.oom_kills == 0 and self.outcome == "finished"


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints of the planned shapes

SHAPES = {
    llama2c.SMOLLM2_135M.name: ("SmolLM2-135M", llama2c.SMOLLM2_135M_CONFIG, 32),
    **{llama2c.stories_shape(n).name: (n, llama2c.STORIES[n], None) for n in llama2c.STORIES},
}


def checkpoint_for(cache: Path, model_name: str) -> tuple[Path, Path]:
    from engines import llama2c_ref as ref

    if model_name == llama2c.SMOLLM2_135M_Q4.name:
        return q4_checkpoint(cache), Path("")  # a v3 file carries its tokenizer
    label, c, group = SHAPES[model_name]
    model, tok = cache / f"{label}.bin", cache / f"{label}-tokenizer.bin"
    if not model.exists():
        config = ref.Config(c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len)
        part = model.with_suffix(".part")
        ref.write_checkpoint(part, ref.random_weights(config, seed=1), version=2, group_size=group)
        ref.write_tokenizer(tok, ref.random_tokenizer(config.vocab_size, 1))
        part.rename(model)
    return model, tok


def q4_checkpoint(cache: Path) -> Path:
    """The 4-bit format has no random-weight writer of its own shape here: the shipped Q4_1 GGUF converted with
    --weights q4 (the real model: its blocks copied exactly), kept in the cache."""
    from engines import convert_gguf
    from engines.models import default_gguf_source

    out = cache / "smollm2-135m-instruct-q4.v3.bin"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        convert_gguf.convert(default_gguf_source(), out, weights="q4")
    return out


# ----------------------------------------------------------------------------------------------------------------
# cgroups


# ----------------------------------------------------------------------------------------------------------------
# Speed: host tok/s, RISC-V instructions per token, the quota


def host_tok_s(model: Path, tok: Path, steps: int = 64) -> float:
    argv = [str(HOST_BIN), str(model), "-z", str(tok), "-t", "0", "-n", str(steps), "-j", "1", "--prompt-ids", "1"]
    best = 0.0
    for _ in range(3):
        done = subprocess.run(argv, capture_output=True, timeout=600)
        m = re.search(rb"achieved tok/s: ([0-9.]+)", done.stderr)
        if m:
            best = max(best, float(m.group(1)))
    return best


def build_plugin(work: Path) -> Path | None:
    if not PLUGIN_SRC.exists() or not shutil.which("gcc"):
        return None
    lib = work / "libicount.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", str(PLUGIN_SRC), "-o", str(lib)], check=True)
    return lib


def insns_per_token(plugin: Path, cpu: str, binary: Path, model: Path, tok: Path) -> float:
    def count(steps: int) -> int:
        argv = ["qemu-riscv64", "-cpu", cpu, "-plugin", str(plugin), "-d", "plugin", str(binary), str(model),
                "-z", str(tok), "-t", "0", "--prompt-ids", "1", "-n", str(steps)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, check=True, timeout=3600)
        m = re.search(rb"insns: (\d+)", done.stderr)
        if not m:
            raise RuntimeError(f"the plugin reported no count: {done.stderr[-300:]!r}")
        return int(m.group(1))

    return (count(12) - count(4)) / 8


def riscv_counts(model: Path, tok: Path) -> dict[str, float]:
    builds = {
        "scalar rv64gc": (BUILD / "storybot-llama2c-rv64gc", "rv64"),
        "RVV 1.0 (VLEN 128)": (BUILD / "storybot-llama2c-rvv", "rv64,v=true,vlen=128,vext_spec=v1.0"),
    }
    counts: dict[str, float] = {}
    if not shutil.which("qemu-riscv64"):
        print("qemu-riscv64 not found: no instruction counts", file=sys.stderr)
        return counts
    with tempfile.TemporaryDirectory() as work:
        plugin = build_plugin(Path(work))
        if plugin is None:
            print(f"no counting plugin ({PLUGIN_SRC} or gcc missing)", file=sys.stderr)
            return counts
        for label, (binary, cpu) in builds.items():
            if not binary.exists():
                print(f"{binary} is missing (make -C engines/llama2c riscv-scalar riscv-rvv)", file=sys.stderr)
                continue
            counts[label] = insns_per_token(plugin, cpu, binary, model, tok)
    print("XTheadVector: no emulator here runs it (QEMU 10's thead-c906 model lacks the vector unit)", file=sys.stderr)
    return counts


def board_cpu(name: str) -> dict:
    import tomllib

    path = mp.boards_dir() / f"{name}.toml"
    with open(path, "rb") as f:
        return tomllib.load(f).get("cpu", {})


def cpu_fraction(cpu: dict, insns_per_token: float | None, host_tok_s_15m: float) -> tuple[float, str]:
    """Share of one host core that does per second what one of the board's cores does."""
    if cpu.get("host_core_fraction"):
        return float(cpu["host_core_fraction"]), "the profile's host_core_fraction"
    if not insns_per_token or not host_tok_s_15m or "mhz" not in cpu:
        return 1.0, "no [cpu] figures: a whole host core"
    board_tok_s = cpu["mhz"] * 1e6 * cpu.get("ipc", 1.0) / insns_per_token
    fraction = min(1.0, board_tok_s / host_tok_s_15m)
    how = (
        f"{cpu['mhz']} MHz x IPC {cpu.get('ipc', 1.0)} / {insns_per_token / 1e6:.1f} M instructions per token = "
        f"{board_tok_s:.1f} tok/s on stories15M, / this host's {host_tok_s_15m:.0f} tok/s"
    )
    return fraction, how


# ----------------------------------------------------------------------------------------------------------------
# One board


def run_board(name: str, cache: Path, fractions: dict[str, tuple[float, str]], can_cgroup: bool) -> BoardRun:
    board = mp.load_board(name)
    settings = mp.board_settings(board)
    try:
        plan = mp.plan_memory(mp.machine_for_board(board), mp.reference_candidates(), settings)
    except mp.PlanRefused as e:
        return BoardRun(name, None, refusal=str(e))
    fraction, how = fractions.get(name, (1.0, "a whole host core"))
    run = BoardRun(name, plan, cpu_fraction=fraction, notes=[f"CPU: {how}"])
    if not can_cgroup:
        run.notes.append("no cgroups here (root and the v1 memory/cpu controllers are needed): plan only")
        return run
    model, tok = checkpoint_for(cache, plan.model_name)
    for path in (model, *([tok] if tok.name else [])):
        drop_from_page_cache(path)
    room = plan.room_bytes  # what the plan says storybot's processes fit in (the board's reserve stays outside)
    cg_name = f"storybot-bench-{name}-{os.getpid()}"
    mem = make_memory_room(cg_name, room)
    cpu = make_cpu_room(cg_name, fraction * board.cores)
    try:
        with tempfile.TemporaryDirectory(prefix="storybot-bench-") as tmp:
            timings = Path(tmp) / "t.json"
            sets = [
                "engine.backend='llama2c'", f"engine.model='{model}'", f"engine.tokenizer='{tok if tok.name else ''}'",
                f"engine.context_tokens={plan.context_tokens}", f"engine.threads={plan.threads}",
                "engine.max_tokens=48", "engine.seed=3", f"tts.backend='{settings.tts_name}'",
                f"asr.backend='{settings.asr_name}'", f"memory.min_context_tokens={settings.min_context_tokens}",
                "tts.voice='kal'" if settings.tts_name == "flite" else "tts.voice=''",
                # the board's own numbers plan (as on the board); the cgroup holds the processes to its room
                f"memory.board='{name}'", "memory.breach_dwell_s=600",
                "engine.load_timeout_s=600", "engine.first_token_timeout_s=300",
                "engine.token_timeout_s=120",
                f"engine.batched_prefill={'true' if settings.batched_prefill else 'false'}",
                # the cgroup is the room without the board's reserve beside it: mapped weights are clean pages the
                # kernel can take back in it (read ones, anonymous with no swap, leave it nothing)
                "engine.load='mmap'",
            ]  # fmt: skip
            # spoken through the speaker as on the board (aplay for a daemon without microphone): a WAV file
            # would be written through numpy
            argv = [STORYBOT, "tell", "a dragon who loves tea", "--timings-json", str(timings)]
            argv += [a for s in sets for a in ("--set", s)]
            # not exec: the daemon is forked by the small shell, so its ru_maxrss starts from the shell's, not
            # from this process's (Linux carries the forking process's high-water mark over exec)
            shell = f'echo $$ > {mem}/cgroup.procs && echo $$ > {cpu}/cgroup.procs && "$@"'
            env = {**os.environ, "STORYBOT_STATE_DIR": tmp}
            watcher = PartWatcher(mem)
            done = subprocess.run(["sh", "-c", shell, "sh", *argv], capture_output=True, text=True, env=env,
                                  timeout=1800)  # fmt: skip
            run.parts_anon_mib = watcher.stop()
            if timings.exists():
                record = json.loads(timings.read_text())
                result = record["results"][0] if record["results"] else {}
                run.outcome = result.get("outcome", "none")
                run.tok_s = result.get("tokens_per_s")
                run.first_token_s = result.get("first_token_s")
                run.daemon_peak_mib = record["daemon_peak_rss_kb"] / 1024
                if record.get("engine_peak_rss_kb"):
                    run.engine_peak_mib = record["engine_peak_rss_kb"] / 1024
            else:
                run.outcome = f"exit {done.returncode}: {done.stderr[-300:]}"
        run.cgroup_peak_mib = int((mem / "memory.max_usage_in_bytes").read_text()) / MiB
        run.oom_kills = oom_kills(mem)
        tts_comm = "flite" if settings.tts_name == "flite" else "espeak-ng"
        run.tts_peak_mib = run.parts_anon_mib.get(tts_comm)
        run.notes.append(
            "told from text (storybot tell): the recognizer and microphone are not exercised here; "
            "tests/test_memory.py runs the voice rounds inside such cgroups"
        )
    finally:
        remove_cgroup(mem)
        remove_cgroup(cpu)
    return run


class PartWatcher(threading.Thread):
    """The peak anonymous memory (RssAnon) of each program in a cgroup, by name, polled every 5 ms while it runs
    (the planner's figures are of the same kind: doctor --measure)."""

    def __init__(self, cgroup: Path) -> None:
        super().__init__(daemon=True)
        self.cgroup = cgroup
        self.peaks_kib: dict[str, int] = {}
        self._stopped = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                pids = (self.cgroup / "cgroup.procs").read_text().split()
            except OSError:
                return
            for pid in pids:
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                anon = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("RssAnon:")), 0)
                name = "daemon" if comm == "storybot" else comm
                self.peaks_kib[name] = max(self.peaks_kib.get(name, 0), anon)
            time.sleep(0.005)

    def stop(self) -> dict[str, float]:
        self._stopped.set()
        self.join(5)
        return {k: v / 1024 for k, v in self.peaks_kib.items() if k != "sh"}


# ----------------------------------------------------------------------------------------------------------------
# The daemon's idle CPU


def idle_cpu_percent(cache: Path, seconds: float = IDLE_S) -> tuple[float, str]:
    """CPU of `storybot run` listening to a quiet room for `seconds`, as a share of one core."""
    model, tok = checkpoint_for(cache, llama2c.stories_shape("stories15M").name)
    sets = [
        "engine.backend='llama2c'",
        f"engine.model='{model}'",
        f"engine.tokenizer='{tok if tok.name else ''}'",
        "memory.board='auto'",
    ]
    with tempfile.TemporaryDirectory(prefix="storybot-bench-") as tmp:
        argv = [STORYBOT, "run", "-v", *[a for s in sets for a in ("--set", s)]]
        env = {**os.environ, "STORYBOT_STATE_DIR": tmp}
        try:
            with daemon_until(argv, env, "listening on", "never listened") as (proc, _):
                time.sleep(3.0)  # past the start-up
                before = _cpu_s(proc.pid)
                time.sleep(seconds)
                used = _cpu_s(proc.pid) - before
        except MeasureError:
            return float("nan"), "the daemon did not start listening (no input device?)"
    return 100.0 * used / seconds, f"{used:.2f} s of CPU in {seconds:.0f} s (daemon only, engine idle)"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------------------------------
# Report


def print_run(run: BoardRun) -> None:
    print(f"== {run.name}")
    if run.plan is None:
        print(f"   NO PLAN: {run.refusal[:400]}")
        return
    p = run.plan
    print(f"   plan: {p.summary()}")
    print(
        f"   planned: daemon {p.daemon_bytes / MiB:.1f} + microphone {p.microphone_bytes / MiB:.1f} + aplay "
        f"{p.playback_bytes / MiB:.1f} + TTS {p.tts_bytes / MiB:.1f} + ASR "
        f"{(p.asr_bytes if p.is_asr_loaded_while_generating else 0) / MiB:.1f} + engine overhead "
        f"{p.engine_overhead_bytes / MiB:.1f} + weights {p.weights_bytes / MiB:.1f} + KV {p.kv_cache_bytes / MiB:.1f}"
        f" = {p.generating_bytes / MiB:.1f} MiB of room {p.room_bytes / MiB:.1f} MiB"
    )
    if run.oom_kills is not None:
        print(
            f"   measured in a {p.room_bytes / MiB:.0f} MiB cgroup at {run.cpu_fraction:.3f} of a "
            f"host core per board core: story {run.outcome}; daemon peak RSS {run.daemon_peak_mib or 0:.1f} MiB, "
            f"engine {run.engine_peak_mib or 0:.1f} MiB, TTS {run.tts_peak_mib or 0:.1f} MiB; cgroup peak "
            f"{run.cgroup_peak_mib:.1f} MiB; OOM kills {run.oom_kills}; fits: {'yes' if run.fits else 'NO'}"
        )
        if run.parts_anon_mib:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(run.parts_anon_mib.items()))
            print(f"   measured per part in the cgroup (peak RssAnon over the run, MiB; the daemon's includes its "
                  f"start-up, before the engine starts): {parts}; weights {p.weights_bytes / MiB:.1f} (the mapped "
                  "file, charged as page cache)")  # fmt: skip
        if run.tok_s is not None:
            print(f"   tok/s {run.tok_s:.1f}, first token {run.first_token_s or 0:.2f} s")
    for note in run.notes:
        print(f"   - {note}")


def plot(runs: list[BoardRun], png: Path, counts: dict[str, float], idle: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_speed) = plt.subplots(1, 2, figsize=(13, 5))
    names = [r.name for r in runs]
    parts = [
        ("daemon", lambda p: p.daemon_bytes),
        ("microphone", lambda p: p.microphone_bytes),
        ("aplay", lambda p: p.playback_bytes),
        ("TTS", lambda p: p.tts_bytes),
        ("ASR", lambda p: p.asr_bytes if p.is_asr_loaded_while_generating else 0),
        ("engine overhead", lambda p: p.engine_overhead_bytes),
        ("weights", lambda p: p.weights_bytes),
        ("KV cache", lambda p: p.kv_cache_bytes),
    ]
    bottoms = [0.0] * len(runs)
    for label, part in parts:
        heights = [part(r.plan) / MiB if r.plan else 0.0 for r in runs]
        ax_mem.bar(names, heights, bottom=bottoms, label=label)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    rooms = [mp.load_board(r.name) for r in runs]
    ax_mem.scatter(names, [b.mem_available_mb for b in rooms], marker="_", s=900, color="k", label="MemAvailable")
    measured = [(r.name, r.cgroup_peak_mib) for r in runs if r.cgroup_peak_mib is not None]
    if measured:
        ax_mem.scatter(*zip(*measured, strict=True), marker="x", color="r", label="measured cgroup peak")
    ax_mem.set_ylim(0, 900)  # the small boards are the point; larger MemAvailable marks are off the top
    ax_mem.set_ylabel("MiB (planned, while generating)")
    ax_mem.set_title("Memory plan per board")
    ax_mem.tick_params(axis="x", rotation=30)
    ax_mem.legend(fontsize=7)
    speeds = [r.tok_s or 0 for r in runs]
    ax_speed.bar(names, speeds, color="tab:green")
    ax_speed.set_ylabel("tok/s under the board's CPU quota")
    text = f"daemon idle CPU {idle:.2f}% of a core"
    for label, n in counts.items():
        text += f"\n{label}: {n / 1e6:.1f} M insns/token (stories15M int8)"
    ax_speed.set_title("Speed (random weights of the planned shape)")
    ax_speed.text(0.02, 0.97, text, transform=ax_speed.transAxes, va="top", fontsize=8)
    ax_speed.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boards", default=",".join(mp.board_names()), help="comma-separated board profiles")
    parser.add_argument("--png", type=Path, default=Path("bench-boards.png"))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "storybot-bench-boards")
    parser.add_argument("--no-qemu", action="store_true", help="skip the RISC-V instruction counts")
    parser.add_argument("--idle-s", type=float, default=IDLE_S, help="how long the idle daemon is watched")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    boards = [b for b in args.boards.split(",") if b]
    can_cgroup = (
        os.geteuid() == 0 and (MEMORY_ROOT / "cgroup.procs").exists() and (CPU_ROOT / "cpu.cfs_quota_us").exists()
    )
    s15, s15_tok = checkpoint_for(args.cache, llama2c.stories_shape("stories15M").name)
    host15 = host_tok_s(s15, s15_tok)
    print(f"this host, one core: stories15M int8 {host15:.0f} tok/s (storybot-llama2c, best of 3)")
    counts = {} if args.no_qemu else riscv_counts(s15, s15_tok)
    for label, n in counts.items():
        print(f"RISC-V {label}: {n / 1e6:.1f} M instructions per token (stories15M int8, qemu icount)")
    rvv = counts.get("RVV 1.0 (VLEN 128)")
    scalar = counts.get("scalar rv64gc")
    fractions = {}
    for name in boards:
        cpu = board_cpu(name)
        insns = rvv if cpu.get("vector") == "rvv1.0" else scalar
        fractions[name] = cpu_fraction(cpu, insns, host15)
    idle, idle_how = idle_cpu_percent(args.cache, args.idle_s)
    print(f"daemon idle CPU: {idle:.2f}% of one core ({idle_how})")
    runs = []
    for name in boards:
        run = run_board(name, args.cache, fractions, can_cgroup)
        print_run(run)
        runs.append(run)
    try:
        plot(runs, args.png, counts, idle)
        print(f"plot: {args.png}")
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
