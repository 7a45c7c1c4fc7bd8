"""robot.memory.swap (storybot-swap.service): configuration errors, dry runs, and real swap as root.

The swap tests use a 16 MB swapfile in a temporary directory and a 16 MB zram device of their own; they never
touch swap that is not labelled "storybot", and leave vm.swappiness as they found it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robot.memory import swap
from tests.conftest import ROOT, need


def run_swap(*args: str, config: Path, run_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, STORYBOT_SWAP_RUN_DIR=str(run_dir))
    return subprocess.run(
        [sys.executable, "-m", "robot.memory.swap", "--config", str(config), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_config(cfg: Path, **swap_keys) -> Path:
    lines = ["[engine]", "threads = 0  # not ours: the swap tool reads [swap] only", "[swap]"]
    for key, value in swap_keys.items():
        literal = f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else value
        lines.append(f"{key} = {literal}")
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def active() -> list[swap.ActiveSwap]:
    return swap.active_swaps()


# ------------------------------------------------------------------------------------------ configuration


def test_defaults_when_the_file_or_section_is_absent(tmp_path):
    assert swap.load_settings(tmp_path / "missing.toml") == swap.SwapSettings()
    (tmp_path / "other.toml").write_text("[engine]\nthreads = 2\n")
    assert swap.load_settings(tmp_path / "other.toml") == swap.SwapSettings()


def test_good_settings_are_read(tmp_path):
    cfg = write_config(tmp_path / "s.toml", enabled=False, kind="zram", size_mb=64, path="/srv/sw", swappiness=0)
    assert swap.load_settings(cfg) == swap.SwapSettings(False, "zram", 64, "/srv/sw", 0)


@pytest.mark.parametrize(
    "body, names",
    [
        ('[swap]\nsize_mb = "big"\n', ["swap.size_mb", "'big'", "8 to 65536"]),
        ("[swap]\nsize_mb = 4\n", ["swap.size_mb", "4"]),
        ("[swap]\nsize_mb = true\n", ["swap.size_mb", "True"]),
        ('[swap]\nkind = "ram"\n', ["swap.kind", "'ram'", "auto", "zram", "file"]),
        ("[swap]\nswappiness = 300\n", ["swap.swappiness", "300", "0 to 200"]),
        ('[swap]\npath = "swapfile"\n', ["swap.path", "absolute"]),
        ('[swap]\nenabled = "yes"\n', ["swap.enabled", "true or false"]),
        ("[swap]\nsize = 64\n", ["unknown key swap.size", "size_mb"]),
        ("swap = 1\n", ["swap must be a table"]),
        ("[swap\nkind = 1\n", ["TOML syntax error", "line 1"]),
    ],
)
def test_bad_settings_name_the_file_and_key_and_exit_78(tmp_path, body, names):
    cfg = tmp_path / "storybot.toml"
    cfg.write_text(body)
    with pytest.raises(swap.SwapConfigError) as err:
        swap.load_settings(cfg)
    for name in [str(cfg), *names]:
        assert name in str(err.value)
    out = run_swap("on", config=cfg, run_dir=tmp_path / "run")
    assert out.returncode == swap.EX_CONFIG, out
    assert out.stderr.startswith("storybot-swap: configuration error: ") and str(cfg) in out.stderr


def test_the_starter_config_documents_the_real_defaults(tmp_path):
    """systemd/storybot.toml's commented [swap] section, uncommented, is exactly the tool's defaults."""
    lines = (ROOT / "systemd" / "storybot.toml").read_text().splitlines()
    start = lines.index("# [swap]")
    section = [line.removeprefix("# ") for line in lines[start:] if line.startswith("# ")]
    cfg = tmp_path / "s.toml"
    cfg.write_text("\n".join(section) + "\n")
    assert swap.load_settings(cfg) == swap.SwapSettings()


def test_status_and_dry_run_change_nothing(tmp_path):
    cfg = write_config(tmp_path / "s.toml", kind="file", size_mb=16, path=str(tmp_path / "sw" / "swapfile"))
    swappiness = swap.read_swappiness()
    out = run_swap("on", "--dry-run", config=cfg, run_dir=tmp_path / "run")
    assert out.returncode == 0, out.stderr
    assert f"would create a 16 MB swapfile {tmp_path / 'sw' / 'swapfile'}" in out.stdout
    out = run_swap("--dry-run", "off", config=cfg, run_dir=tmp_path / "run")
    assert out.returncode == 0, out.stderr
    out = run_swap("status", config=cfg, run_dir=tmp_path / "run")
    assert out.returncode == 0 and "vm.swappiness:" in out.stdout and "kind=file size_mb=16" in out.stdout
    assert not (tmp_path / "sw").exists() and not (tmp_path / "run").exists()
    assert not any(str(tmp_path) in s.name for s in active()) and swap.read_swappiness() == swappiness


# ------------------------------------------------------------------------------------------ real swap (root)


@pytest.fixture
def can_swap(tmp_path):
    """Root, and the kernel lets this machine swapon a file (containers often do not)."""
    need(os.geteuid() == 0, "swap tests need root (swapon)")
    need(shutil.which("mkswap") is not None, "mkswap is not installed (util-linux)")
    probe = tmp_path / "probe.swap"
    with open(probe, "wb") as f:
        f.write(b"\0" * (4 << 20))
    os.chmod(probe, 0o600)
    subprocess.run(["mkswap", str(probe)], check=True, capture_output=True)
    try:
        swap._swapon(str(probe), 1)
    except swap.SwapError as e:
        need(False, f"this machine does not allow swapon: {e}")
    swap._swapoff(str(probe))
    probe.unlink()


@pytest.fixture
def cleanup(tmp_path):
    """Whatever a test leaves on (a failing one), turned off; vm.swappiness restored."""
    swappiness = swap.read_swappiness()
    before = {s.name for s in active()}
    yield
    for s in active():
        if s.name not in before and (s.ours or s.name.startswith(str(tmp_path))):
            subprocess.run(["swapoff", s.name], capture_output=True)
            if s.zram:
                swap.zram_release(s.zram)
    swap.SWAPPINESS.write_text(f"{swappiness}\n")


def test_swapfile_on_is_idempotent_and_off_undoes_it(tmp_path, can_swap, cleanup):
    path = tmp_path / "sw" / "swapfile"
    now = swap.read_swappiness()
    cfg = write_config(tmp_path / "s.toml", kind="file", size_mb=16, path=str(path), swappiness=now)
    run_dir = tmp_path / "run"

    out = run_swap("on", config=cfg, run_dir=run_dir)
    assert out.returncode == 0, out.stderr
    mine = [s for s in active() if s.name == str(path)]
    assert len(mine) == 1 and mine[0].ours and mine[0].priority == swap.FILE_PRIORITY and mine[0].type == "file"
    assert path.stat().st_size == 16 << 20 and (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700

    again = run_swap("on", config=cfg, run_dir=run_dir)
    assert again.returncode == 0, again.stderr
    assert "already active" in again.stdout
    assert [s.name for s in active()].count(str(path)) == 1

    status = run_swap("status", config=cfg, run_dir=run_dir)
    assert f"active: {path} (file, " in status.stdout and "storybot)" in status.stdout

    off = run_swap("off", config=cfg, run_dir=run_dir)
    assert off.returncode == 0, off.stderr
    assert str(path) not in [s.name for s in active()]
    assert path.exists()  # kept for the next boot
    assert "not active" in run_swap("off", config=cfg, run_dir=run_dir).stdout  # off twice is fine

    on = run_swap("on", config=cfg, run_dir=run_dir)  # the kept file is reused
    assert on.returncode == 0 and f"swapon {path}" in on.stdout, on
    assert run_swap("off", "--delete", config=cfg, run_dir=run_dir).returncode == 0
    assert not path.exists() and str(path) not in [s.name for s in active()]


def test_a_new_size_replaces_the_swapfile(tmp_path, can_swap, cleanup):
    path = tmp_path / "swapfile"
    now = swap.read_swappiness()
    run_dir = tmp_path / "run"
    assert (
        run_swap(
            "on",
            config=write_config(tmp_path / "a.toml", kind="file", size_mb=16, path=str(path), swappiness=now),
            run_dir=run_dir,
        ).returncode
        == 0
    )
    cfg = write_config(tmp_path / "b.toml", kind="file", size_mb=24, path=str(path), swappiness=now)
    out = run_swap("on", config=cfg, run_dir=run_dir)
    assert out.returncode == 0, out.stderr
    mine = [s for s in active() if s.name == str(path)]
    assert len(mine) == 1 and path.stat().st_size == 24 << 20
    assert run_swap("off", "--delete", config=cfg, run_dir=run_dir).returncode == 0


def test_swappiness_is_set_and_off_restores_it(tmp_path, can_swap, cleanup):
    before = swap.read_swappiness()
    want = before + 1 if before < 100 else before - 1
    cfg = write_config(tmp_path / "s.toml", kind="file", size_mb=16, path=str(tmp_path / "sw"), swappiness=want)
    run_dir = tmp_path / "run"
    out = run_swap("on", config=cfg, run_dir=run_dir)
    assert out.returncode == 0, out.stderr
    assert swap.read_swappiness() == want
    assert (run_dir / "swappiness.orig").read_text().strip() == str(before)
    run_swap("on", config=cfg, run_dir=run_dir)  # a second on must not record want as the original
    assert run_swap("off", "--delete", config=cfg, run_dir=run_dir).returncode == 0
    assert swap.read_swappiness() == before and not (run_dir / "swappiness.orig").exists()


def test_a_foreign_file_at_the_path_is_refused_and_left_alone(tmp_path, can_swap, cleanup):
    path = tmp_path / "precious"
    path.write_bytes(b"not a swapfile\n")
    cfg = write_config(tmp_path / "s.toml", kind="file", size_mb=16, path=str(path), swappiness=-1)
    out = run_swap("on", config=cfg, run_dir=tmp_path / "run")
    assert out.returncode == swap.EX_FAIL
    assert f"swap.path {path} exists and is not storybot's swapfile" in out.stderr
    assert path.read_bytes() == b"not a swapfile\n"


def test_auto_leaves_existing_swap_alone(tmp_path, can_swap, cleanup):
    foreign = tmp_path / "foreign.swap"
    foreign.write_bytes(b"\0" * (8 << 20))
    os.chmod(foreign, 0o600)
    subprocess.run(["mkswap", "-L", "other", str(foreign)], check=True, capture_output=True)
    swap._swapon(str(foreign), 1)
    try:
        cfg = write_config(tmp_path / "s.toml", kind="auto", size_mb=16, path=str(tmp_path / "sw"))
        before = swap.read_swappiness()
        out = run_swap("on", config=cfg, run_dir=tmp_path / "run")
        assert out.returncode == 0, out.stderr
        assert "swap is already provided by" in out.stdout and str(foreign) in out.stdout
        assert not any(s.ours and s.name.startswith(str(tmp_path)) for s in active())
        assert swap.read_swappiness() == before  # automatic swappiness is left alone too
        status = run_swap("status", config=cfg, run_dir=tmp_path / "run").stdout
        assert f"active: {foreign} (file, 7 MB, 0 MB used, priority 1, not storybot's)" in status
        off = run_swap("off", config=cfg, run_dir=tmp_path / "run")  # off never touches swap that is not ours
        assert off.returncode == 0 and str(foreign) in [s.name for s in active()]
    finally:
        swap._swapoff(str(foreign))


def test_disabled_turns_ours_off(tmp_path, can_swap, cleanup):
    path = tmp_path / "swapfile"
    now = swap.read_swappiness()
    run_dir = tmp_path / "run"
    on = write_config(tmp_path / "on.toml", kind="file", size_mb=16, path=str(path), swappiness=now)
    assert run_swap("on", config=on, run_dir=run_dir).returncode == 0
    off = write_config(tmp_path / "off.toml", enabled=False, kind="file", size_mb=16, path=str(path))
    out = run_swap("on", config=off, run_dir=run_dir)
    assert out.returncode == 0 and "swap.enabled = false" in out.stdout, out
    assert str(path) not in [s.name for s in active()]


def _zram_usable() -> bool:
    if swap.zram_loaded():
        return True
    return subprocess.run(["modprobe", "-q", "zram"], capture_output=True).returncode == 0 and swap.zram_loaded()


def test_zram_on_is_idempotent_and_off_removes_it(tmp_path, can_swap, cleanup):
    if not _zram_usable():
        pytest.skip("this kernel has no zram (no /sys/block/zram*, modprobe zram failed)")
    now = swap.read_swappiness()
    cfg = write_config(tmp_path / "z.toml", kind="zram", size_mb=16, swappiness=now)
    run_dir = tmp_path / "run"
    before = {s.name for s in active()}

    out = run_swap("on", config=cfg, run_dir=run_dir)
    assert out.returncode == 0, out.stderr
    new = [s for s in active() if s.name not in before and s.ours]
    assert len(new) == 1 and new[0].zram and new[0].ours and new[0].priority == swap.ZRAM_PRIORITY
    dev = new[0].zram
    assert int((swap.SYS_BLOCK / dev / "disksize").read_text()) == 16 << 20

    again = run_swap("on", config=cfg, run_dir=run_dir)
    assert again.returncode == 0 and "already active" in again.stdout, again
    assert [s.name for s in active() if s.name not in before and s.ours] == [new[0].name]
    assert f"active: /dev/{dev} (partition" in run_swap("status", config=cfg, run_dir=run_dir).stdout

    off = run_swap("off", config=cfg, run_dir=run_dir)
    assert off.returncode == 0, off.stderr
    assert f"/dev/{dev}" not in [s.name for s in active()]
    disksize = swap.SYS_BLOCK / dev / "disksize"
    assert not disksize.exists() or disksize.read_text().strip() == "0"  # removed, or at least reset
