"""The unit files: systemd-analyze verify (shown to catch real mistakes), the settings the daemon's contract rests
on, the offline security score, and the reason MemoryDenyWriteExecute stays off.

systemd is not PID 1 on our machines, so units cannot be started; verify and security --offline work on files.
verify needs the ExecStart binaries to exist, so the units are checked as copies whose /opt/storybot points
into a temporary directory holding stub executables.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, STORYBOT, need

UNITS = ("storybot.service", "storybot-swap.service")
SECURITY_THRESHOLD = 1.5  # storybot.service scores 0.7 ("SAFE") with systemd 252


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (systemd keys repeat; an empty assignment resets the list)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        values = current.setdefault(key.strip(), [])
        if value.strip() == "":
            values.clear()
            values.append("")
        else:
            values.append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit((ROOT / "systemd" / "storybot.service").read_text())["Service"]


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return parse_unit((ROOT / "systemd" / "storybot.service").read_text())["Unit"]


def one(section: dict[str, list[str]], key: str) -> str:
    assert key in section, f"{key}= is not set"
    return section[key][-1]


def seconds(value: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|h)?", value):
        total += float(number) * {"ms": 0.001, "min": 60, "h": 3600}.get(unit, 1)
    return total


# ------------------------------------------------------------------------------------------ verify


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    need(path is not None, "systemd-analyze is not installed (Debian package systemd)")
    return path


def staged_units(tmp_path: Path, edit=lambda name, text: text) -> list[Path]:
    """Copies of the units with /opt/storybot under tmp_path, where stub executables stand in for the venv."""
    prefix = tmp_path / "opt" / "storybot"
    (prefix / "venv" / "bin").mkdir(parents=True)
    for name in ("storybot", "python"):
        stub = prefix / "venv" / "bin" / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    out = tmp_path / "units"
    out.mkdir()
    paths = []
    for name in UNITS:
        text = (ROOT / "systemd" / name).read_text().replace("/opt/storybot", str(prefix))
        (out / name).write_text(edit(name, text))
        paths.append(out / name)
    return paths


def verify(paths: list[Path]) -> tuple[int, str]:
    """systemd-analyze verify; any complaint is a failure (252 exits 0 on unknown keys and bad values)."""
    out = subprocess.run([analyze(), "verify", *map(str, paths)], capture_output=True, text=True, timeout=60)
    return out.returncode, (out.stdout + out.stderr).strip()


def test_units_verify_without_a_complaint(tmp_path):
    rc, out = verify(staged_units(tmp_path))
    assert rc == 0 and out == "", out


@pytest.mark.parametrize(
    "mistake, old, new, says",
    [
        ("a misspelt value", "KillMode=mixed", "KillMode=mixd", "kill mode"),
        ("a misspelt service type", "Type=notify", "Type=notfy", "service type"),
        ("an unknown key", "WatchdogSec=30", "WatchdogSecs=30", "Unknown key"),
        ("a bad time", "RestartSec=5", "RestartSec=five", "sec value"),
        ("a missing binary", "venv/bin/storybot run", "venv/bin/storybot-missing run", "storybot-missing"),
        ("a bad section", "[Install]", "[Instal]", "Instal"),
    ],
)
def test_verify_catches_a_broken_copy(tmp_path, mistake, old, new, says):
    def edit(name, text):
        if name != "storybot.service":
            return text
        assert old in text, f"the unit no longer has {old!r}; update this test"
        return text.replace(old, new, 1)

    rc, out = verify(staged_units(tmp_path, edit))
    assert rc != 0 or out, f"verify accepted {mistake}"
    assert says in out


# ------------------------------------------------------------------------------------------ the contract


def test_notify_watchdog_and_timeouts(service):
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    watchdog = seconds(one(service, "WatchdogSec"))
    assert 10 <= watchdog <= 60
    assert seconds(one(service, "TimeoutStartSec")) >= 120  # model load, plus EXTEND_TIMEOUT_USEC
    assert 5 <= seconds(one(service, "TimeoutStopSec")) <= 90
    assert one(service, "ExecStart") == "/opt/storybot/venv/bin/storybot run"
    assert one(service, "KillMode") == "mixed"
    assert one(service, "LimitCORE") == "0"


def test_restarts_are_spaced_and_capped(service, unit):
    assert one(service, "Restart") == "on-failure"
    restart_sec = seconds(one(service, "RestartSec"))
    assert restart_sec >= 5  # the default 100 ms burns the start limit at once
    interval, burst = seconds(one(unit, "StartLimitIntervalSec")), int(one(unit, "StartLimitBurst"))
    assert burst >= 3 and restart_sec * burst < interval, "a fast crash loop must hit the start limit"
    assert "StartLimitIntervalSec" not in service and "StartLimitBurst" not in service  # [Unit] keys


def test_permanent_exit_statuses_are_not_restarted(service):
    """Every status the CLI documents as a bad model or a configuration error stops the restarts."""
    from robot.cli import EPILOG

    prevent = {int(x) for v in service["RestartPreventExitStatus"] for x in v.split()}
    documented = dict((m.group(2).strip(), int(m.group(1))) for m in re.finditer(r"(\d+) ([a-z ]+?)[,.]", EPILOG))
    assert documented["configuration error"] == 78 and documented["bad model"] == 65
    assert {78, 65} <= prevent
    assert 0 not in prevent and 69 not in prevent  # "no microphone or engine" may be transient: retried


def test_memory_and_oom(service):
    assert one(service, "OOMPolicy") == "continue"
    high, peak = one(service, "MemoryHigh"), one(service, "MemoryMax")
    assert high.endswith("%") and peak.endswith("%") and int(high[:-1]) < int(peak[:-1]) <= 95


def test_paths_the_daemon_reads(service):
    env = dict(v.split("=", 1) for v in service["Environment"])
    assert one(service, "User") == "storybot"
    assert {"audio", "dialout"} <= set(" ".join(service["SupplementaryGroups"]).split())
    assert one(service, "StateDirectory") == "storybot" and env["STORYBOT_STATE_DIR"] == "%S/storybot"
    assert one(service, "CacheDirectory") == "storybot" and env["STORYBOT_MODELS_DIR"].startswith("%C/storybot/")
    assert one(service, "ConfigurationDirectory") == "storybot"
    assert one(service, "WorkingDirectory") == "%S/storybot"  # audio.wav_fallback is relative
    assert env["PYTHONFAULTHANDLER"] == "1"
    assert env["STORYBOT_ASSETS"] == "/opt/storybot/venv/share/storybot/assets"


def test_the_daemon_reads_those_variables(monkeypatch):
    """The names in the unit are the ones robot.plumbing.paths and engines.models really read."""
    from engines.models import models_dir
    from robot.plumbing.paths import assets_dir, state_dir

    monkeypatch.setenv("STORYBOT_STATE_DIR", "/var/lib/storybot")
    monkeypatch.setenv("STORYBOT_MODELS_DIR", "/var/cache/storybot/models")
    monkeypatch.setenv("STORYBOT_ASSETS", "/opt/storybot/venv/share/storybot/assets")
    assert state_dir() == Path("/var/lib/storybot")
    assert models_dir() == Path("/var/cache/storybot/models")
    assert assets_dir() == Path("/opt/storybot/venv/share/storybot/assets")


def test_hardening(service):
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
        "PrivateDevices": "no",  # sound and serial devices are needed
        "PrivateNetwork": "yes",
        "RestrictAddressFamilies": "AF_UNIX",
    }
    for key, value in expected.items():
        assert one(service, key) == value, key
    assert "@system-service" in service["SystemCallFilter"]
    allowed = {v.split()[0] for v in service["DeviceAllow"]}
    assert {"char-alsa", "char-ttyACM", "char-ttyUSB", "char-ttyS", "char-gpiochip"} <= allowed


def test_swap_unit_runs_first_and_stays(tmp_path):
    swap_unit = parse_unit((ROOT / "systemd" / "storybot-swap.service").read_text())
    assert one(swap_unit["Service"], "Type") == "oneshot"
    assert one(swap_unit["Service"], "RemainAfterExit") == "yes"
    assert "storybot.service" in one(swap_unit["Unit"], "Before")
    assert one(swap_unit["Service"], "ExecStart") == "/opt/storybot/venv/bin/python -m robot.memory.swap on"
    main = parse_unit((ROOT / "systemd" / "storybot.service").read_text())["Unit"]
    assert "storybot-swap.service" in one(main, "Wants") and "storybot-swap.service" in one(main, "After")
    # the command lines the units run exist in this checkout
    for argv in ([sys.executable, "-m", "robot.memory.swap", "--help"], [STORYBOT, "run", "--help"]):
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage:" in out.stdout, out.stderr


# ------------------------------------------------------------------------------------------ security score


def security_offline_supported() -> bool:
    out = subprocess.run([analyze(), "security", "--help"], capture_output=True, text=True, timeout=30)
    return "--offline" in out.stdout


def exposure(path: Path) -> float:
    out = subprocess.run(
        [analyze(), "security", "--offline=true", "--no-pager", str(path)], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


def test_security_exposure_is_low(tmp_path):
    if not security_offline_supported():
        pytest.skip("this systemd-analyze has no security --offline (systemd < 250): no score is computed")
    units = dict(zip(UNITS, staged_units(tmp_path), strict=True))
    score = exposure(units["storybot.service"])
    assert score <= SECURITY_THRESHOLD, f"storybot.service exposure {score}"
    assert exposure(units["storybot-swap.service"]) <= 4.0  # root, swapon and modprobe: "OK" at best

    # the score reacts to the unit: without the hardening block it is far worse
    bare = tmp_path / "bare" / "storybot.service"
    bare.parent.mkdir()
    text = units["storybot.service"].read_text()
    bare.write_text(text[: text.index("# Hardening.")] + "\n[Install]\nWantedBy=multi-user.target\n")
    assert exposure(bare) > score + 5


# ------------------------------------------------------------------------------------------ W^X


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3)
        print("unsupported"); sys.exit(0)
    import numpy
    numpy.dot(numpy.ones(64), numpy.ones(64))
    import sounddevice
    try:
        sounddevice._ffi.callback("PaStreamCallback", error=0)(lambda *a: 0)
        print("callback ok")
    except MemoryError:
        print("callback refused")
    """
)


def test_memory_deny_write_execute_stays_off_because_audio_callbacks_need_it(service):
    """sounddevice makes every stream's callback with cffi's ffi.callback(), which needs W+X memory; under
    MemoryDenyWriteExecute the daemon could not open a microphone. The kernel's own W^X switch (PR_SET_MDWE)
    shows it on this machine; NumPy is fine either way."""
    assert one(service, "MemoryDenyWriteExecute") == "no"
    try:
        import sounddevice  # noqa: F401
    except OSError as e:
        need(False, f"sounddevice cannot load PortAudio ({e}); Debian package libportaudio2")
    out = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "unsupported":
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3): W^X cannot be tried here")
    assert out.stdout.strip() == "callback refused", (
        "cffi callbacks now work under W^X: MemoryDenyWriteExecute=yes may be possible; check sounddevice streams"
    )
