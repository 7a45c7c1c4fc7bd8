"""The memory plan, the board profiles, the pressure guard, and both against the real kernel (/proc, a cgroup)."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from robot import memplan as mp
from robot.config import load_config
from robot.guard import (
    GuardThresholds,
    Level,
    MemorySampler,
    PressureGuard,
    PressureReading,
    parse_psi,
    thresholds_for,
    watch,
)
from tests.conftest import ROOT, need

MiB = mp.MiB
GEMMA = mp.GEMMA3_270M
S15, S42, S110 = (mp.stories_shape(n) for n in ("stories15M", "stories42M", "stories110M"))
REFERENCE = [GEMMA, S110, S42, S15]


def machine(available_mib: float, *, total_mib: float | None = None, swap_mib: int = 0, **kw) -> mp.MachineMemory:
    return mp.MachineMemory(
        source="test",
        total_bytes=int((total_mib or available_mib * 1.2) * MiB),
        available_bytes=int(available_mib * MiB),
        swap_total_bytes=swap_mib * MiB,
        swap_free_bytes=swap_mib * MiB,
        cores=2,
        **kw,
    )


SETTINGS = mp.PlanSettings(reserve_bytes=8 * MiB)


def fixed_needs(shape: mp.ModelShape, s: mp.PlanSettings = SETTINGS) -> int:
    return s.daemon_bytes + s.tts_bytes + shape.engine_overhead_bytes() + shape.file_bytes


# ---------------------------------------------------------------------------------------------------------------
# Model shapes


def test_llama2c_sizes_follow_from_the_shapes_as_published():
    # REFERENCE-engines.md 1.6, confirmed there by writing synthetic files
    assert mp.STORIES["stories15M"].file_bytes(2) == 17_101_696
    assert mp.STORIES["stories42M"].file_bytes(2) == 44_321_024
    assert mp.STORIES["stories110M"].file_bytes(2) == 116_432_128
    assert mp.STORIES["stories15M"].file_bytes(0) == 60_816_028  # the published stories15M.bin
    assert mp.default_group_size(288) == 32 and mp.default_group_size(512) == 64


def write_llama2c_v2(path: Path, c: mp.Llama2cConfig, *, cut: int = 0) -> Path:
    gs = mp.default_group_size(c.dim)
    head = struct.pack("<Ii7iBi", mp.LLAMA2C_MAGIC, 2, *c.__dict__.values(), 1, gs)
    size = c.file_bytes(2)
    path.write_bytes(head + bytes(256 - len(head)) + bytes(size - 256 - cut))
    return path


TINY = mp.Llama2cConfig(dim=64, hidden_dim=192, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=512)


def test_a_llama2c_checkpoint_header_gives_its_shape(tmp_path):
    shape = mp.read_model_shape(str(write_llama2c_v2(tmp_path / "tiny.bin", TINY)))
    assert (shape.backend, shape.layers, shape.kv_dim, shape.max_context_tokens) == ("llama2c", 5, 32, 512)
    assert shape.kv_cache_bytes(512) == 2 * 5 * 512 * 32 * 4  # fp32 K and V


def test_a_truncated_or_foreign_file_is_refused_with_the_reason(tmp_path):
    with pytest.raises(mp.ModelFileError, match="truncated"):
        mp.read_model_shape(str(write_llama2c_v2(tmp_path / "cut.bin", TINY, cut=100)))
    (tmp_path / "junk.bin").write_bytes(b"\xff" * 4096)
    with pytest.raises(mp.ModelFileError, match="not a GGUF file"):
        mp.read_model_shape(str(tmp_path / "junk.bin"))
    with pytest.raises(FileNotFoundError):
        mp.read_model_shape(str(tmp_path / "absent.bin"))


def test_the_real_gguf_header_gives_gemmas_shape(default_model):
    shape = mp.read_model_shape(default_model)
    assert shape.backend == "llama.cpp"
    assert (shape.file_bytes, shape.layers, shape.kv_dim) == (GEMMA.file_bytes, GEMMA.layers, GEMMA.kv_dim)
    # f16 K and V, allocated by llama.cpp in blocks of 256 tokens
    assert shape.kv_cache_bytes(1024) == 2 * 18 * 1024 * 256 * 2
    assert shape.kv_cache_bytes(100) == shape.kv_cache_bytes(256)


# ---------------------------------------------------------------------------------------------------------------
# The planner


def test_weights_that_would_need_swap_are_refused_with_the_numbers():
    m = machine(300, swap_mib=2048)  # 2 GiB of swap would "hold" Gemma; it must not count
    with pytest.raises(mp.PlanRefused) as e:
        mp.plan_memory(m, [GEMMA], SETTINGS)
    text = str(e.value)
    assert "gemma" in text and "swap never holds weights" in text
    assert f"{fixed_needs(GEMMA) / MiB:.1f} MiB > room {(300 - 8):.1f} MiB" in text
    assert any("swap 2048.0 MiB" in r and "not counted" in r for r in e.value.reasons)


def test_the_context_is_shortened_before_a_model_is_refused():
    room = fixed_needs(GEMMA) + GEMMA.kv_cache_bytes(256) + 1 * MiB
    plan = mp.plan_memory(machine((room + 8 * MiB) / MiB), [GEMMA], SETTINGS)
    assert plan.context_tokens == 256 and plan.model_name == GEMMA.name
    assert plan.generating_bytes - (plan.asr_bytes if plan.is_asr_loaded_while_generating else 0) <= room
    shortened = [r for r in plan.reasons if "shortened" in r]
    assert [r.split()[1] for r in shortened] == ["1024", "512"]  # halved step by step, each with its numbers


def test_below_the_context_floor_the_model_is_refused_and_a_smaller_one_chosen():
    room = fixed_needs(S110) + S110.kv_cache_bytes(128) - 1 * MiB  # not even 128 tokens of KV cache fit
    plan = mp.plan_memory(machine((room + 8 * MiB) / MiB), [GEMMA, S110, S42, S15], SETTINGS)
    assert plan.model_name == S42.name
    refusals = [r for r in plan.reasons if "refused" in r]
    assert len(refusals) == 2 and "shortest context 128" in refusals[1]
    assert plan.context_tokens == 1024


def test_the_configured_model_wins_when_it_fits():
    plan = mp.plan_memory(machine(4000), REFERENCE, SETTINGS)
    assert (plan.backend, plan.model_name, plan.context_tokens) == ("llama.cpp", GEMMA.name, 1024)
    assert plan.asr_policy is mp.AsrPolicy.RESIDENT and plan.is_asr_loaded_while_generating


def test_a_model_is_capped_at_its_trained_context():
    plan = mp.plan_memory(machine(4000), [S15], SETTINGS)
    assert plan.context_tokens == 256
    assert any("capped at" in r for r in plan.reasons)


@pytest.mark.parametrize(
    "extra_mib,policy",
    [
        (400, mp.AsrPolicy.RESIDENT),  # room for everything at once
        (100, mp.AsrPolicy.UNLOAD_WHILE_GENERATING),  # the ASR fits beside the idle engine's heap, not the weights
        (1, mp.AsrPolicy.STOP_ENGINE_TO_LISTEN),  # the ASR fits only without the engine
    ],
)
def test_the_asr_stays_loaded_only_when_it_fits_beside_the_engine(extra_mib, policy):
    s = replace(SETTINGS, asr_bytes=300 * MiB)
    generating = fixed_needs(GEMMA, s) + GEMMA.kv_cache_bytes(1024)
    plan = mp.plan_memory(machine((generating + 8 * MiB) / MiB + extra_mib), [GEMMA], s)
    assert plan.asr_policy is policy and plan.context_tokens == 1024


def test_an_asr_that_never_fits_means_no_voice_but_still_a_plan():
    s = replace(SETTINGS, asr_bytes=1000 * MiB)
    plan = mp.plan_memory(machine(400), [S15], s)
    assert plan.asr_policy is mp.AsrPolicy.NONE
    assert any("button" in r for r in plan.reasons)


def test_the_cgroup_limit_bounds_the_room_when_it_is_smaller():
    m = machine(4000, cgroup_limit_bytes=300 * MiB, cgroup_used_bytes=20 * MiB, cgroup="v1 /x")
    room, why = m.room_bytes()
    assert room == 280 * MiB and "memory cgroup limit 300.0 MiB" in why
    with pytest.raises(mp.PlanRefused, match="room 272.0 MiB"):
        mp.plan_memory(m, [GEMMA], SETTINGS)


def test_the_reserve_is_a_share_of_ram_with_a_floor():
    assert mp.reserve_for(machine(40, total_mib=55)) == mp.RESERVE_MIN_BYTES
    assert mp.reserve_for(machine(800, total_mib=1000)) == 50 * MiB
    assert mp.reserve_for(machine(800), 3 * MiB) == 3 * MiB


# ---------------------------------------------------------------------------------------------------------------
# Board profiles


def board_plan(name: str, candidates=REFERENCE, settings: mp.PlanSettings | None = None) -> mp.MemoryPlan:
    board = mp.load_board(name)
    settings = replace(settings or mp.PlanSettings(), threads=board.cores)
    return mp.plan_memory(mp.machine_for_board(board), candidates, settings)


def test_every_board_profile_loads_and_gets_a_plan_that_fits_or_a_reasoned_refusal():
    assert set(mp.board_names()) >= {
        "milkv-duo-64m",
        "milkv-duo-256m",
        "k230-512m",
        "rpi-zero-2w",
        "rpi-4",
        "x86-dev",
    }
    for name in mp.board_names():
        try:
            plan = board_plan(name)
        except mp.PlanRefused as e:
            assert all("refused" in r for r in e.reasons if r.startswith(("gemma", "stories")))
            continue
        assert plan.generating_bytes <= plan.room_bytes, name
        chosen = [c.name for c in REFERENCE].index(plan.model_name)
        for bigger in REFERENCE[:chosen]:  # every better candidate was tried and refused, with its numbers
            assert any(r.startswith(f"{bigger.name} refused") and "MiB" in r for r in plan.reasons), name
        assert plan.threads <= mp.load_board(name).cores


def test_duo_64m_refuses_gemma_with_numbers_and_fits_only_stories15m_on_its_own():
    with pytest.raises(mp.PlanRefused) as e:
        board_plan("milkv-duo-64m")
    gemma = next(r for r in e.value.reasons if r.startswith(GEMMA.name))
    assert "swap never holds weights" in gemma and "weights 241.4 MiB" in gemma
    assert any("alone need" in r for r in e.value.reasons)  # the daemon and TTS alone exceed the board
    # the model and its engine alone fit: what does not is storybot's Python daemon and TTS beside them
    engine_only = mp.PlanSettings(daemon_bytes=0, tts_bytes=0, asr_bytes=0)
    plan = board_plan("milkv-duo-64m", settings=engine_only)
    assert (plan.backend, plan.model_name, plan.context_tokens) == ("llama2c", S15.name, 256)


def test_k230_refuses_gemma_then_takes_the_largest_stories_model_that_fits():
    plan = board_plan("k230-512m")
    assert plan.model_name != GEMMA.name
    assert plan.weights_bytes == max(c.file_bytes for c in REFERENCE[1:] if c.file_bytes <= plan.weights_bytes)
    assert any(r.startswith(f"{GEMMA.name} refused") for r in plan.reasons)


def test_a_1gb_pi4_runs_gemma_with_the_asr_loaded():
    plan = board_plan("rpi-4")
    assert plan.model_name == GEMMA.name and plan.is_asr_loaded_while_generating


def test_the_board_table_prints_every_profile():
    table = mp.board_table()
    for name in mp.board_names():
        assert f"== {name}:" in table
    assert "NO PLAN" in table and "PLAN:" in table


def test_plan_from_config_uses_the_board_and_falls_back_to_a_configured_smaller_model(tmp_path, default_model):
    small = write_llama2c_v2(tmp_path / "small.bin", TINY)
    config = load_config(
        None,
        [
            f"engine.model='{default_model}'",
            f"memory.fallback_models=['{tmp_path / 'missing.bin'}', '{small}']",
            "memory.board=milkv-duo-256m",
        ],
        use_system=False,
    )
    plan = mp.plan_from_config(config)
    assert plan.model_path == str(small) and plan.backend == "llama2c"
    assert any("missing.bin skipped" in r for r in plan.reasons)
    assert any(r.startswith("gemma-3-270m") and "refused" in r for r in plan.reasons)


# ---------------------------------------------------------------------------------------------------------------
# The guard's state machine

LOW = 40 * MiB
T = GuardThresholds(
    low_available_bytes=LOW,
    hysteresis_bytes=10 * MiB,
    restore_bytes=(0, 30 * MiB, 5 * MiB, 0, 50 * MiB, 30 * MiB),
    breach_dwell_s=3.0,
    recover_dwell_s=10.0,
)


def r(at_s: float, available_mib: float, some: float | None = 0.0, full: float | None = 0.0) -> PressureReading:
    return PressureReading(at_s, int(available_mib * MiB), some, full, "test")


def run(guard: PressureGuard, readings) -> list:
    return [e for e in (guard.update(x) for x in readings) if e is not None]


def test_a_sustained_breach_steps_down_one_level_per_dwell_with_its_numbers():
    guard = PressureGuard(T)
    events = run(guard, [r(t, 30) for t in range(0, 10)])
    assert [(e.previous, e.level, e.at_s) for e in events] == [
        (Level.OK, Level.UNLOAD_ASR, 3),
        (Level.UNLOAD_ASR, Level.SHORTEN_CONTEXT, 6),
        (Level.SHORTEN_CONTEXT, Level.CANCEL, 9),
    ]
    assert "available 30.0 MiB < 40.0 MiB for 3.0 s" in str(events[0])


def test_a_reading_wobbling_around_a_threshold_does_not_flap():
    guard = PressureGuard(T)
    wobble = [r(t, 39 if t % 2 else 41) for t in range(0, 120)]  # 1 MiB either side of low, every second
    assert run(guard, wobble) == []
    # stepped down once, then wobbling around the recovery mark (low + hysteresis + ASR reload = 80 MiB)
    guard = PressureGuard(T)
    events = run(guard, [r(t, 30) for t in range(0, 4)])
    events += run(guard, [r(t, 79 if t % 2 else 81) for t in range(4, 200)])
    assert [e.level for e in events] == [Level.UNLOAD_ASR]


def test_recovery_waits_for_calm_to_last_and_for_room_to_reload_the_next_level():
    guard = PressureGuard(T)
    run(guard, [r(t, 30) for t in range(0, 7)])
    assert guard.level is Level.SHORTEN_CONTEXT
    # 60 MiB: above low + hysteresis + the longer KV cache (55) but not the ASR (80): up one level only
    events = run(guard, [r(t, 60) for t in range(7, 40)])
    assert [(e.level, e.at_s) for e in events] == [(Level.UNLOAD_ASR, 17)]
    events = run(guard, [r(t, 100) for t in range(40, 60)])
    assert [(e.level, e.at_s) for e in events] == [(Level.OK, 50)]
    assert not events[0].is_step_down
    assert "available 100.0 MiB >= 80.0 MiB" in str(events[0]) and "for 10.0 s" in str(events[0])


def test_psi_alone_steps_down_and_holds_recovery_until_it_falls_below_its_low_mark():
    guard = PressureGuard(T)
    events = run(guard, [r(t, 500, some=35.0, full=2.0) for t in range(0, 4)])
    assert [e.level for e in events] == [Level.UNLOAD_ASR] and "PSI some 35.00% > 20%" in str(events[0])
    assert run(guard, [r(t, 500, some=8.0) for t in range(4, 60)]) == []  # between the marks: hold
    assert [e.level for e in run(guard, [r(t, 500, some=1.0) for t in range(60, 71)])] == [Level.OK]


def test_without_psi_the_guard_runs_on_available_memory_and_says_so():
    guard = PressureGuard(T)
    events = run(guard, [r(t, 30, some=None, full=None) for t in range(0, 4)])
    assert [e.level for e in events] == [Level.UNLOAD_ASR] and "no PSI" in str(events[0])
    assert "PSI absent" in guard.status()
    events = run(guard, [r(t, 100, some=None, full=None) for t in range(4, 15)])
    assert [e.level for e in events] == [Level.OK] and "MemAvailable only" in str(events[0])


def test_the_levels_stop_at_canned_and_at_ok():
    guard = PressureGuard(replace(T, breach_dwell_s=0.0, recover_dwell_s=0.0))
    assert [e.level for e in run(guard, [r(t, 1) for t in range(10)])] == list(Level)[1:]
    assert guard.level is Level.CANNED
    assert [e.level for e in run(guard, [r(t, 4000) for t in range(10, 20)])] == list(Level)[-2::-1]


def test_thresholds_follow_the_plan():
    plan = mp.plan_memory(machine(4000), [GEMMA], SETTINGS)
    t = thresholds_for(plan, load_config(use_system=False).memory)
    assert t.low_available_bytes == plan.reserve_bytes
    assert t.restore_bytes[Level.UNLOAD_ASR] == plan.asr_bytes
    assert t.restore_bytes[Level.SHORTEN_CONTEXT] == plan.kv_cache_bytes // 2
    with pytest.raises(ValueError, match="PSI low marks"):
        replace(t, psi_some_low=50.0)


def test_psi_lines_parse():
    assert parse_psi("some avg10=1.50 avg60=0.2 avg300=0 total=9\nfull avg10=0.25 avg60=0 avg300=0 total=1\n") == (
        1.5,
        0.25,
    )


# ---------------------------------------------------------------------------------------------------------------
# The sampler and the watcher on the real /proc


def test_the_sampler_reads_the_real_meminfo_and_psi():
    need(Path("/proc/pressure/memory").exists(), "this kernel has no PSI (/proc/pressure/memory)")
    reading = MemorySampler().read()
    meminfo = mp.parse_meminfo(Path("/proc/meminfo").read_text())
    assert 0 < reading.available_bytes <= meminfo["MemTotal"]
    assert reading.has_psi and 0.0 <= reading.some_avg10 <= 100.0 and "PSI" in reading.source


def test_the_sampler_falls_back_to_meminfo_where_psi_is_absent(tmp_path):
    sampler = MemorySampler(psi_path=str(tmp_path / "no-psi"), cgroup=None)
    reading = sampler.read()
    assert reading.some_avg10 is None and reading.available_bytes > 0
    assert "no-psi" in sampler.psi_problem and "no PSI" in reading.source


def test_watch_reports_each_transition_and_stops_when_cancelled():
    readings = iter([r(0, 30), r(1, 30), r(2, 30)] + [r(3 + i, 30) for i in range(100)])

    class Scripted:
        def read(self):
            return next(readings)

    guard = PressureGuard(replace(T, breach_dwell_s=1.0))
    seen = []

    async def main():
        task = asyncio.create_task(watch(guard, seen.append, 0.001, Scripted()))
        for _ in range(500):
            await asyncio.sleep(0.002)
            if len(seen) >= 2:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 10))
    assert [e.level for e in seen[:2]] == [Level.UNLOAD_ASR, Level.SHORTEN_CONTEXT]


def test_cgroup_paths_are_found_from_proc_for_v1_and_v2(tmp_path):
    v1 = mp.find_memory_cgroup(
        "4:memory:/robots/story\n0::/\n",
        "40 31 0:33 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
    )
    assert v1 == mp.MemoryCgroup(1, Path("/sys/fs/cgroup/memory/robots/story"))
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "memory.max").write_text("314572800\n")
    (tmp_path / "a" / "b" / "memory.max").write_text("max\n")
    (tmp_path / "a" / "b" / "memory.current").write_text(str(100 * MiB))
    (tmp_path / "a" / "b" / "memory.stat").write_text(f"anon 1\ninactive_file {10 * MiB}\n")
    v2 = mp.find_memory_cgroup("0::/a/b\n", f"30 1 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw\n")
    assert v2 == mp.MemoryCgroup(2, tmp_path / "a" / "b")
    assert v2.limit_bytes() == 300 * MiB  # the parent's limit binds the child
    assert v2.used_bytes() == 90 * MiB
    assert mp.find_memory_cgroup("1:cpu:/\n", "") is None


# ---------------------------------------------------------------------------------------------------------------
# A real memory cgroup (v1): the planner reads its limit from inside, the guard steps down as memory fills it

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
LIMIT = 192 * MiB

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from robot.guard import GuardThresholds, MemorySampler, PressureGuard
    from robot.memplan import MiB, read_machine

    m = read_machine()
    print(json.dumps({"limit": m.cgroup_limit_bytes, "cgroup": m.cgroup}), flush=True)
    sampler = MemorySampler()
    guard = PressureGuard(GuardThresholds(low_available_bytes=64 * MiB, hysteresis_bytes=16 * MiB,
                                          breach_dwell_s=0.2, recover_dwell_s=0.3))
    def sample(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            reading = sampler.read()
            event = guard.update(reading)
            if event:
                print(json.dumps({"event": str(event), "level": int(event.level),
                                  "available": reading.available_bytes, "source": reading.source}), flush=True)
            time.sleep(0.05)
        return reading
    chunks = []
    while sampler.read().available_bytes > 40 * MiB:   # fill the cgroup, 8 MiB at a time, never to its limit
        chunks.append(b"\\x01" * (8 * MiB))
        sample(0.1)
    sample(1.2)                                         # stay there: the breach lasts, the guard goes on down
    print(json.dumps({"filled": len(chunks) * 8}), flush=True)
    chunks.clear()
    sample(2.0)                                         # memory back: the guard comes up
    print(json.dumps({"done": int(guard.level)}), flush=True)
    """
)


