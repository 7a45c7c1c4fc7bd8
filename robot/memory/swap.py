"""storybot's swap: zram where the kernel has it, else a managed swapfile, plus vm.swappiness.

    python -m robot.memory.swap [--config FILE] [--dry-run] on | off [--delete] | status

Settings come from the [swap] section of /etc/storybot/storybot.toml (read here with tomllib; the rest of the
file is not this tool's business). systemd/storybot-swap.service runs `on` before the daemon starts.

Swap holds cold pages only (idle Python heap, the ASR model between requests). The daemon's memory planner never
counts swap for model weights: weights in swap run 30-100x slower.

Every swap area this tool makes carries the swap label "storybot", so `on` is idempotent and `off` touches only
storybot's own swap, whatever else is active. The swappiness found before the first change is kept in
/run/storybot-swap/ and restored by `off`.

Exit status: 0 done, 1 the system refused (the message says what and why), 78 configuration error.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import re
import subprocess
import sys
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robot.plumbing.exits import Exit

CONFIG = Path("/etc/storybot/storybot.toml")
LABEL = "storybot"
EX_FAIL = Exit.FAIL
EX_CONFIG = Exit.CONFIG
ZRAM_PRIORITY = 100  # used before any swapfile
FILE_PRIORITY = 10
DEFAULT_PATH = "/var/lib/storybot-swap/swapfile"

PROC_SWAPS = Path("/proc/swaps")
SWAPPINESS = Path("/proc/sys/vm/swappiness")
SYS_BLOCK = Path("/sys/block")
ZRAM_CONTROL = Path("/sys/class/zram-control")


def run_dir() -> Path:
    return Path(os.environ.get("STORYBOT_SWAP_RUN_DIR", "/run/storybot-swap"))


class SwapConfigError(ValueError):
    """A mistake in the [swap] section; str() names the file and the key."""


class SwapError(RuntimeError):
    """The system refused a step; str() says which and why."""


# ---------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SwapSettings:
    enabled: bool = True
    kind: str = "auto"  # auto: zram when the kernel has it, else a swapfile
    size_mb: int = 0  # 0: zram half the RAM, a swapfile as large as the RAM (at most 1024 MB)
    path: str = DEFAULT_PATH  # the swapfile (kind file, or auto without zram)
    swappiness: int = -1  # -1: 100 with zram, 60 with a swapfile; 0-200: vm.swappiness


_KINDS = ("auto", "zram", "file")
_RULES: dict[str, tuple[type, str]] = {
    "enabled": (bool, "true or false"),
    "kind": (str, f"one of {list(_KINDS)}"),
    "size_mb": (int, "0 (automatic) or 8 to 65536"),
    "path": (str, "an absolute file path"),
    "swappiness": (int, "-1 (automatic) or 0 to 200"),
}


def load_settings(path: Path = CONFIG) -> SwapSettings:
    """The [swap] section of path; defaults when the file or the section is absent."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return SwapSettings()
    except OSError as e:
        raise SwapConfigError(f"{path}: cannot read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise SwapConfigError(f"{path}: TOML syntax error: {e}") from None
    table = data.get("swap", {})
    if not isinstance(table, dict):
        raise SwapConfigError(f"{path}: swap must be a table [swap], got {type(table).__name__}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _RULES:
            raise SwapConfigError(f"{path}: unknown key swap.{key}, expected one of {sorted(_RULES)}")
        kind, expected = _RULES[key]
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if ok and key == "kind":
            ok = value in _KINDS
        elif ok and key == "size_mb":
            ok = value == 0 or 8 <= value <= 65536
        elif ok and key == "path":
            ok = value.startswith("/") and not value.endswith("/") and "\n" not in value
        elif ok and key == "swappiness":
            ok = -1 <= value <= 200
        if not ok:
            raise SwapConfigError(f"{path}: swap.{key} is {value!r}, expected {expected}")
        values[key] = value
    return SwapSettings(**values)


# ---------------------------------------------------------------------------------------------- what is active


@dataclass(frozen=True)
class ActiveSwap:
    name: str  # as /proc/swaps shows it: /dev/zram0 or the swapfile's path
    type: str  # partition or file
    size_kb: int
    used_kb: int
    priority: int
    label: str | None  # None when the header cannot be read (not root)

    @property
    def ours(self) -> bool:
        return self.label == LABEL

    @property
    def zram(self) -> str | None:
        """zramN when this is a zram device."""
        m = re.fullmatch(r"/dev/(zram\d+)", self.name)
        return m.group(1) if m else None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def active_swaps() -> list[ActiveSwap]:
    swaps = []
    for line in PROC_SWAPS.read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        name = _unescape(parts[0])
        swaps.append(ActiveSwap(name, parts[1], int(parts[2]), int(parts[3]), int(parts[4]), swap_label(name)))
    return swaps


def swap_label(path: str) -> str | None:
    """The label in a swap header ("" when there is none), None when unreadable or not a swap area."""
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open(path, "rb") as f:
            header = f.read(page)
    except OSError:
        return None
    if len(header) < page or header[page - 10 :] != b"SWAPSPACE2":
        return None
    # union swap_header: bootbits[1024], version, last_page, nr_badpages, uuid[16], volume_name[16]
    return header[1052:1068].split(b"\0", 1)[0].decode("utf-8", "replace")


def mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SwapError("/proc/meminfo has no MemTotal")


def read_swappiness() -> int:
    return int(SWAPPINESS.read_text())


# ---------------------------------------------------------------------------------------------- system calls

_libc = ctypes.CDLL(None, use_errno=True)
_SWAP_FLAG_PREFER = 0x8000
_SWAP_FLAG_PRIO_MASK = 0x7FFF


def _swapon(path: str, priority: int) -> None:
    if _libc.swapon(os.fsencode(path), _SWAP_FLAG_PREFER | (priority & _SWAP_FLAG_PRIO_MASK)) != 0:
        e = ctypes.get_errno()
        hint = {
            errno.EPERM: " (needs root with CAP_SYS_ADMIN, outside a container that forbids it)",
            errno.EINVAL: " (a file with holes, or a file system that cannot hold swap, e.g. tmpfs or btrfs CoW)",
            errno.EBUSY: " (already in use)",
        }.get(e, "")
        raise SwapError(f"swapon {path}: {os.strerror(e)}{hint}")


def _swapoff(path: str) -> None:
    if _libc.swapoff(os.fsencode(path)) != 0:
        e = ctypes.get_errno()
        hint = " (not enough free memory to take its pages back)" if e == errno.ENOMEM else ""
        raise SwapError(f"swapoff {path}: {os.strerror(e)}{hint}")


def _mkswap(path: str) -> None:
    try:
        out = subprocess.run(["mkswap", "-L", LABEL, path], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SwapError("mkswap is not installed (Debian: util-linux; BusyBox: mkswap applet)") from None
    if out.returncode != 0:
        raise SwapError(f"mkswap {path}: {(out.stderr or out.stdout).strip()}")


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise SwapError(f"cannot write {value.strip()!r} to {path}: {e.strerror}") from None


# ---------------------------------------------------------------------------------------------- zram


def zram_loaded() -> bool:
    return ZRAM_CONTROL.is_dir() or any(SYS_BLOCK.glob("zram*"))


def zram_modprobe(dry_run: bool) -> bool:
    """Whether zram is (or, in a dry run, could be) available; loads the module when it is not."""
    if zram_loaded():
        return True
    try:
        probe = subprocess.run(["modprobe", *(["-n"] if dry_run else []), "-q", "zram"], timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and (dry_run or zram_loaded())


def _zram_free_device() -> str:
    """A zram device for us: a new one from zram-control, else an unused zramN."""
    hot_add = ZRAM_CONTROL / "hot_add"
    if hot_add.exists():
        try:
            return f"zram{int(hot_add.read_text())}"
        except OSError as e:
            raise SwapError(f"cannot add a zram device ({hot_add}: {e.strerror})") from None
    in_use = {s.zram for s in active_swaps()}
    for dev in sorted(SYS_BLOCK.glob("zram*")):
        if dev.name not in in_use and (dev / "disksize").read_text().strip() == "0":
            return dev.name
    raise SwapError("every zram device is in use and this kernel cannot add one (no /sys/class/zram-control)")


def _zram_algorithm(dev: str) -> str | None:
    """lz4 (fast, good enough on text-like heaps) when offered, else the kernel's default."""
    try:
        offered = (SYS_BLOCK / dev / "comp_algorithm").read_text().replace("[", " ").replace("]", " ").split()
    except OSError:
        return None
    for algo in ("lz4", "lzo-rle", "lzo"):
        if algo in offered:
            return algo
    return None


def zram_release(dev: str) -> None:
    sys_dev = SYS_BLOCK / dev
    if (sys_dev / "reset").exists():
        _write(sys_dev / "reset", "1")
    remove = ZRAM_CONTROL / "hot_remove"
    if remove.exists() and dev != "zram0":  # zram0 is the module's own; removing it is allowed but surprising
        try:
            remove.write_text(dev.removeprefix("zram"))
        except OSError:
            pass  # still a reset device, free for the next user


def zram_on(size_mb: int) -> str:
    dev = _zram_free_device()
    try:
        algo = _zram_algorithm(dev)
        if algo:
            try:
                (SYS_BLOCK / dev / "comp_algorithm").write_text(algo)
            except OSError:
                pass  # the default algorithm is fine
        _write(SYS_BLOCK / dev / "disksize", f"{size_mb}M")
        node = f"/dev/{dev}"
        if not Path(node).exists():
            raise SwapError(f"{node} did not appear (devtmpfs not mounted?)")
        _mkswap(node)
        _swapon(node, ZRAM_PRIORITY)
    except BaseException:
        zram_release(dev)
        raise
    return f"/dev/{dev}"


def zram_stats(dev: str) -> str:
    sys_dev = SYS_BLOCK / dev
    try:
        algo = re.search(r"\[(\S+)\]", (sys_dev / "comp_algorithm").read_text())
        fields = (sys_dev / "mm_stat").read_text().split()
        orig, compr, used = (int(x) // 1024 for x in fields[:3])
    except (OSError, ValueError, IndexError):
        return ""
    return f"{algo.group(1) if algo else '?'}, data {orig} KB compressed to {compr} KB, {used} KB RAM used"


# ---------------------------------------------------------------------------------------------- swapfile


def _fill(fd: int, size: int) -> None:
    chunk = b"\0" * (1 << 20)
    os.lseek(fd, 0, os.SEEK_SET)
    left = size
    while left > 0:
        left -= os.write(fd, chunk[: min(left, len(chunk))])


def swapfile_on(path: Path, size_mb: int) -> None:
    size = size_mb << 20
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    free = os.statvfs(path.parent)
    if free.f_bavail * free.f_frsize < size + (64 << 20):
        raise SwapError(
            f"{path.parent}: {free.f_bavail * free.f_frsize >> 20} MB free, a {size_mb} MB swapfile needs "
            f"{size_mb + 64} MB (set swap.size_mb lower or swap.path elsewhere)"
        )
    for zero_fill in (False, True):
        tmp = path.with_name(path.name + ".new")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if zero_fill:
                _fill(fd, size)
            else:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise SwapError(f"{tmp}: no space left for {size_mb} MB") from None
                    _fill(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        _mkswap(str(tmp))
        os.replace(tmp, path)
        try:
            _swapon(str(path), FILE_PRIORITY)
            return
        except SwapError:
            if zero_fill:
                raise
            path.unlink()  # maybe fallocate left unwritten extents this file system will not swap on: write zeros


# ---------------------------------------------------------------------------------------------- the plan


@dataclass
class Step:
    says: str
    action: Any = None  # a callable, None for a note


def _wanted_size(kind: str, settings: SwapSettings) -> int:
    if settings.size_mb:
        return settings.size_mb
    ram = mem_total_mb()
    return min(max(16, ram // 2), 4096) if kind == "zram" else min(max(ram, 64), 1024)


def _swappiness_steps(settings: SwapSettings, kind: str | None) -> list[Step]:
    want = settings.swappiness
    if want == -1:
        if kind is None:
            return []
        # zram is cheap to swap to, and a high value keeps file-backed (mmap'ed) model pages in RAM rather than
        # the anonymous heap; a swapfile on an SD card is slow and wears it.
        want = 100 if kind == "zram" else 60
    if read_swappiness() == want:
        return [Step(f"vm.swappiness is already {want}")]
    return [Step(f"set vm.swappiness to {want} (now {read_swappiness()})", lambda: _set_swappiness(want))]


def _set_swappiness(value: int) -> None:
    saved = run_dir() / "swappiness.orig"
    if not saved.exists():
        saved.write_text(f"{read_swappiness()}\n")
    try:
        SWAPPINESS.write_text(f"{value}\n")
    except OSError as e:
        hint = " (kernels before 5.8 accept 0 to 100)" if value > 100 and e.errno == errno.EINVAL else ""
        raise SwapError(f"cannot set vm.swappiness to {value}: {e.strerror}{hint}") from None


def _off_steps(swap: ActiveSwap, delete: bool) -> list[Step]:
    steps = [Step(f"swapoff {swap.name} ({swap.used_kb} KB in use)", lambda: _swapoff(swap.name))]
    if swap.zram:
        steps.append(Step(f"reset and remove {swap.zram}", lambda: zram_release(swap.zram)))
    elif delete:
        steps.append(Step(f"delete {swap.name}", lambda: Path(swap.name).unlink(missing_ok=True)))
    return steps


def plan_on(settings: SwapSettings, dry_run: bool) -> list[Step]:
    ours = [s for s in active_swaps() if s.ours]
    if not settings.enabled:
        return [Step("swap.enabled = false: storybot's swap stays off")] + plan_off(False, settings)
    kind = settings.kind
    if kind == "auto":
        foreign = [s.name for s in active_swaps() if not s.ours]
        if foreign and not ours:
            return [
                Step(f"swap is already provided by {', '.join(foreign)}; leaving it (set swap.kind to add storybot's)")
            ] + _swappiness_steps(settings, kind=None)
        kind = "zram" if zram_modprobe(dry_run) else "file"
    elif kind == "zram" and not zram_modprobe(dry_run):
        raise SwapError("swap.kind = 'zram' but this kernel has no zram (modprobe zram failed)")
    size_mb = _wanted_size(kind, settings)
    path = os.path.realpath(settings.path)
    steps: list[Step] = []
    keep = None
    for swap in ours:
        if kind == "zram" and swap.zram and _zram_size_mb(swap.zram) == size_mb:
            keep = swap
        elif kind == "file" and not swap.zram and swap.name == path and Path(path).stat().st_size == size_mb << 20:
            keep = swap
        else:
            steps += _off_steps(swap, delete=False)  # a swapfile at path is replaced below
    if keep:
        steps.append(Step(f"{kind} swap {keep.name} ({size_mb} MB) is already active"))
    elif kind == "zram":
        steps.append(Step(f"make a {size_mb} MB zram swap (priority {ZRAM_PRIORITY})", lambda: zram_on(size_mb)))
    else:
        steps += _swapfile_steps(Path(path), size_mb)
    return steps + _swappiness_steps(settings, kind)


def _zram_size_mb(dev: str) -> int:
    try:
        return int((SYS_BLOCK / dev / "disksize").read_text()) >> 20
    except (OSError, ValueError):
        return -1


def _swapfile_steps(path: Path, size_mb: int) -> list[Step]:
    if path.is_dir():
        raise SwapError(f"swap.path {path} is a directory")
    if path.exists():
        label = swap_label(str(path))
        if label != LABEL:
            raise SwapError(f"swap.path {path} exists and is not storybot's swapfile; choose another swap.path")
        if path.stat().st_size == size_mb << 20:
            return [
                Step(
                    f"swapon {path} ({size_mb} MB, priority {FILE_PRIORITY})", lambda: _swapon(str(path), FILE_PRIORITY)
                )
            ]
        return [
            Step(f"delete {path} (not {size_mb} MB)", lambda: path.unlink(missing_ok=True)),
            Step(f"create a {size_mb} MB swapfile {path} and swapon", lambda: swapfile_on(path, size_mb)),
        ]
    return [
        Step(
            f"create a {size_mb} MB swapfile {path} (mode 600, priority {FILE_PRIORITY}) and swapon",
            lambda: swapfile_on(path, size_mb),
        )
    ]


def plan_off(delete: bool, settings: SwapSettings) -> list[Step]:
    steps: list[Step] = []
    ours = [s for s in active_swaps() if s.ours]
    for swap in ours:
        steps += _off_steps(swap, delete)
    path = Path(settings.path)
    if delete and path.name not in {Path(s.name).name for s in ours} and swap_label(str(path)) == LABEL:
        steps.append(Step(f"delete {path}", lambda: path.unlink()))
    saved = run_dir() / "swappiness.orig"
    if saved.exists():
        value = int(saved.read_text())

        def restore_swappiness() -> None:
            _set_swappiness(value)
            saved.unlink()

        steps.append(Step(f"restore vm.swappiness to {value}", restore_swappiness))
    if not steps:
        steps.append(Step("storybot's swap is not active"))
    return steps


def status(settings: SwapSettings, config: Path) -> str:
    lines = []
    swaps = active_swaps()
    for s in swaps:
        owner = "storybot" if s.ours else ("unknown owner" if s.label is None else "not storybot's")
        extra = f"; {zram_stats(s.zram)}" if s.zram else ""
        lines.append(
            f"active: {s.name} ({s.type}, {s.size_kb // 1024} MB, {s.used_kb // 1024} MB used, "
            f"priority {s.priority}, {owner}){extra}"
        )
    if not swaps:
        lines.append("active: no swap")
    lines.append(f"vm.swappiness: {read_swappiness()}")
    lines.append(
        f"configured ({config}): enabled={str(settings.enabled).lower()} kind={settings.kind} "
        f"size_mb={settings.size_mb or 'auto'} path={settings.path} swappiness={settings.swappiness}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command line


@contextmanager
def _locked():
    d = run_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(d / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m robot.memory.swap",
        description="storybot's swap: zram where the kernel has it, else a managed swapfile, and vm.swappiness, "
        "from the [swap] section of the configuration.",
        epilog="exit status: 0 done, 1 the system refused a step, 78 configuration error",
    )
    common = argparse.ArgumentParser(add_help=False)
    # accepted before or after the command; SUPPRESS keeps a subcommand from resetting what came before it
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=f"configuration file (default {CONFIG})")
    common.add_argument(
        "--dry-run", action="store_true", default=argparse.SUPPRESS, help="print what would be done, change nothing"
    )
    parser.add_argument("--config", type=Path, default=CONFIG, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("on", parents=[common], help="set up the configured swap (idempotent)")
    off = sub.add_parser("off", parents=[common], help="turn storybot's swap off and restore vm.swappiness")
    off.add_argument("--delete", action="store_true", help="also delete the swapfile")
    sub.add_parser("status", parents=[common], help="print the active swap and the configured settings")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.config)
    except SwapConfigError as e:
        print(f"storybot-swap: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    try:
        if args.command == "status":
            print(status(settings, args.config))
            return 0
        if args.dry_run:
            steps = plan_on(settings, True) if args.command == "on" else plan_off(args.delete, settings)
            for step in steps:
                print(f"storybot-swap: {'would ' if step.action else ''}{step.says}")
            return 0
        with _locked():
            steps = plan_on(settings, False) if args.command == "on" else plan_off(args.delete, settings)
            for step in steps:
                print(f"storybot-swap: {step.says}", flush=True)
                if step.action:
                    step.action()
    except SwapError as e:
        print(f"storybot-swap: {e}", file=sys.stderr)
        return EX_FAIL
    except OSError as e:
        print(f"storybot-swap: {e}", file=sys.stderr)
        return EX_FAIL
    return 0


if __name__ == "__main__":
    sys.exit(main())
