"""The systemd drop-in that lets the service listen: the unit itself is offline (PrivateNetwork=yes,
RestrictAddressFamilies=AF_UNIX, IPAddressDeny=any); only when [web] is enabled does `storybot web-unit` write this
drop-in, and it removes it again when [web] is off, so the port is open exactly when the page is."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from robot.plumbing.config import Config

DROPIN_NAME = "20-web.conf"
# the home networks a phone may come from when the page listens beyond this machine
HOME_NETWORKS = "localhost link-local 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7"


def dropin_text(config: Config) -> str:
    web = config.web
    is_local = _is_loopback(web.host)
    allow = "localhost" if is_local else HOME_NETWORKS
    return (
        f"# written by `storybot web-unit`: [web] is enabled, the parents' page listens on {web.host}:{web.port}.\n"
        "# Remove [web] (or set enabled = false) and run it again to close the port.\n"
        "[Service]\n"
        "PrivateNetwork=no\n"
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n"
        f"IPAddressAllow={allow}\n"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_dropin(config: Config, directory: Path) -> str:
    """Write the drop-in into directory (storybot.service.d) when [web] is enabled, else remove it; what was done."""
    path = directory / DROPIN_NAME
    if not config.web.enabled:
        if path.exists():
            path.unlink()
            return f"removed {path}: [web] is not enabled"
        return f"no drop-in: [web] is not enabled ({path} absent)"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dropin_text(config))
    tmp.chmod(0o644)
    tmp.replace(path)
    return f"wrote {path}"


def web_unit_command(config: Config, directory: str | None) -> int:
    if directory is None:
        if not config.web.enabled:
            print("storybot: [web] is not enabled: the service needs no drop-in", file=sys.stderr)
            return 0
        sys.stdout.write(dropin_text(config))
        return 0
    try:
        print(f"storybot: {write_dropin(config, Path(directory))}", file=sys.stderr)
    except OSError as e:
        print(f"storybot: {directory}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0
