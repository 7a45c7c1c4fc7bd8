"""scripts/install-board.sh into a staging root (--root): where files land, the config kept, the units verified.

--skip-venv keeps each run under a second: a stub stands in for the venv's storybot (the real venv build is
the one step these tests do not cover; it is scripts/setup.sh's pip install, non-editable, under a prefix).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, need

UNITS = ("storybot.service", "storybot-swap.service")


@pytest.fixture(autouse=True)
def _root_and_tools():
    need(os.geteuid() == 0, "install-board.sh runs as root")
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed (Debian package systemd)")
    need(shutil.which("systemd-sysusers") is not None, "systemd-sysusers is not installed (Debian package systemd)")


def stub_venv(root: Path, prefix: str = "/opt/storybot") -> None:
    bin_dir = root / prefix.lstrip("/") / "venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "storybot").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "storybot").chmod(0o755)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)


def install(*args: str, checkout: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "install-board.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def tree(root: Path) -> dict[str, str]:
    """Every file and link under root with its content hash (links: their target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_help_and_bad_options():
    out = install("--help")
    assert out.returncode == 0 and "--root DIR" in out.stdout and "--prefix DIR" in out.stdout
    assert install("--frobnicate").returncode == 64


def test_staged_install_puts_everything_in_place(tmp_path):
    root = tmp_path / "root"
    stub_venv(root)
    out = install("--root", str(root), "--skip-venv")
    assert out.returncode == 0, out.stderr
    assert "systemd-analyze verify: storybot-swap.service storybot.service ok" in out.stderr

    for name in UNITS:
        unit = (root / "etc/systemd/system" / name).read_text()
        assert unit == (ROOT / "systemd" / name).read_text()  # the default prefix: unchanged
        link = root / "etc/systemd/system/multi-user.target.wants" / name
        assert os.readlink(link) == f"/etc/systemd/system/{name}"  # enabled, pointing inside the image
    assert (root / "etc/sysusers.d/storybot.conf").read_text() == (ROOT / "systemd/storybot.sysusers").read_text()
    passwd = (root / "etc/passwd").read_text()
    assert any(
        line.startswith("storybot:") and line.endswith(":/var/lib/storybot:/usr/sbin/nologin")
        for line in passwd.splitlines()
    )
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in (root / "etc/group").read_text().split()}
    assert "storybot" in groups["audio"] and "storybot" in groups["dialout"]

    config = root / "etc/storybot/storybot.toml"
    assert config.read_text() == (ROOT / "systemd/storybot.toml").read_text()
    assets = root / "opt/storybot/venv/share/storybot/assets"
    for rel in ("storybot.toml", "earcons/listen.wav", "stories/en.toml", "safety/en.toml", "asr/story-requests.jsgf"):
        assert (assets / rel).read_bytes() == (ROOT / "assets" / rel).read_bytes(), rel
    assert (root / "opt/storybot/share/doc/storybot/install.md").exists()
    assert not (root / "etc/systemd/system/storybot.service.d").exists()  # no gpio group in this root


def test_the_starter_config_is_valid_for_storybot(tmp_path):
    from robot.plumbing.config import load_config

    load_config(ROOT / "systemd" / "storybot.toml")  # raises ConfigError on any mistake


def test_second_run_changes_nothing_and_keeps_the_config(tmp_path):
    root = tmp_path / "root"
    stub_venv(root)
    (root / "etc/storybot").mkdir(parents=True)
    mine = "[engine]\nthreads = 1\n# my board\n"
    (root / "etc/storybot/storybot.toml").write_text(mine)
    assert install("--root", str(root), "--skip-venv").returncode == 0
    first = tree(root)
    again = install("--root", str(root), "--skip-venv")
    assert again.returncode == 0, again.stderr
    assert "keeping the existing /etc/storybot/storybot.toml" in again.stderr
    assert (root / "etc/storybot/storybot.toml").read_text() == mine
    assert tree(root) == first
    assert [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()].count("storybot") == 1


def test_prefix_rewrites_the_units(tmp_path):
    root = tmp_path / "root"
    stub_venv(root, "/srv/sb")
    out = install("--root", str(root), "--prefix", "/srv/sb", "--skip-venv", "--no-enable")
    assert out.returncode == 0, out.stderr
    unit = (root / "etc/systemd/system/storybot.service").read_text()
    assert "ExecStart=/srv/sb/venv/bin/storybot run" in unit and "/opt/storybot" not in unit
    assert "Environment=STORYBOT_ASSETS=/srv/sb/venv/share/storybot/assets" in unit
    assert str(root) not in unit  # the staging root never leaks into what the image runs
    assert (
        "/srv/sb/venv/bin/python -m robot.memory.swap on"
        in (root / "etc/systemd/system/storybot-swap.service").read_text()
    )
    assert (root / "srv/sb/venv/share/storybot/assets/storybot.toml").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants").exists()  # --no-enable


def test_gpio_group_gets_a_drop_in(tmp_path):
    root = tmp_path / "root"
    stub_venv(root)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/group").write_text("gpio:x:900:\n")
    out = install("--root", str(root), "--skip-venv", "--no-enable")
    assert out.returncode == 0, out.stderr
    assert "groups audio dialout gpio" in out.stderr
    dropin = (root / "etc/systemd/system/storybot.service.d/10-gpio.conf").read_text()
    assert "SupplementaryGroups=gpio" in dropin
    gpio = [line for line in (root / "etc/group").read_text().splitlines() if line.startswith("gpio:")]
    assert gpio == ["gpio:x:900:storybot"]


def test_a_broken_unit_fails_the_install(tmp_path):
    checkout = tmp_path / "checkout"
    for rel in ("scripts/install-board.sh", "pyproject.toml", "docs/install.md"):
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, checkout / rel)
    shutil.copytree(ROOT / "systemd", checkout / "systemd")
    shutil.copytree(ROOT / "assets", checkout / "assets")
    unit = checkout / "systemd/storybot.service"
    unit.write_text(unit.read_text().replace("OOMPolicy=continue", "OOMPolicy=contnue"))
    root = tmp_path / "root"
    stub_venv(root)
    out = install("--root", str(root), "--skip-venv", "--no-enable", checkout=checkout)
    assert out.returncode != 0
    assert "contnue" in out.stderr and "systemd-analyze verify found mistakes" in out.stderr


def test_a_missing_venv_fails_verification(tmp_path):
    out = install("--root", str(tmp_path / "root"), "--skip-venv", "--no-enable")
    assert out.returncode != 0
    assert "storybot is not executable" in out.stderr or "venv/bin/storybot" in out.stderr
