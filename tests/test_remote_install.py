"""The board installer and the remote engine: the unit stays offline unless engine.backend = "remote", and then
its drop-in opens the network to the model server's addresses only (scripts/install-board.sh, 20-remote.conf)."""

from __future__ import annotations

from pathlib import Path

from tests.test_install import _root_and_tools, install, stub_venv  # noqa: F401  (the fixture skips without root)

DROPIN = "etc/systemd/system/storybot.service.d/20-remote.conf"


def staged(tmp_path: Path, config: str | None) -> Path:
    root = tmp_path / "root"
    stub_venv(root)
    if config is not None:
        (root / "etc/storybot").mkdir(parents=True, exist_ok=True)
        (root / "etc/storybot/storybot.toml").write_text(config)
    return root


def test_without_the_remote_engine_the_unit_stays_offline(tmp_path):
    root = staged(tmp_path, None)
    out = install("--root", str(root), "--skip-venv", "--no-enable")
    assert out.returncode == 0, out.stderr
    assert not (root / DROPIN).exists()
    unit = (root / "etc/systemd/system/storybot.service").read_text()
    assert "PrivateNetwork=yes" in unit and "IPAddressDeny=any" in unit


def test_a_remote_engine_opens_only_the_servers_address(tmp_path):
    root = staged(tmp_path, '[engine]\nbackend = "remote"\nremote_url = "http://192.168.1.20:8080"\n')
    out = install("--root", str(root), "--skip-venv", "--no-enable")
    assert out.returncode == 0, out.stderr
    dropin = (root / DROPIN).read_text()
    assert "IPAddressAllow=192.168.1.20/32\n" in dropin
    assert "PrivateNetwork=no" in dropin and "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in dropin
    assert "IPAddressDeny" not in dropin.split("[Service]")[1], "the unit's IPAddressDeny=any must stay"
    assert "systemd-analyze verify: storybot-swap.service storybot.service ok" in out.stderr
    # back to a local engine: the drop-in goes, the unit is offline again
    (root / "etc/storybot/storybot.toml").write_text('[engine]\nbackend = "llama2c"\n')
    out = install("--root", str(root), "--skip-venv", "--no-enable")
    assert out.returncode == 0, out.stderr
    assert not (root / DROPIN).exists()


def test_a_host_name_needs_an_explicit_range(tmp_path):
    root = staged(tmp_path, '[engine]\nbackend = "remote"\nremote_url = "https://models.home.arpa"\n')
    out = install("--root", str(root), "--skip-venv", "--no-enable")
    assert out.returncode != 0
    assert "names the host 'models.home.arpa'" in out.stderr and "--remote-allow" in out.stderr
    out = install("--root", str(root), "--skip-venv", "--no-enable", "--remote-allow", "192.168.1.0/24, fd00::/8")
    assert out.returncode == 0, out.stderr
    assert "IPAddressAllow=192.168.1.0/24 fd00::/8\n" in (root / DROPIN).read_text()
    out = install("--root", str(root), "--skip-venv", "--no-enable", "--remote-allow", "192.168.1.300/24")
    assert out.returncode != 0 and "--remote-allow" in out.stderr
