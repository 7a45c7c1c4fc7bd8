"""`storybot doctor`: this machine's memory numbers, the plan made from them, the guards that are really active,
the sound devices, the model files, and what is degraded.

    storybot doctor                                   plan for this machine
    storybot doctor --set memory.board=k230-512m      plan as if on that board (the guards shown are still ours)
    STORYBOT_DOCTOR_JSON=1 storybot doctor            the same as one JSON object on stdout
    python -m robot.doctor [--set SECTION.KEY=VALUE]  without the console script (e.g. inside a test cgroup)
    python -m robot.memory.plan                           the plan for every board profile

Exit status: 0 a plan exists (possibly degraded); 69 no model fits (the plan's refusal says why, with numbers);
78 configuration error (e.g. an unknown memory.board).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from robot.memory import plan as memplan
from robot.memory.guard import PSI_PATH, parse_psi
from robot.plumbing.config import EX_CONFIG, Config, ConfigError, check_semantics, load_config
from robot.plumbing.exits import Exit

EX_NO_PLAN = Exit.UNAVAILABLE  # no model fits this machine


@dataclass(frozen=True)
class Check:
    """One finding: what, whether it holds, and how it was found out."""

    name: str
    is_ok: bool
    detail: str


def run_doctor(config: Config, args: argparse.Namespace) -> int:
    report, code = build_report(config)
    if os.environ.get("STORYBOT_DOCTOR_JSON") == "1":
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, verbose=getattr(args, "verbose", 0)))
    return code


def build_report(config: Config) -> tuple[dict, int]:
    """Everything the doctor knows, as plain data, and the exit status."""
    report: dict = {"board": config.memory.board}
    try:
        machine = memplan.machine_from_config(config)
    except ValueError as e:
        report["error"] = f"memory.board: {e}"
        return report, EX_CONFIG
    report["machine"] = asdict(machine)
    degraded: list[str] = []
    code = 0
    try:
        plan = memplan.plan_from_config(config, machine)
        report["plan"] = plan.as_dict()
        if plan.asr_policy is not memplan.AsrPolicy.RESIDENT:
            degraded.append(f"ASR: {plan.asr_policy.value} ({plan.asr_bytes // memplan.MiB} MiB does not stay loaded)")
        if plan.web_refusal:
            degraded.append(f"the parents' page stays off: {plan.web_refusal}")
        if plan.context_tokens < config.engine.context_tokens:
            degraded.append(f"context {plan.context_tokens} tokens instead of {config.engine.context_tokens}")
        first = memplan.configured_model_paths(config)[:1]
        if first and plan.model_path and plan.model_path != first[0]:
            degraded.append(f"a fallback model: {plan.model_path} instead of {first[0]}")
    except memplan.PlanRefused as e:
        report["plan"] = None
        report["refused"] = list(e.reasons)
        degraded.append("no plan: no configured model fits in RAM; only canned stories can be told")
        code = EX_NO_PLAN
    guards = [asdict(c) for c in guard_checks()]
    report["guards"] = guards
    degraded += [
        f"guard missing: {g['name']}: {g['detail']}" for g in guards if not g["is_ok"] and g["name"] in _NEEDED
    ]
    if config.memory.board != "auto":
        board = memplan.load_board(config.memory.board)
        report["board_profile"] = asdict(board)
    if config.engine.backend == "remote":
        from robot.remote_host import doctor_report

        report["remote"] = remote = doctor_report(config.engine)
        if not remote["is_up"]:
            degraded.append(f"remote engine: {remote['problem']}; the next story uses {remote['next_engine']}")
        config = _local_fallback(config)
    report["models"] = [asdict(c) for c in model_checks(memplan.configured_model_paths(config))]
    degraded += [f"model: {m['detail']}" for m in report["models"] if not m["is_ok"]]
    report["audio"] = audio_check()
    if not report["audio"]["is_ok"]:
        degraded.append(f"audio: {report['audio']['detail']}")
    report["degraded"] = degraded
    return report, code


_NEEDED = ("memory cgroup", "PSI")


def _local_fallback(config: Config) -> Config:
    """The configuration whose models are checked: a remote engine's local fallback's (none: no model)."""
    from dataclasses import replace

    fallback = config.engine.remote_fallback
    if fallback == "none":
        return replace(
            config, engine=replace(config.engine, model=""), memory=replace(config.memory, fallback_models=())
        )
    return replace(config, engine=replace(config.engine, backend=fallback))


def guard_checks(proc: str = "/proc", sys_block: str = "/sys/block") -> list[Check]:
    """Which memory guards this machine really has, each with how it was found."""
    checks = []
    try:
        cgroup = memplan.find_memory_cgroup(
            Path(proc, "self/cgroup").read_text(), Path(proc, "self/mountinfo").read_text()
        )
    except OSError as e:
        cgroup = None
        checks.append(Check("memory cgroup", False, f"cannot read {proc}/self/cgroup: {e.strerror}"))
    if cgroup is not None:
        try:
            limit = cgroup.limit_bytes()
            used = cgroup.used_bytes()
            limit_text = f"limit {_mib(limit)}" if limit is not None else "no limit set, so it confines nothing"
            checks.append(
                Check(
                    "memory cgroup",
                    limit is not None,
                    f"v{cgroup.version} at {cgroup.directory} ({limit_text}, used {_mib(used)}); "
                    "found in /proc/self/cgroup and /proc/self/mountinfo",
                )
            )
        except (OSError, ValueError) as e:
            checks.append(Check("memory cgroup", False, f"v{cgroup.version} at {cgroup.directory}: unreadable ({e})"))
    elif not checks:
        checks.append(
            Check("memory cgroup", False, "no memory controller in /proc/self/cgroup (kernel without it, or off)")
        )
    checks.append(_psi_check())
    checks.extend(_swap_checks(proc, sys_block))
    return checks


def _psi_check() -> Check:
    try:
        some, full = parse_psi(Path(PSI_PATH).read_text())
    except OSError as e:
        return Check("PSI", False, f"{PSI_PATH}: {e.strerror}; the guard watches MemAvailable alone")
    except ValueError as e:
        return Check("PSI", False, f"{PSI_PATH}: unreadable ({e}); the guard watches MemAvailable alone")
    return Check("PSI", True, f"{PSI_PATH} readable: some avg10 {some:.2f}%, full avg10 {full:.2f}%")


def _swap_checks(proc: str, sys_block: str) -> list[Check]:
    checks = []
    try:
        lines = Path(proc, "swaps").read_text().splitlines()[1:]
    except OSError as e:
        return [Check("swap", False, f"{proc}/swaps: {e.strerror}")]
    devices = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 4:
            devices.append(f"{parts[0]} ({parts[1]}, {int(parts[2]) // 1024} MiB, {int(parts[3]) // 1024} MiB used)")
    checks.append(
        Check(
            "swap",
            bool(devices),
            ("in /proc/swaps: " + ", ".join(devices))
            if devices
            else "none in /proc/swaps (no cold pages can leave RAM)",
        )
    )
    zrams = sorted(Path(sys_block).glob("zram*"))
    if not zrams:
        checks.append(Check("zram", False, f"no {sys_block}/zram* device (zram module not loaded)"))
    for z in zrams:
        size = memplan._read_int(z / "disksize") or 0
        used_as_swap = any(line.split()[:1] == [f"/dev/{z.name}"] for line in lines)
        detail = f"{sys_block}/{z.name}: disksize {_mib(size)}" + (
            ", used as swap" if used_as_swap else ", not used as swap" if size else ", not set up (disksize 0)"
        )
        checks.append(Check(f"zram {z.name}", bool(size) and used_as_swap, detail))
    return checks


def model_checks(paths: list[str]) -> list[Check]:
    """Each candidate model file: exists, size, header."""
    checks = []
    for path in paths:
        try:
            shape = memplan.read_model_shape(path)
        except FileNotFoundError:
            checks.append(Check(path, False, f"{path}: no such file"))
            continue
        except OSError as e:
            checks.append(Check(path, False, f"{path}: {e.strerror}"))
            continue
        except memplan.ModelFileError as e:
            checks.append(Check(path, False, f"header rejected: {e}"))
            continue
        checks.append(
            Check(
                path,
                True,
                f"{_mib(shape.file_bytes)}, {shape.backend} header ok: {shape.layers} layers, kv_dim {shape.kv_dim}, "
                f"trained context {shape.max_context_tokens}",
            )
        )
    if not paths:
        checks.append(Check("model", False, "no model configured and the embedded default is not installed"))
    return checks


def audio_check() -> dict:
    try:
        from audio.devices import DeviceError, list_devices
    except Exception as e:  # noqa: BLE001 - doctor reports, never crashes
        return {"is_ok": False, "detail": f"audio stack not importable ({e})", "devices": []}
    try:
        devices = list_devices()
    except DeviceError as e:
        return {"is_ok": False, "detail": str(e), "devices": []}
    except Exception as e:  # noqa: BLE001
        return {"is_ok": False, "detail": f"cannot list sound devices ({e})", "devices": []}
    names = [f"{d.name} ({d.host_api}; in {d.max_input_channels}, out {d.max_output_channels})" for d in devices]
    has_in = any(d.max_input_channels for d in devices)
    has_out = any(d.max_output_channels for d in devices)
    if has_in and has_out:
        detail = f"{len(devices)} devices"
    else:
        detail = f"{len(devices)} devices; no {'input' if not has_in else 'output'} device"
    return {"is_ok": has_in and has_out, "detail": detail, "devices": names}


def format_report(report: dict, verbose: int = 0) -> str:
    out = []
    if "error" in report:
        return f"storybot doctor: {report['error']}"
    m = report["machine"]
    out.append(f"machine ({m['source']}):")
    out.append(
        f"  MemTotal {_mib(m['total_bytes'])}, MemAvailable {_mib(m['available_bytes'])}, "
        f"swap {_mib(m['swap_total_bytes'])} ({_mib(m['swap_free_bytes'])} free), {m['cores']} cores"
    )
    if m["cgroup"]:
        limit = m["cgroup_limit_bytes"]
        out.append(
            f"  memory cgroup {m['cgroup']}: "
            + (f"limit {_mib(limit)}, used {_mib(m['cgroup_used_bytes'])}" if limit is not None else "no limit")
        )
    plan = report.get("plan")
    out.append("")
    if plan is not None:
        lead = ""
        if plan.get("primary") and plan["primary"] != plan["backend"]:
            lead = f"{plan['primary']} engine, with the local fallback "
        out.append(
            f"plan: {lead}{plan['backend']} {plan['model_name']}, context {plan['context_tokens']} tokens "
            f"(guard shortens to {plan['short_context_tokens']}), threads {plan['threads']}, ASR {plan['asr_policy']}"
        )
        out.append(
            f"  while generating {_mib(plan['generating_bytes'])} of room {_mib(plan['room_bytes'])} "
            f"(headroom {_mib(plan['headroom_bytes'])}; reserve {_mib(plan['reserve_bytes'])} kept free)"
        )
        out.append(
            f"  daemon {_mib(plan['daemon_bytes'])}, microphone {_mib(plan['microphone_bytes'])}, "
            f"aplay {_mib(plan['playback_bytes'])}, TTS {_mib(plan['tts_bytes'])}, ASR {_mib(plan['asr_bytes'])}, "
            f"engine overhead {_mib(plan['engine_overhead_bytes'])}, weights {_mib(plan['weights_bytes'])}, "
            f"KV cache {_mib(plan['kv_cache_bytes'])}"
        )
        out.extend(f"  - {r}" for r in plan["reasons"])
    else:
        out.append("plan: NONE, no model fits")
        out.extend(f"  - {r}" for r in report["refused"])
    if "remote" in report:
        r = report["remote"]
        out.append("")
        answer = f"answers in {r['latency_ms']:.0f} ms" if r["is_up"] else f"DOWN: {r['problem']}"
        out.append(f"remote engine: {r['server']} ({r['api']} API, model {r['model']}): {answer}")
        out.append(f"  local fallback: {r['fallback']}; the next story uses {r['next_engine']}")
    if "board_profile" in report:
        b = report["board_profile"]
        out.append("")
        out.append(f"board profile {b['name']}: {b['description']}")
        out.append(
            f"  usually: memory cgroup {'yes' if b['has_memory_cgroup'] else 'no'}, PSI {'yes' if b['has_psi'] else 'no'}, "
            f"zram {'yes' if b['has_zram'] else 'no'}; recommended: "
            + ", ".join(f"{k} {v}" for k, v in b["recommended"].items())
        )
        if b["notes"]:
            out.append(f"  {b['notes']}")
    out.append("")
    out.append("guards active on this machine:")
    out.extend(f"  [{'yes' if g['is_ok'] else 'no '}] {g['name']}: {g['detail']}" for g in report["guards"])
    out.append("")
    out.append("models:")
    out.extend(
        f"  [{'ok' if c['is_ok'] else '!!'}] {c['detail'] if not c['is_ok'] else c['name'] + ': ' + c['detail']}"
        for c in report["models"]
    )
    out.append("")
    a = report["audio"]
    out.append(f"audio: {a['detail']}")
    if verbose or not a["is_ok"]:
        out.extend(f"  {d}" for d in a["devices"])
    out.append("")
    if report["degraded"]:
        out.append("degraded:")
        out.extend(f"  - {d}" for d in report["degraded"])
    else:
        out.append("degraded: nothing")
    return "\n".join(out)


def _mib(n: int | None) -> str:
    return "none" if n is None else f"{n / memplan.MiB:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robot.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        check_semantics(config)
    except ConfigError as e:
        print(f"storybot: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    return run_doctor(config, args)


if __name__ == "__main__":
    sys.exit(main())
