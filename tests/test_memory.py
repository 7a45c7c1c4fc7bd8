"""The memory plan, the board profiles, the pressure guard, and both against the real kernel (/proc, a cgroup)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from engines.backends import llama2c, llamacpp
from robot.memory import plan as mp
from robot.memory import rooms
from robot.memory.guard import (
    GuardThresholds,
    Level,
    MemorySampler,
    PressureGuard,
    PressureReading,
    parse_psi,
    thresholds_for,
    watch,
)
from robot.memory.measure import drop_from_page_cache
from robot.memory.rooms import oom_kills
from robot.plumbing.config import load_config
from tests.conftest import ROOT, need

MiB = mp.MiB
GEMMA = llamacpp.GEMMA3_270M
S15, S42, S110 = (llama2c.stories_shape(n) for n in ("stories15M", "stories42M", "stories110M"))
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
    return s.daemon_bytes + s.playback_bytes + s.tts_bytes + shape.engine_overhead_bytes() + shape.file_bytes


# ---------------------------------------------------------------------------------------------------------------
# Model shapes


def test_llama2c_sizes_follow_from_the_shapes_as_published():
    # REFERENCE-engines.md 1.6, confirmed there by writing synthetic files
    assert llama2c.STORIES["stories15M"].file_bytes(2) == 17_101_696
    assert llama2c.STORIES["stories42M"].file_bytes(2) == 44_321_024
    assert llama2c.STORIES["stories110M"].file_bytes(2) == 116_432_128
    assert llama2c.STORIES["stories15M"].file_bytes(0) == 60_816_028  # the published stories15M.bin
    assert llama2c.default_group_size(288) == 32 and llama2c.default_group_size(512) == 64


def write_llama2c_v2(path: Path, c: llama2c.Llama2cConfig, *, cut: int = 0) -> Path:
    gs = llama2c.default_group_size(c.dim)
    head = struct.pack("<Ii7iBi", llama2c.LLAMA2C_MAGIC, 2, *c.__dict__.values(), 1, gs)
    size = c.file_bytes(2)
    path.write_bytes(head + bytes(256 - len(head)) + bytes(size - 256 - cut))
    return path


TINY = llama2c.Llama2cConfig(dim=64, hidden_dim=192, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=512)


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


@pytest.fixture(scope="session")
def gemma_model() -> str:
    from engines.models import ModelError, ensure_default_model

    try:
        return str(ensure_default_model("llama.cpp"))
    except ModelError as e:
        need(False, str(e))


def test_the_default_models_v3_header_gives_smollm2s_shape(smollm2_model):
    shape = mp.read_model_shape(smollm2_model)
    assert (shape.backend, shape.layers, shape.kv_dim, shape.vocab_size) == ("llama2c", 30, 192, 49152)
    # the weights are those of an int8 v2 file of the shape; the vocabulary, merges and template come on top
    assert llama2c.SMOLLM2_135M.file_bytes < shape.file_bytes < llama2c.SMOLLM2_135M.file_bytes + 8 * MiB
    assert shape.kv_cache_bytes(1024) == 2 * 30 * 1024 * 192 * 4


def test_the_real_gguf_header_gives_gemmas_shape(gemma_model):
    shape = mp.read_model_shape(gemma_model)
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
    # with a microphone, PortAudio plays inside the daemon (no aplay) and the capture stack stays loaded
    generating = fixed_needs(GEMMA, s) - s.playback_bytes + s.microphone_bytes + GEMMA.kv_cache_bytes(1024)
    plan = mp.plan_memory(machine((generating + 8 * MiB) / MiB + extra_mib), [GEMMA], s)
    assert plan.asr_policy is policy and plan.context_tokens == 1024


@pytest.mark.parametrize(
    "extra_mib,policy,load",
    [
        (400, mp.AsrPolicy.RESIDENT, "read"),  # the weights stay resident anyway: the faster private copy
        (100, mp.AsrPolicy.UNLOAD_WHILE_GENERATING, "mmap"),  # listening counts on the kernel dropping them
        (1, mp.AsrPolicy.STOP_ENGINE_TO_LISTEN, "read"),  # the engine is stopped to listen: its memory goes with it
    ],
)
def test_llama2c_reads_its_weights_unless_the_plan_needs_them_droppable(extra_mib, policy, load):
    from robot.supervisor import _engine_config

    shape = llama2c.SMOLLM2_135M
    s = replace(SETTINGS, asr_bytes=170 * MiB)  # more than the weights, less than the engine with its KV cache
    generating = fixed_needs(shape, s) - s.playback_bytes + s.microphone_bytes + shape.kv_cache_bytes(1024)
    plan = mp.plan_memory(machine((generating + 8 * MiB) / MiB + extra_mib), [shape], s)
    assert plan.asr_policy is policy and plan.weights_load == load
    assert any("engine.load auto" in r for r in plan.reasons)
    config = load_config(use_system=False)
    engine = _engine_config(config, plan)
    argv = llama2c.BACKEND.argv(engine, llama2c.CheckedModel("model.bin"))
    assert argv[argv.index("--load") + 1] == load
    # engine.load set by hand wins over the plan
    forced = _engine_config(replace(config, engine=replace(config.engine, load="mmap")), plan)
    assert llama2c.BACKEND.argv(forced, llama2c.CheckedModel("model.bin"))[-1] == "mmap"
    # engine.batched_prefill: --batch 32, or 1 (the batch activations' memory) when it is off
    argv = llama2c.BACKEND.argv(config.engine, llama2c.CheckedModel("model.bin"))
    assert argv[argv.index("--batch") + 1] == "32"
    unbatched = replace(config.engine, batched_prefill=False)
    argv = llama2c.BACKEND.argv(unbatched, llama2c.CheckedModel("model.bin"))
    assert argv[argv.index("--batch") + 1] == "1"
    # a stopped engine that reads its weights needs them again as private memory to start
    restore = thresholds_for(plan, config.memory).restore_bytes[Level.STOP_ENGINE]
    short_kv = plan.kv_cache_bytes * plan.short_context_tokens // plan.context_tokens
    assert restore == plan.engine_overhead_bytes + short_kv + (plan.weights_bytes if load == "read" else 0)


def test_llama_cpp_plans_keep_mapped_weights():
    plan = mp.plan_memory(machine(4000), [GEMMA], SETTINGS)
    assert plan.weights_load == "mmap"
    assert not any("engine.load" in r for r in plan.reasons)


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


def test_inside_a_cgroup_smaller_than_the_host_the_reserve_is_a_share_of_the_cgroups_limit():
    # issue 10.5: 5% of a 24 GB host's MemTotal (1.2 GiB) was reserved inside a 450 MiB cgroup: room -756 MiB
    m = machine(22000, total_mib=24000, cgroup_limit_bytes=450 * MiB, cgroup_used_bytes=10 * MiB, cgroup="v2 /x")
    assert mp.reserve_for(m) == int(450 * MiB * 0.05)
    plan = mp.plan_memory(m, [S15], mp.PlanSettings())
    assert plan.room_bytes == 440 * MiB - int(450 * MiB * 0.05)
    assert any("5% of the memory cgroup's limit 450.0 MiB" in r for r in plan.reasons)
    unlimited = machine(22000, total_mib=24000, cgroup_limit_bytes=None, cgroup="v1 /x")
    assert mp.reserve_for(unlimited) == int(24000 * MiB * 0.05)


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


def test_duo_64m_refuses_every_model_with_storybots_defaults_and_plans_stories15m_as_a_button_storyteller():
    with pytest.raises(mp.PlanRefused) as e:  # PocketSphinx and flite's slt voice: nothing fits in 38 MiB
        board_plan("milkv-duo-64m")
    gemma = next(r for r in e.value.reasons if r.startswith(GEMMA.name))
    assert "swap never holds weights" in gemma and "weights 241.4 MiB" in gemma
    s15 = next(r for r in e.value.reasons if r.startswith(S15.name))
    assert "refused" in s15 and "flite 8.7 MiB" in s15 and "> room 38.0 MiB" in s15
    # the board's [plan]: no microphone, espeak-ng, a 64-token floor (issue 11.4)
    board = mp.load_board("milkv-duo-64m")
    plan = mp.plan_memory(mp.machine_for_board(board), REFERENCE, mp.board_settings(board))
    assert (plan.backend, plan.model_name, plan.context_tokens, plan.threads) == ("llama2c", S15.name, 64, 1)
    assert plan.asr_policy is mp.AsrPolicy.NONE and plan.microphone_bytes == 0 and plan.asr_bytes == 0
    assert plan.tts_bytes == mp.DEFAULT_FOOTPRINTS.espeak_ng_bytes and plan.room_bytes == 38 * MiB
    assert plan.generating_bytes <= plan.room_bytes
    assert any("espeak-ng" in r and " fits: " in r for r in plan.reasons), plan.reasons


def test_k230_plans_gemma_by_releasing_the_recognizer_while_a_story_is_generated():
    plan = board_plan("k230-512m")
    assert plan.model_name == GEMMA.name and plan.context_tokens == 1024
    assert plan.asr_policy is mp.AsrPolicy.UNLOAD_WHILE_GENERATING
    assert plan.generating_bytes <= plan.room_bytes
    assert any("released while generating" in r for r in plan.reasons)


def test_a_board_profiles_plan_section_is_checked(tmp_path):
    profile = (mp.boards_dir() / "milkv-duo-64m.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(profile.replace('tts_backend = "espeak-ng"', 'tts_engine = "espeak-ng"'))
    with pytest.raises(ValueError, match=r"bad.toml: \[plan\] has an unknown key 'tts_engine'"):
        mp.load_board(str(bad))
    bad.write_text(profile.replace("min_context_tokens = 64", 'min_context_tokens = "64"'))
    with pytest.raises(ValueError, match=r"\[plan\] min_context_tokens must be an integer"):
        mp.load_board(str(bad))


@pytest.mark.parametrize("board", ["k230-512m", "rpi-zero-2w"])
def test_the_512_mb_boards_run_the_default_smollm2_with_a_recognizer(board):
    plan = board_plan(board, candidates=mp.reference_candidates())
    assert plan.model_name == llama2c.SMOLLM2_135M.name and plan.backend == "llama2c"
    assert plan.asr_policy is not mp.AsrPolicy.NONE and plan.microphone_bytes > 0
    assert plan.generating_bytes <= plan.room_bytes
    if board == "k230-512m":
        assert plan.asr_policy is mp.AsrPolicy.RESIDENT and plan.context_tokens == 1024


def test_a_smaller_model_that_can_listen_beats_a_bigger_one_only_the_button_can_ask_for():
    s = replace(SETTINGS, asr_bytes=30 * MiB)
    lean_s42 = fixed_needs(S42, s) + S42.kv_cache_bytes(1024)
    plan = mp.plan_memory(machine((lean_s42 + 8 * MiB) / MiB), [S42, S15], s)  # S42 fits, but not with voice
    assert plan.model_name in (S42.name, S15.name) and plan.asr_policy is not mp.AsrPolicy.NONE
    if plan.model_name == S42.name:  # made to fit by a shorter context, said so
        assert plan.context_tokens < 1024 and any("so that the recognizer fits" in r for r in plan.reasons)
    no_voice = mp.plan_memory(machine((lean_s42 + 8 * MiB) / MiB), [S42, S15], replace(s, wants_voice=False))
    assert no_voice.model_name == S42.name and no_voice.context_tokens == 1024
    assert no_voice.asr_policy is mp.AsrPolicy.NONE and no_voice.microphone_bytes == 0
    assert no_voice.playback_bytes == s.playback_bytes


def test_a_1gb_pi4_runs_gemma_with_the_asr_loaded():
    plan = board_plan("rpi-4")
    assert plan.model_name == GEMMA.name and plan.is_asr_loaded_while_generating


def test_the_board_table_prints_every_profile():
    table = mp.board_table()
    for name in mp.board_names():
        assert f"== {name}:" in table
    assert table.count("PLAN:") == len(mp.board_names())  # each board: its PLAN or NO PLAN line
    duo = table.split("== milkv-duo-64m:")[1].split("\n== ")[0]
    assert "PLAN: llama2c stories15M int8 (v2), context 64, threads 1, ASR none" in duo, duo


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
    assert any(r.startswith(Path(default_model).name) and "refused" in r for r in plan.reasons)


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

CGROUP_ROOT = rooms.MEMORY_ROOT
LIMIT = 192 * MiB

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from robot.memory.guard import GuardThresholds, MemorySampler, PressureGuard
    from robot.memory.plan import MiB, read_machine

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
    # the plan is made for the cgroup's 192 MiB, whatever MemAvailable says outside: the default model's int8 file
    # fits only without the microphone, so the plan takes its 4-bit file, which keeps the voice
    assert done.returncode == 0, done.stderr
    plan = report["plan"]
    assert any(r.startswith("room ") and "memory cgroup limit 192.0 MiB" in r for r in plan["reasons"]), plan
    assert plan["generating_bytes"] <= plan["room_bytes"] < LIMIT
    assert any(r.startswith("smollm2-135m-instruct-q80.v3.bin refused for voice") for r in plan["reasons"]), plan
    assert plan["model_name"] == "smollm2-135m-instruct-q4.v3.bin" and plan["asr_policy"] != "none", plan


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


# ---------------------------------------------------------------------------------------------------------------
# Whole rounds of the daemon inside a memory cgroup of a given size (page cache counts: the model file is dropped
# from the cache first, so the daemon's engine charges every page of it to the cgroup as it maps it)


def own_memory_cgroup() -> Path:
    return rooms.own_cgroup("memory", CGROUP_ROOT)


@pytest.fixture
def sized_cgroup():
    """sized_cgroup(limit_bytes) -> a fresh cgroup v1 memory child with that limit and no swap, removed after."""
    need(os.geteuid() == 0, "a real memory cgroup needs root")
    need((CGROUP_ROOT / "cgroup.procs").exists(), f"no cgroup v1 memory controller at {CGROUP_ROOT}")
    made: list[Path] = []

    def make(limit_bytes: int) -> Path:
        path = rooms.make_memory_room(f"storybot-board-{os.getpid()}-{len(made)}", limit_bytes)
        made.append(path)
        return path

    yield make
    for path in made:
        rooms.remove_cgroup(path)


SMOLLM2_SHAPE = (576, 1536, 30, 9, 3, 49152, 8192)  # dim, hidden, layers, heads, kv heads, vocab, trained context


@pytest.fixture(scope="session")
def smollm2_shaped(tmp_path_factory) -> tuple[Path, Path]:
    """A random-weight checkpoint of SmolLM2-135M's shape, int8 in groups of 32 (151.4 MB, as the converted
    model's weights), and its tokenizer: memory and speed are a matter of shapes."""
    from engines import llama2c_ref as ref

    folder = tmp_path_factory.mktemp("smollm2-shaped")
    c = ref.Config(*SMOLLM2_SHAPE)
    model = ref.write_checkpoint(folder / "model.bin", ref.random_weights(c, seed=3), version=2, group_size=32)
    ref.write_tokenizer(folder / "tokenizer.bin", ref.random_tokenizer(c.vocab_size, 3))
    return model, folder / "tokenizer.bin"