@pytest.fixture
def memory_cgroup():
    need(os.geteuid() == 0, "a real memory cgroup needs root")
    need((CGROUP_ROOT / "cgroup.procs").exists(), f"no cgroup v1 memory controller at {CGROUP_ROOT}")
    path = CGROUP_ROOT / f"storybot-test-{os.getpid()}"
    path.mkdir()
    try:
        (path / "memory.limit_in_bytes").write_text(str(LIMIT))
        yield path
    finally:
        for _ in range(50):
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def in_cgroup(cgroup: Path, argv: list[str], **kw) -> subprocess.CompletedProcess:
    shell = f'echo $$ > {cgroup}/cgroup.procs && exec "$@"'
    return subprocess.run(["sh", "-c", shell, "sh", *argv], capture_output=True, text=True, cwd=ROOT, **kw)


def test_doctor_inside_a_memory_cgroup_reports_its_limit_and_plans_within_it(memory_cgroup):
    env = {**os.environ, "STORYBOT_DOCTOR_JSON": "1"}
    done = in_cgroup(memory_cgroup, [sys.executable, "-m", "robot.doctor"], env=env, timeout=60)
    report = json.loads(done.stdout)
    assert report["machine"]["cgroup_limit_bytes"] == LIMIT
    assert report["machine"]["cgroup"] == f"v1 {memory_cgroup}"
    cgroup = next(g for g in report["guards"] if g["name"] == "memory cgroup")
    assert cgroup["is_ok"] and "limit 192.0 MiB" in cgroup["detail"]
    # Gemma and its llama.cpp engine cannot fit in 192 MiB: no plan, whatever MemAvailable says outside
    assert done.returncode == 69, done.stderr
    assert any("memory cgroup limit 192.0 MiB" in r for r in report["refused"])


def test_the_guard_steps_down_as_real_memory_fills_the_cgroup_and_recovers(memory_cgroup):
    done = in_cgroup(memory_cgroup, [sys.executable, "-c", CHILD], timeout=60)
    assert done.returncode == 0, f"child ended with {done.returncode}: {done.stderr[-2000:]}"
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0] == {"limit": LIMIT, "cgroup": f"v1 {memory_cgroup}"}
    filled = next(i for i, x in enumerate(lines) if "filled" in x)
    downs = [x for x in lines[1:filled] if "event" in x]
    ups = [x for x in lines[filled:] if "event" in x]
    assert len(downs) >= 2, done.stdout
    assert [x["level"] for x in downs] == list(range(1, len(downs) + 1))
    assert all(x["available"] < 64 * MiB and x["source"].startswith("cgroup v1 room") for x in downs)
    assert ups and ups[0]["level"] == len(downs) - 1 and ups[0]["available"] >= 80 * MiB
