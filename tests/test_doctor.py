"""`storybot doctor` as a real subprocess: the plan with its numbers, the guards, and its exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib

import pytest

from engines.backends import llama2c
from robot.memory import plan as mp
from robot.plumbing.config import load_config
from tests.conftest import ROOT, STORYBOT

MiB = mp.MiB


def doctor(*args: str, json_out: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "STORYBOT_DOCTOR_JSON": "1" if json_out else "0"}
    return subprocess.run([STORYBOT, "doctor", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_doctor_prints_the_plan_and_the_guards_of_this_machine(default_model):
    done = doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "machine (this machine):" in out and "MemAvailable" in out
    backend = load_config(None, [], use_system=False).engine.backend  # the shipped configuration's engine
    assert f"plan: {backend} " in out and "KV cache" in out and "microphone" in out
    assert "guards active on this machine:" in out
    for guard in ("memory cgroup", "PSI", "swap"):
        assert f"] {guard}" in out
    assert "header ok" in out
    assert "audio:" in out and "degraded:" in out


def test_doctor_plans_for_a_board_profile_and_says_why_nothing_fits(default_model):
    done = doctor("--set", "memory.board=milkv-duo-64m", json_out=True)
    assert done.returncode == 69
    report = json.loads(done.stdout)
    assert report["plan"] is None and report["machine"]["source"] == "board profile milkv-duo-64m"
    name = os.path.basename(mp.configured_model_paths(load_config(None, [], use_system=False))[0])
    assert any(r.startswith(name) and "refused" in r and "MiB" in r for r in report["refused"])
    assert report["board_profile"]["has_psi"] is False
    assert any(d.startswith("no plan") for d in report["degraded"])


def test_the_duo_256m_plans_the_default_models_4_bit_file_with_its_voice_out_of_the_box(default_model):
    """The shipped configuration on the Milk-V Duo 256M's numbers: the int8 default does not fit its 150 MiB room,
    so the plan takes the default's 4-bit file (made by set-up), with the recognizer released while generating."""
    done = doctor("--set", "memory.board=milkv-duo-256m", json_out=True)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads(done.stdout)["plan"]
    assert plan["model_name"] == "smollm2-135m-instruct-q4.v3.bin", plan
    assert plan["asr_policy"] == "unload while generating" and plan["context_tokens"] >= 256, plan
    assert any(r.startswith("smollm2-135m-instruct-q80.v3.bin refused") for r in plan["reasons"]), plan["reasons"]


def test_doctor_plans_for_a_board_where_the_model_fits_and_names_the_boards_usual_guards(default_model):
    done = doctor("--set", "memory.board=rpi-4", "--set", "engine.context_tokens=4096")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "machine (board profile rpi-4)" in done.stdout and "plan: " in done.stdout
    assert "context 4096 tokens" in done.stdout
    assert "usually: memory cgroup no, PSI no" in done.stdout


def test_doctor_names_an_unknown_board_and_exits_78():
    done = doctor("--set", "memory.board=cray-1")
    assert done.returncode == 78
    assert "no board profile 'cray-1'" in done.stdout and "milkv-duo-64m" in done.stdout


@pytest.mark.soundroom
def test_a_profile_measured_by_doctor_is_read_back_by_the_planner(sound_room, tmp_path):
    """`doctor --measure` measures the real parts and writes a profile; memory.board naming that file plans with
    exactly those numbers."""
    profile = tmp_path / "measured.toml"
    env = {**sound_room.env(), "STORYBOT_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(
        [STORYBOT, "doctor", "--measure", "--output", str(profile)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(profile, "rb") as f:
        written = tomllib.load(f)["footprints"]
    for key in ("daemon_bytes", "microphone_bytes", "pocketsphinx_bytes", "flite_bytes", "flite_kal_bytes",
                "espeak_ng_bytes", "aplay_bytes", "llama2c_overhead_bytes"):  # fmt: skip
        assert key in written, f"{key} not measured: {done.stderr[-2000:]}"
    # real processes, so real sizes: a Python daemon is more than a bare interpreter, a C synthesizer less than it
    assert 8 * MiB < written["daemon_bytes"] < 200 * MiB  # the anonymous memory of a Python daemon
    assert 1 * MiB < written["flite_kal_bytes"] <= written["flite_bytes"] < 60 * MiB
    assert 20 * MiB < written["pocketsphinx_bytes"] < 400 * MiB
    # the part not growing with the vocabulary may be 0 (the per-entry slope takes it all); stories15M's whole
    # overhead may not
    stories15m_overhead = written["llama2c_overhead_bytes"] + 32000 * written.get("llama2c_bytes_per_vocab_entry", 0)
    assert 0 <= written["llama2c_overhead_bytes"] and 0 < stories15m_overhead < 32 * MiB
    board = mp.load_board(str(profile))
    assert board.footprints.daemon_bytes == written["daemon_bytes"] and str(profile) in board.footprints.source
    config = load_config(
        None, [f"memory.board='{profile}'", "tts.voice='kal'", "engine.backend='llama2c'"], use_system=False
    )
    settings = mp.settings_from_config(config)
    assert settings.daemon_bytes == written["daemon_bytes"]
    # the stop-word classifier (on by default) is counted with the microphone
    assert settings.microphone_bytes == written["microphone_bytes"] + board.footprints.stop_word_bytes
    assert settings.tts_bytes == written["flite_kal_bytes"]
    assert settings.asr_bytes == written["pocketsphinx_bytes"]
    assert settings.playback_bytes == written["aplay_bytes"]
    plan = mp.plan_memory(mp.machine_for_board(board), [llama2c.stories_shape("stories15M")], settings)
    assert plan.daemon_bytes == written["daemon_bytes"]
    expected_overhead = written["llama2c_overhead_bytes"] + 32000 * written.get("llama2c_bytes_per_vocab_entry", 0)
    assert plan.engine_overhead_bytes == expected_overhead
    # and the doctor prints the plan made from it
    shown = doctor("--set", f"memory.board='{profile}'", json_out=True)
    report = json.loads(shown.stdout)
    assert report["machine"]["source"] == f"board profile {profile}"


def test_a_board_profile_with_a_bad_footprint_names_the_file_and_the_key(tmp_path):
    good = (ROOT / "assets" / "boards" / "milkv-duo-64m.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(good + "\n[footprints]\ndaemon_bytez = 5\n")
    with pytest.raises(ValueError, match=r"bad\.toml.*unknown key 'daemon_bytez'"):
        mp.load_board(str(bad))
    bad.write_text(good + '\n[footprints]\ndaemon_bytes = "lots"\n')
    with pytest.raises(ValueError, match=r"bad\.toml.*daemon_bytes must be a number"):
        mp.load_board(str(bad))
    done = doctor("--set", f"memory.board='{tmp_path / 'absent.toml'}'")
    assert done.returncode == 78 and "absent.toml: no such file" in done.stdout