def plan_lines(stderr: str) -> list[str]:
    return [line.split("memory plan: ", 1)[1] for line in stderr.splitlines() if "memory plan: " in line]


@dataclass
class Round:
    returncode: int
    stdout: str
    stderr: str
    plan: list[str]  # the daemon's "memory plan: ..." lines
    result: dict | None  # the story's timings record
    speech_s: float  # speech recorded from the speaker
    peak_bytes: int  # memory.max_usage_in_bytes of the cgroup
    oom_kills: int


def voice_round_in_cgroup(cgroup: Path, sound_room, request: Path, tmp_path: Path, *overrides: str) -> Round:
    """`storybot listen` started inside the cgroup: a spoken request played into the room, the story recorded."""
    from tests.conftest import STORYBOT
    from tests.soundroom import Recorder, warm_state_dir

    timings = tmp_path / "timings.json"
    argv = [STORYBOT, "listen", "-v", "--timings-json", str(timings)]
    argv += [a for o in overrides for a in ("--set", o)]
    shell = f'echo $$ > {cgroup}/cgroup.procs && exec "$@"'
    recorder = Recorder()
    robot = subprocess.Popen(
        ["sh", "-c", shell, "sh", *argv],
        env={**sound_room.env(), "STORYBOT_STATE_DIR": str(warm_state_dir(tmp_path / "state"))},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    stdout = ""
    try:
        deadline = time.monotonic() + 300  # a loaded host: the model is read back from disk into the cgroup
        while not any("listening on" in line for line in stderr) and time.monotonic() < deadline:
            line = robot.stderr.readline()
            if not line:
                break
            stderr.append(line)
        if any("listening on" in line for line in stderr):
            time.sleep(0.5)  # room sound for the detector's calibration
            sound_room.play_into_room(request)
            stdout, rest = robot.communicate(timeout=600)
            stderr.append(rest)
    finally:
        robot.kill()
        robot.wait()
        recorder.stop()
    err = "".join(stderr)
    results = json.loads(timings.read_text())["results"] if timings.exists() else []
    return Round(
        returncode=robot.returncode,
        stdout=stdout,
        stderr=err,
        plan=plan_lines(err),
        result=results[0] if results else None,
        speech_s=recorder.speech_seconds(),
        peak_bytes=int((cgroup / "memory.max_usage_in_bytes").read_text()),
        oom_kills=oom_kills(cgroup),
    )


def assert_heard_and_told(r: Round) -> None:
    assert r.returncode == 0, r.stderr[-3000:]
    heard = [line for line in r.stderr.splitlines() if line.startswith("heard: ")]
    assert heard and "dragon" in heard[0], r.stderr[-3000:]
    assert r.result is not None and r.result["outcome"] == "finished", r.stderr[-3000:]
    assert r.result["tokens"] > 0, r.result  # the engine told it, not a canned story
    assert r.stdout.splitlines()[0] == "Once upon a time, there was a dragon who loved tea."
    assert r.speech_s >= 1.0, "the story was not heard from the speaker"
    assert r.oom_kills == 0, "a process was OOM-killed in the cgroup"


@pytest.mark.soundroom
@pytest.mark.timeout(900)
def test_a_whole_voice_round_inside_a_450_mib_cgroup_plans_within_its_limit(
    sized_cgroup, smollm2_shaped, sound_room, espeak, tmp_path
):
    """Issue 10.5: the reserve was 5% of the host's MemTotal (1.2 GiB here), so a 450 MiB cgroup got a room of
    -756 MiB and canned stories. Now: a plan inside the limit, a spoken request heard, the story generated by
    the engine and told out loud, and nothing OOM-killed."""
    from tests.conftest import write_wav

    limit = 450 * MiB
    cgroup = sized_cgroup(limit)
    model, tokenizer = smollm2_shaped
    drop_from_page_cache(model, tokenizer)
    request = write_wav(tmp_path / "request.wav", espeak("tell me a story about a dragon who loves tea"), 16000)
    r = voice_round_in_cgroup(
        cgroup, sound_room, request, tmp_path,
        "engine.backend='llama2c'", f"engine.model='{model}'", "engine.max_tokens=40", "engine.threads=1",
        "engine.seed=5",
    )  # fmt: skip
    room = next((line for line in r.plan if line.startswith("room ")), "")
    assert "memory cgroup limit 450.0 MiB" in room and "of the memory cgroup's limit 450.0 MiB" in room, r.stderr
    assert float(room.split()[1]) > 0, room
    assert any(line.startswith("model.bin fits") for line in r.plan), r.plan
    assert_heard_and_told(r)
    assert r.peak_bytes <= limit
    print(f"450 MiB cgroup voice round: peak {r.peak_bytes / MiB:.1f} MiB charged; plan: {room}")


# deadlines for a loaded 2-core host and a board-sized room (the model is read back into the cgroup, reclaim at
# its edge): the tests see whether the story is told by the engine, not how fast (scripts/bench_boards.py does)
GENEROUS = (
    "engine.load_timeout_s=300", "engine.first_token_timeout_s=120", "engine.token_timeout_s=60",
    "tts.timeout_base_s=60",
)  # fmt: skip


def write_stories_shaped(folder: Path, shape: str) -> tuple[Path, Path]:
    model, tokenizer = folder / f"{shape}.bin", folder / f"{shape}-tokenizer.bin"
    subprocess.run(
        [sys.executable, "-m", "engines.llama2c_ref", "write", "--shape", shape, "--version", "2", "--seed", "1",
         "--tokenizer", str(tokenizer), str(model)],
        check=True, capture_output=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    drop_from_page_cache(model, tokenizer)
    return model, tokenizer


@pytest.mark.soundroom
@pytest.mark.timeout(900)
def test_the_duo_256m_room_of_150_mib_hears_a_spoken_request_and_tells_it(sized_cgroup, sound_room, espeak, tmp_path):
    """Issue 11.4: the Milk-V Duo 256M's room, 150 MiB, as a cgroup v1 (page cache counts: the model files are
    dropped from the cache first; no swap). The daemon plans inside it on its own, with a stories42M-class int8
    checkpoint first and a stories15M-class one as the fallback: the plan keeps the recognizer, a spoken request
    is heard and the story told out loud by the engine, nothing OOM-killed."""
    from tests.conftest import write_wav

    limit = 150 * MiB
    s42, t42 = write_stories_shaped(tmp_path, "stories42M")
    s15, t15 = write_stories_shaped(tmp_path, "stories15M")
    (tmp_path / "s15").mkdir()
    s15 = s15.rename(tmp_path / "s15" / "model.bin")
    t15.rename(tmp_path / "s15" / "tokenizer.bin")
    t42.rename(tmp_path / "tokenizer.bin")  # beside stories42M.bin: the engine looks there
    cgroup = sized_cgroup(limit)
    request = write_wav(tmp_path / "request.wav", espeak("tell me a story about a dragon who loves tea"), 16000)
    r = voice_round_in_cgroup(
        cgroup, sound_room, request, tmp_path,
        "engine.backend='llama2c'", f"engine.model='{s42}'", f"memory.fallback_models=['{s15}']",
        "engine.max_tokens=40", "engine.threads=1", "engine.seed=5", *GENEROUS,
    )  # fmt: skip
    print("\n".join(["Duo 256M room (150 MiB cgroup) plan:", *r.plan]))
    room = next((line for line in r.plan if line.startswith("room ")), "")
    assert "memory cgroup limit 150.0 MiB" in room, r.stderr[-3000:]
    fits = [line for line in r.plan if " fits: " in line]
    assert fits and "KV cache" in fits[-1], r.plan
    policy = [line for line in r.plan if line.startswith("pocketsphinx")][-1]
    assert "do not fit" not in policy, policy  # the plan listens
    assert_heard_and_told(r)
    assert r.peak_bytes <= limit
    print(f"peak {r.peak_bytes / MiB:.1f} MiB charged to the cgroup, {r.speech_s:.1f} s of speech recorded")


DUO_64M_ROOM = 38 * MiB  # the Milk-V Duo 64M profile's MemAvailable 46 MiB less the planner's 8 MiB reserve
DUO_64M = (
    "asr.backend='none'", "tts.backend='espeak-ng'", "engine.backend='llama2c'", "engine.threads=1",
    # planned with the board's own numbers (its profile: room 38 MiB); the cgroup holds the processes to that room
    "memory.board='milkv-duo-64m'", "memory.min_context_tokens=64", "engine.batched_prefill=false",
    # the cgroup is the room itself, without the board's 8 MiB reserve beside it: mapped weights are clean pages
    # the kernel can take back in it, where read ones (anonymous, no swap) leave it nothing (the daemon was
    # OOM-killed with engine.load auto = read)
    "engine.load='mmap'",
    # the guard reads the cgroup, whose room the engine's mapped weights fill (active page cache), as pressure
    # below the board's 8 MiB reserve; on the board (no memory cgroup) it reads MemAvailable
    "memory.breach_dwell_s=600",
    *GENEROUS,
)  # fmt: skip


def mapped_files(pid: int) -> set[str]:
    try:
        return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}
    except OSError:
        return set()


@pytest.mark.soundroom
@pytest.mark.timeout(900)
def test_the_duo_64m_room_of_38_mib_tells_a_story_from_a_button_press(sized_cgroup, sound_room, tmp_path):
    """Issue 11.4: the Milk-V Duo 64M as a button storyteller. `storybot run` with a serial button and no
    microphone (asr.backend = none), espeak-ng's voice, a stories15M-class int8 checkpoint and one thread, started
    inside a 38 MiB memory cgroup v1 without swap (page cache counts: the model files are dropped from the cache
    first, so the engine is charged for every page of its weights). It plans inside the cgroup, the board's LED
    says idle, one press tells the story to its end out loud through aplay, nothing is OOM-killed, and the daemon
    maps neither numpy, PortAudio, a recognizer nor OpenSSL."""
    from tests.buttonboard import ButtonBoard
    from tests.conftest import STORYBOT
    from tests.soundroom import Recorder, warm_state_dir

    model, tokenizer = write_stories_shaped(tmp_path, "stories15M")
    cgroup = sized_cgroup(DUO_64M_ROOM)
    board = ButtonBoard()
    timings = tmp_path / "timings.json"
    sets = (*DUO_64M, f"engine.model='{model}'", f"engine.tokenizer='{tokenizer}'", f"button.serial_port='{board.path}'",
            "engine.max_tokens=48", "engine.seed=5", "story.max_sentence_chars=120")  # fmt: skip
    argv = [STORYBOT, "run", "-v", "--timings-json", str(timings), *[a for o in sets for a in ("--set", o)]]
    recorder = Recorder()
    robot = subprocess.Popen(
        ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv],
        env={**sound_room.env(), "STORYBOT_STATE_DIR": str(warm_state_dir(tmp_path / "state"))},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(robot.stderr), daemon=True).start()
    maps: set[str] = set()
    try:
        board.wait_for_led("LED IDLE", 120)
        deadline = time.monotonic() + 300
        while not any(" ready: " in line for line in stderr) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(" ready: " in line for line in stderr), "".join(stderr)[-3000:]
        pressed = board.press()
        board.release()
        board.wait_for_led("LED THINKING", 10)
        speaking_at = board.wait_for_led("LED SPEAKING", 300)
        while time.monotonic() - pressed < 600:  # the story to its end: the LED says idle again
            maps |= mapped_files(robot.pid)
            if any(led == "LED IDLE" and at > speaking_at for at, led in board.leds):
                break
            board.read_leds(0.5)
        robot.send_signal(signal.SIGTERM)
        stdout, _ = robot.communicate(timeout=60)
    finally:
        robot.kill()
        robot.wait()
        recorder.stop()
        board.close()
    err = "".join(stderr)
    plan = plan_lines(err)
    print("\n".join(["Duo 64M room (38 MiB cgroup) plan:", *plan]))
    assert robot.returncode == 0, err[-3000:]
    room = next((line for line in plan if line.startswith("room ")), "")
    assert room.startswith("room 38.0 MiB = MemAvailable 46.0 MiB"), plan  # the board's room: the cgroup's size
    fits = [line for line in plan if line.startswith("stories15M.bin fits: ")]
    assert fits and "espeak-ng" in fits[0] and "aplay" in fits[0], plan
    assert any("asr.backend = none" in line for line in plan), plan
    result = json.loads(timings.read_text())["results"][0]
    assert result["outcome"] == "finished" and result["tokens"] > 0, result  # the engine told it, to its end
    assert stdout.splitlines(), err[-2000:]
    assert recorder.speech_seconds() >= 1.0, "the story was not heard from the speaker"
    assert oom_kills(cgroup) == 0, "a process was OOM-killed in the cgroup"
    peak = int((cgroup / "memory.max_usage_in_bytes").read_text())
    heavy = [m for m in maps if any(k in m for k in ("_multiarray", "portaudio", "pocketsphinx", "vosk", "libssl"))]
    assert not heavy, heavy
    print(f"peak {peak / MiB:.1f} MiB charged to the 38 MiB cgroup; {result['tokens']} tokens at "
          f"{result['tokens_per_s']} tok/s; {recorder.speech_seconds():.1f} s of speech")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The lean daemon: what is loaded follows the configuration


