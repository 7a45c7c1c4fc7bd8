"""The runtime memory guard: readings of MemAvailable and PSI in, one step down (or up) at a time out.

Levels, each including the actions of the ones before it (the daemon applies them; this module only decides):

    OK               the plan as made (robot.memory.plan.MemoryPlan)
    UNLOAD_ASR       release the recogniser's model while the engine generates; load it again only to listen
    SHORTEN_CONTEXT  restart the engine, before the next story, with plan.short_context_tokens
    CANCEL           cancel the story being generated (end it with a canned bridge); start no new generation
    STOP_ENGINE      stop the engine process (its heap and KV cache are freed); stories are canned
    CANNED           also unload the recogniser: canned stories on the button, nothing else loaded

A breach (available memory below `low`, or PSI "some"/"full" avg10 above its high mark) that lasts
breach_dwell_s steps down one level; a breach that goes on steps down again after another dwell. The guard steps
up one level only after calm (available above low + hysteresis + what the next level up loads again, and PSI
below its low marks) has lasted recover_dwell_s. Between the two marks nothing changes, so a reading that
wobbles around a threshold never flaps. Where /proc/pressure/memory is absent (Raspberry Pi kernels), the guard
runs on available memory alone and says so. Inside a memory cgroup, "available" is the smaller of MemAvailable
and the cgroup's room (limit - usage + inactive file pages).

The daemon's side, all of it:

    plan = memplan.plan_from_config(config)
    guard = PressureGuard(thresholds_for(plan, config.memory))
    task = asyncio.create_task(watch(guard, on_change, config.memory.guard_interval_s))

    def on_change(event: GuardEvent) -> None:       # called on the event loop, once per transition
        log.warning("%s", event)                    # the numbers are in str(event)
        robot.post(MemoryPressureChanged(event.level, str(event)))   # the state owner applies event.level

`guard.level` is the current level; `guard.status()` is one line for STATUS and `storybot doctor`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robot.memory.plan import AsrPolicy, MemoryCgroup, MemoryPlan, MiB, find_memory_cgroup, parse_meminfo

log = logging.getLogger(__name__)

PSI_PATH = "/proc/pressure/memory"
MEMINFO_PATH = "/proc/meminfo"
MIN_HYSTERESIS_BYTES = 4 * MiB


class Level(enum.IntEnum):
    OK = 0
    UNLOAD_ASR = 1
    SHORTEN_CONTEXT = 2
    CANCEL = 3
    STOP_ENGINE = 4
    CANNED = 5


@dataclass(frozen=True)
class PressureReading:
    """One look at memory. Percentages are PSI's share of the last 10 s in which tasks waited for memory."""

    at_s: float  # time.monotonic() seconds
    available_bytes: int  # MemAvailable, or the memory cgroup's room when that is smaller
    some_avg10: float | None  # PSI "some" avg10 (%); None where PSI is absent
    full_avg10: float | None  # PSI "full" avg10 (%); None where PSI is absent
    source: str = ""  # what was read, e.g. "MemAvailable + PSI" or "cgroup v1 room + PSI"

    @property
    def has_psi(self) -> bool:
        return self.some_avg10 is not None

    def describe(self) -> str:
        text = f"available {self.available_bytes / MiB:.1f} MiB"
        if self.has_psi:
            return f"{text}, PSI some {self.some_avg10:.2f}% full {self.full_avg10 or 0.0:.2f}%"
        return f"{text}, no PSI"


@dataclass(frozen=True)
class GuardThresholds:
    """When to step down and up. Sizes in bytes, PSI in percent, times in seconds."""

    low_available_bytes: int
    hysteresis_bytes: int = MIN_HYSTERESIS_BYTES
    # restore_bytes[L]: what stepping up from level L to L-1 loads again (index 0 unused)
    restore_bytes: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    psi_some_high: float = 20.0
    psi_some_low: float = 5.0
    psi_full_high: float = 5.0
    psi_full_low: float = 1.0
    breach_dwell_s: float = 3.0
    recover_dwell_s: float = 30.0

    def __post_init__(self) -> None:
        if len(self.restore_bytes) != len(Level):
            raise ValueError(f"restore_bytes needs {len(Level)} entries, got {len(self.restore_bytes)}")
        if self.psi_some_low > self.psi_some_high or self.psi_full_low > self.psi_full_high:
            raise ValueError(
                f"PSI low marks must not exceed the high ones: some {self.psi_some_low}/{self.psi_some_high}, "
                f"full {self.psi_full_low}/{self.psi_full_high}"
            )
        if self.low_available_bytes < 0 or self.hysteresis_bytes < 0:
            raise ValueError("memory thresholds must not be negative")

    def recover_available_bytes(self, level: Level) -> int:
        """Available memory needed to step up from level: low + hysteresis + what the level above reloads."""
        return self.low_available_bytes + self.hysteresis_bytes + self.restore_bytes[level]


