"""The systemd notify protocol from the service manager's side, and `storybot run` launched under it.

NotifyListener binds an AF_UNIX datagram socket (what systemd passes as NOTIFY_SOCKET), receives every datagram
with its arrival time (time.monotonic) and its sender's pid (SO_PASSCRED, as systemd checks NotifyAccess=main).
RobotProcess runs `storybot run -v` in the sound room with NOTIFY_SOCKET / WATCHDOG_USEC and extra environment,
stamping every stdout and stderr line with its arrival time. Used by tests/test_reliability.py and scripts/soak.py.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.soundroom import warm_state_dir

STORYBOT = str(Path(sys.executable).with_name("storybot"))


@dataclass(frozen=True)
class Message:
    at: float  # time.monotonic() on arrival
    pid: int | None  # the sender, from SCM_CREDENTIALS
    fields: tuple[tuple[str, str], ...]  # ("READY", "1"), ("STATUS", "...") in datagram order

    def get(self, key: str) -> str | None:
        for k, v in self.fields:
            if k == key:
                return v
        return None


class NotifyListener:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = str(directory / "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self.messages: list[Message] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.path}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def _read(self) -> None:
        creds_size = struct.calcsize("3i")
        while not self._closed:
            try:
                data, ancdata, _, _ = self._sock.recvmsg(65536, socket.CMSG_SPACE(creds_size))
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:creds_size])[0]
            fields = []
            for line in data.decode("utf-8", "replace").split("\n"):
                if "=" in line:
                    key, _, value = line.partition("=")
                    fields.append((key, value))
            self.messages.append(Message(at, pid, tuple(fields)))

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self._thread.join(2)
        try:
            os.unlink(self.path)
        except OSError:
            pass

    # --- queries --------------------------------------------------------------------------------------

    def times(self, key: str, value: str | None = None, since: float = 0.0) -> list[float]:
        return [
            m.at for m in list(self.messages) if m.at >= since and (v := m.get(key)) is not None and value in (None, v)
        ]

    def first(self, key: str, value: str | None = None, since: float = 0.0) -> float | None:
        found = self.times(key, value, since)
        return found[0] if found else None

    def statuses(self, since: float = 0.0) -> list[str]:
        return [m.get("STATUS") for m in list(self.messages) if m.at >= since and m.get("STATUS") is not None]

    def status_at(self, at: float) -> str | None:
        """The STATUS in force at time `at` (the last one sent before it)."""
        latest = None
        for m in list(self.messages):
            if m.at <= at and m.get("STATUS") is not None:
                latest = m.get("STATUS")
        return latest

    def wait_for(self, key: str, value: str | None, timeout_s: float, since: float = 0.0, alive=None) -> float:
        """The arrival of the first KEY(=VALUE) since `since`; TimeoutError after timeout_s or when alive() fails."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            at = self.first(key, value, since)
            if at is not None:
                return at
            if alive is not None and not alive():
                break
            time.sleep(0.02)
        raise TimeoutError(
            f"no {key}{'=' + value if value is not None else ''} within {timeout_s} s; got {self.summary()}"
        )

    def wait_for_status(self, predicate, timeout_s: float, since: float = 0.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for status in self.statuses(since):
                if predicate(status):
                    return status
            time.sleep(0.02)
        raise TimeoutError(f"no matching STATUS within {timeout_s} s; got {self.statuses(since)}")

    def watchdog_gaps(self, start: float, end: float) -> list[float]:
        """Gaps between consecutive WATCHDOG=1 in [start, end], the edges included as if pings."""
        pings = [start, *(t for t in self.times("WATCHDOG", "1") if start < t < end), end]
        return [b - a for a, b in zip(pings, pings[1:], strict=False)]

    def summary(self, limit: int = 40) -> str:
        """The messages, WATCHDOG pings folded, for failure messages."""
        out: list[str] = []
        pings = 0
        for m in list(self.messages):
            text = "\n".join(f"{k}={v}" for k, v in m.fields if k != "WATCHDOG")
            if m.get("WATCHDOG") is not None:
                pings += 1
            if text:
                if pings:
                    out.append(f"[{pings} x WATCHDOG=1]")
                    pings = 0
                out.append(text)
        if pings:
            out.append(f"[{pings} x WATCHDOG=1]")
        return "; ".join(out[-limit:])


class RobotProcess:
    """`storybot run -v` in the sound room, lines stamped on arrival: stdout (the story) and stderr (the log)."""

    def __init__(
        self,
        room_env: dict[str, str],
        state_dir: Path,
        *overrides: str,
        env: dict[str, str] | None = None,
        argv_prefix: tuple[str, ...] = (),
        preexec_fn=None,
    ) -> None:
        args = [a for o in overrides for a in ("--set", o)]
        full_env = {
            **room_env,
            "STORYBOT_STATE_DIR": str(warm_state_dir(state_dir)),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [*argv_prefix, STORYBOT, "run", "-v", *args],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            preexec_fn=preexec_fn,
            start_new_session=True,  # its own session, as systemd starts a service
        )
        self.pid = self.proc.pid
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list) -> None:
        for line in iter(stream.readline, ""):
            lines.append((time.monotonic(), line.rstrip("\n")))

    # --- output ---------------------------------------------------------------------------------------

    @property
    def stdout(self) -> list[str]:
        return [line for _, line in list(self.out)]

    @property
    def stderr(self) -> list[str]:
        return [line for _, line in list(self.err)]

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(self.stderr)[-chars:]

    def err_lines(self, needle: str, since: float = 0.0) -> list[tuple[float, str]]:
        return [(t, line) for t, line in list(self.err) if t >= since and needle in line]

    def out_lines(self, needle: str = "", since: float = 0.0) -> list[tuple[float, str]]:
        return [(t, line) for t, line in list(self.out) if t >= since and needle in line]

    def wait_err(self, needle: str, timeout_s: float, since: float = 0.0) -> float:
        """The arrival of the first stderr line containing needle since `since`."""
        return self.wait_until(
            lambda: self.err_lines(needle, since)[0][0] if self.err_lines(needle, since) else None,
            timeout_s,
            f"stderr {needle!r}",
        )

    def wait_out(self, needle: str, timeout_s: float, since: float = 0.0) -> float:
        return self.wait_until(
            lambda: self.out_lines(needle, since)[0][0] if self.out_lines(needle, since) else None,
            timeout_s,
            f"stdout {needle!r}",
        )

    def wait_until(self, condition, timeout_s: float, what: str):
        """condition()'s first truthy value; AssertionError naming `what` after timeout_s or when the daemon ends."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s} s; stderr tail:\n{self.log_tail()}")
            if self.proc.poll() is not None:
                time.sleep(0.3)  # the last lines
                value = condition()
                if value:
                    return value
                raise AssertionError(
                    f"{what}: the daemon exited ({self.proc.returncode}) first; stderr tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    # --- processes ------------------------------------------------------------------------------------

    def children(self) -> list[int]:
        return children_of(self.pid)

    def engine_pid(self) -> int | None:
        """The engine child: its command line runs an engine module or binary."""
        for pid in self.children():
            cmd = cmdline(pid)
            if "engines.llamacpp_worker" in cmd or "storybot-llama2c" in cmd or "scripted_engine" in cmd:
                return pid
        return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL of the daemon and everything left in its session (cleanup; never raises)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        kill_session_leftovers(self.pid)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        kill_session_leftovers(self.pid)


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10).stdout.split()
    return [int(p) for p in found]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_state(pid: int) -> str | None:
    """The State: letter of /proc/PID/status (R, S, T, Z, ...), None when the pid is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        return None
    return None


def is_gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z", "X")


def in_session_or_group(pid: int) -> list[tuple[int, str]]:
    """Live processes whose session id or process group id is `pid` (the daemon's own excluded)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,sid=,stat=,args="], capture_output=True, text=True, timeout=10)
    found = []
    for line in out.stdout.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4:
            continue
        p, pgid, sid, stat = int(parts[0]), int(parts[1]), int(parts[2]), parts[3]
        if p != pid and pid in (pgid, sid) and not stat.startswith("Z"):
            found.append((p, parts[4] if len(parts) > 4 else ""))
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def kill_session_leftovers(pid: int) -> None:
    """SIGKILL whatever the daemon left: its descendants and its engine's own process group (start_new_session)."""
    for p in descendants(pid):
        for kill in (os.killpg, os.kill):
            try:
                kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for p, _ in in_session_or_group(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