def test_the_modules_of_a_daemon_without_microphone_import_neither_numpy_nor_portaudio():
    probe = (
        "import sys\n"
        "import robot.cli, robot.robot, robot.story.session, robot.engine_host, robot.memory.guard, robot.controls.button_serial\n"
        "import audio.tts, audio.playback, audio.speech\n"
        "from audio.speech import read_wav\n"
        "import io, wave\n"
        "b = io.BytesIO()\n"
        "w = wave.open(b, 'wb'); w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)\n"
        "w.writeframes(bytes(1600)); w.close()\n"
        "a = read_wav(b.getvalue())\n"
        "assert a.duration_s == 0.1 and len(a.pcm) == 1600\n"
        "print(sorted(m for m in ('numpy', 'sounddevice', '_sounddevice', 'pocketsphinx', 'vosk', 'soxr',"
        " 'audio.capture', 'audio.asr', 'audio.vad') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"loaded by the lean daemon's modules: {done.stdout}"


@pytest.mark.soundroom
def test_storybot_tell_speaks_through_aplay_with_no_portaudio_or_recognizer_loaded(sound_room, tmp_path):
    from tests.conftest import STORYBOT
    from tests.soundroom import Recorder, warm_state_dir

    model, tok = write_stories_shaped(tmp_path, "stories15M")
    recorder = Recorder()
    proc = subprocess.Popen(
        [STORYBOT, "tell", "a cat", "--set", "engine.backend='llama2c'", "--set", f"engine.model='{model}'",
         "--set", f"engine.tokenizer='{tok}'", "--set", "engine.max_tokens=24"],
        env={**sound_room.env(), "STORYBOT_STATE_DIR": str(warm_state_dir(tmp_path / "state"))},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    maps, players = set(), set()
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                maps |= {line.split()[-1] for line in Path(f"/proc/{proc.pid}/maps").read_text().splitlines()}
            except OSError:
                break
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            for child in children:
                try:
                    players.add(Path(f"/proc/{child}/comm").read_text().strip())
                except OSError:
                    pass
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        recorder.stop()
    assert proc.returncode == 0, err[-2000:]
    assert out.splitlines()[0] == "Once upon a time, there was a cat."
    assert "aplay" in players, players  # the speaker is aplay, a child per sentence
    loaded = [m for m in maps if any(k in m for k in ("portaudio", "_sounddevice", "pocketsphinx", "vosk"))]
    assert not loaded, loaded
    assert recorder.speech_seconds() >= 1.0
