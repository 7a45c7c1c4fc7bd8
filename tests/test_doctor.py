"""`storybot doctor` as a real subprocess: the plan with its numbers, the guards, and its exit statuses."""

from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import ROOT, STORYBOT


def doctor(*args: str, json_out: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "STORYBOT_DOCTOR_JSON": "1" if json_out else "0"}
    return subprocess.run([STORYBOT, "doctor", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_doctor_prints_the_plan_and_the_guards_of_this_machine(default_model):
    done = doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "machine (this machine):" in out and "MemAvailable" in out
    assert "plan: llama.cpp gemma-3-270m-q4_k_m.gguf" in out and "KV cache" in out
    assert "guards active on this machine:" in out
    for guard in ("memory cgroup", "PSI", "swap"):
        assert f"] {guard}" in out
    assert f"[ok] {default_model}" in out and "header ok" in out
    assert "audio:" in out and "degraded:" in out


def test_doctor_plans_for_a_board_profile_and_says_why_nothing_fits(default_model):
    done = doctor("--set", "memory.board=milkv-duo-64m", json_out=True)
    assert done.returncode == 69
    report = json.loads(done.stdout)
    assert report["plan"] is None and report["machine"]["source"] == "board profile milkv-duo-64m"
    assert any("gemma" in r and "refused" in r and "MiB" in r for r in report["refused"])
    assert report["board_profile"]["has_psi"] is False
    assert any(d.startswith("no plan") for d in report["degraded"])


def test_doctor_plans_for_a_board_where_the_model_fits_and_names_the_boards_usual_guards(default_model):
    done = doctor("--set", "memory.board=rpi-4", "--set", "engine.context_tokens=4096")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "machine (board profile rpi-4)" in done.stdout and "plan: llama.cpp" in done.stdout
    assert "context 4096 tokens" in done.stdout
    assert "usually: memory cgroup no, PSI no" in done.stdout


def test_doctor_names_an_unknown_board_and_exits_78():
    done = doctor("--set", "memory.board=cray-1")
    assert done.returncode == 78
    assert "no board profile 'cray-1'" in done.stdout and "milkv-duo-64m" in done.stdout