def thresholds_for(plan: MemoryPlan, memory_config) -> GuardThresholds:
    """The guard's thresholds from the plan's numbers and the [memory] section (0 = derived from the plan)."""
    c = memory_config
    low = c.guard_low_mb * MiB or plan.reserve_bytes
    hysteresis = c.guard_hysteresis_mb * MiB or max(MIN_HYSTERESIS_BYTES, plan.reserve_bytes // 2)
    short_kv = plan.kv_cache_bytes * plan.short_context_tokens // max(plan.context_tokens, 1)
    restore = (
        0,
        plan.asr_bytes if plan.asr_policy is AsrPolicy.RESIDENT else 0,  # UNLOAD_ASR -> OK
        plan.kv_cache_bytes - short_kv,  # SHORTEN_CONTEXT -> UNLOAD_ASR: the longer KV cache
        0,  # CANCEL -> SHORTEN_CONTEXT: generation starts again in the engine already loaded
        # STOP_ENGINE -> CANCEL: the engine's heap; mapped weights are page cache, read ones are copied in again
        plan.engine_overhead_bytes + short_kv + (plan.weights_bytes if plan.weights_load == "read" else 0),
        plan.asr_bytes if plan.asr_policy is not AsrPolicy.NONE else 0,  # CANNED -> STOP_ENGINE: ASR to listen
    )
    return GuardThresholds(
        low_available_bytes=low,
        hysteresis_bytes=hysteresis,
        restore_bytes=restore,
        psi_some_high=c.psi_some_high,
        psi_some_low=c.psi_some_low,
        psi_full_high=c.psi_full_high,
        psi_full_low=c.psi_full_low,
        breach_dwell_s=c.breach_dwell_s,
        recover_dwell_s=c.recover_dwell_s,
    )


@dataclass(frozen=True)
class GuardEvent:
    """One transition of the guard, with the numbers that caused it."""

    at_s: float
    previous: Level
    level: Level
    reading: PressureReading
    reason: str

    @property
    def is_step_down(self) -> bool:
        return self.level > self.previous

    def __str__(self) -> str:
        return f"memory guard {self.previous.name} -> {self.level.name}: {self.reason}"


class PressureGuard:
    """A state machine over readings: no clock, no I/O; feed it readings with update()."""

    def __init__(self, thresholds: GuardThresholds) -> None:
        self.thresholds = thresholds
        self.level = Level.OK
        self.last_reading: PressureReading | None = None
        self._breach_since: float | None = None
        self._calm_since: float | None = None

    def update(self, reading: PressureReading) -> GuardEvent | None:
        """Take one reading; return the transition it caused, if any (at most one level per reading)."""
        self.last_reading = reading
        breach = self._breach(reading)
        calm = self._calm(reading)
        if breach:
            self._calm_since = None
            self._breach_since = reading.at_s if self._breach_since is None else self._breach_since
            lasted = reading.at_s - self._breach_since
            if lasted >= self.thresholds.breach_dwell_s and self.level < Level.CANNED:
                self._breach_since = reading.at_s  # the next step needs a whole dwell of its own
                return self._move(reading, Level(self.level + 1), f"{breach} for {lasted:.1f} s")
        elif calm and self.level > Level.OK:
            self._breach_since = None
            self._calm_since = reading.at_s if self._calm_since is None else self._calm_since
            lasted = reading.at_s - self._calm_since
            if lasted >= self.thresholds.recover_dwell_s:
                self._calm_since = reading.at_s
                return self._move(reading, Level(self.level - 1), f"{calm} for {lasted:.1f} s")
        else:
            self._breach_since = self._calm_since = None
        return None

    def _breach(self, r: PressureReading) -> str:
        t = self.thresholds
        why = []
        if r.available_bytes < t.low_available_bytes:
            why.append(f"available {_mib(r.available_bytes)} < {_mib(t.low_available_bytes)}")
        if r.some_avg10 is not None and r.some_avg10 > t.psi_some_high:
            why.append(f"PSI some {r.some_avg10:.2f}% > {t.psi_some_high:g}%")
        if r.full_avg10 is not None and r.full_avg10 > t.psi_full_high:
            why.append(f"PSI full {r.full_avg10:.2f}% > {t.psi_full_high:g}%")
        return " and ".join(why)

    def _calm(self, r: PressureReading) -> str:
        t = self.thresholds
        need = t.recover_available_bytes(self.level)
        if r.available_bytes < need:
            return ""
        if r.some_avg10 is not None and (r.some_avg10 > t.psi_some_low or (r.full_avg10 or 0.0) > t.psi_full_low):
            return ""
        text = f"available {_mib(r.available_bytes)} >= {_mib(need)}"
        if r.has_psi:
            return f"{text} and PSI at or below {t.psi_some_low:g}%/{t.psi_full_low:g}%"
        return f"{text} (no PSI here: MemAvailable only)"

    def _move(self, reading: PressureReading, level: Level, why: str) -> GuardEvent:
        event = GuardEvent(reading.at_s, self.level, level, reading, f"{why} ({reading.describe()})")
        self.level = level
        return event

    def status(self) -> str:
        """One line for STATUS: the level and the last reading."""
        if self.last_reading is None:
            return f"memory {self.level.name}, no reading yet"
        note = "" if self.last_reading.has_psi else " (PSI absent: MemAvailable only)"
        return f"memory {self.level.name}: {self.last_reading.describe()}{note}"


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


# ----------------------------------------------------------------------------------------------------------------
# Readings from the real /proc files


def parse_psi(text: str) -> tuple[float, float]:
    """(some avg10, full avg10) from /proc/pressure/memory; full is 0 on kernels that print only "some"."""
    values = {"some": 0.0, "full": 0.0}
    for line in text.splitlines():
        kind, *pairs = line.split()
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key == "avg10" and kind in values:
                values[kind] = float(value)
    return values["some"], values["full"]


class _Auto(enum.Enum):
    AUTO = "auto"  # find our own memory cgroup


_AUTO = _Auto.AUTO


class MemorySampler:
    """Reads MemAvailable, PSI and our memory cgroup's room. Paths are injectable for tests."""

    def __init__(
        self,
        meminfo_path: str = MEMINFO_PATH,
        psi_path: str = PSI_PATH,
        cgroup: MemoryCgroup | None | _Auto = _AUTO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._meminfo_path = Path(meminfo_path)
        self._psi_path = Path(psi_path)
        self.cgroup = _own_cgroup() if cgroup is _Auto.AUTO else cgroup
        self._limit = self.cgroup.limit_bytes() if self.cgroup is not None else None
        self._clock = clock
        self.psi_problem = ""  # why PSI is not read, once found out

    def read(self) -> PressureReading:
        """One reading; OSError only when /proc/meminfo itself cannot be read."""
        info = parse_meminfo(self._meminfo_path.read_text())
        available = info.get("MemAvailable", info.get("MemFree", 0))
        source = "MemAvailable"
        cgroup = self.cgroup
        if self._limit is not None and cgroup is not None:  # a limit is read only from a cgroup
            try:
                room = self._limit - cgroup.used_bytes()
            except OSError:
                room = available
            if room < available:
                available, source = max(room, 0), f"cgroup v{cgroup.version} room"
        some = full = None
        if not self.psi_problem:
            try:
                some, full = parse_psi(self._psi_path.read_text())
            except OSError as e:  # absent, or EOPNOTSUPP when the kernel was booted with psi=0
                self.psi_problem = f"{self._psi_path}: {e.strerror or e}"
                log.warning("memory guard: no PSI (%s); watching MemAvailable alone", self.psi_problem)
            except ValueError as e:
                self.psi_problem = f"{self._psi_path}: unreadable ({e})"
                log.warning("memory guard: no PSI (%s); watching MemAvailable alone", self.psi_problem)
        source += " + PSI" if some is not None else " only (no PSI)"
        return PressureReading(self._clock(), available, some, full, source)


def _own_cgroup() -> MemoryCgroup | None:
    try:
        return find_memory_cgroup(Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None


async def watch(
    guard: PressureGuard,
    on_change: Callable[[GuardEvent], None],
    interval_s: float = 1.0,
    sampler: MemorySampler | None = None,
) -> None:
    """Read memory every interval_s and call on_change(event) on each transition; runs until cancelled."""
    sampler = sampler or MemorySampler()
    is_failing = False
    while True:
        try:
            reading = sampler.read()
        except (OSError, ValueError) as e:
            if not is_failing:
                log.error("memory guard: cannot read memory figures (%s); retrying", e)
            is_failing = True
        else:
            is_failing = False
            event = guard.update(reading)
            if event is not None:
                try:
                    on_change(event)
                except Exception:  # noqa: BLE001 - the watcher outlives a faulty callback
                    log.exception("memory guard: on_change failed for %s", event)
        await asyncio.sleep(interval_s)
