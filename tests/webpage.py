"""Helpers for the parents' page tests: a daemon with [web] enabled, an HTTP client that keeps its cookie, and the
listening sockets of a process read from /proc/net/tcp and tcp6."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
from pathlib import Path

from tests.notify import STORYBOT, RobotProcess

PASSWORD = "a long bedtime password"
TCP_LISTEN = "0A"  # the st column of /proc/net/tcp for a listening socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_password(state: Path, password: str = PASSWORD) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STORYBOT, "web-password"],
        input=password + "\n",
        env={**os.environ, "STORYBOT_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_web_daemon(room_env: dict, state: Path, port: int, *overrides: str) -> RobotProcess:
    """`storybot run` with the page on `port`; returns once the page listens (or raises naming why not)."""
    robot = RobotProcess(
        room_env,
        state,
        "web.enabled=true",
        f"web.port={port}",
        "button.earcon=false",
        *overrides,
    )
    robot.wait_err("the parents' page listens on", 90)
    return robot


class Client:
    """One browser's worth of HTTP: the session cookie it was given, and the CSRF token of that session."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""
        self.csrf = ""

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers as a dict of lower-case names, body bytes); never follows redirects."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            sent = dict(headers or {})
            if self.cookie:
                sent["Cookie"] = self.cookie
            is_chunked = sent.pop("Transfer-Encoding", "") == "chunked"
            conn.request(method, path, body=body, headers=sent, encode_chunked=is_chunked)
            response = conn.getresponse()
            got = {k.lower(): v for k, v in response.getheaders()}
            got["set-cookie-all"] = response.headers.get_all("Set-Cookie") or []
            return response.status, got, response.read()
        finally:
            conn.close()

    def announce(self, method: str, path: str, length: int, headers: dict) -> int:
        """The status of a request that announces a body of `length` bytes and sends none of it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, path)
            for name, value in {**headers, "Content-Length": str(length), "Cookie": self.cookie}.items():
                conn.putheader(name, value)
            conn.endheaders()
            return conn.getresponse().status
        finally:
            conn.close()

    def login(self, password: str = PASSWORD):
        body = f"password={password.replace(' ', '+')}".encode()
        status, headers, data = self.request(
            "POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        for cookie in headers["set-cookie-all"]:
            if cookie.startswith("storybot_session="):
                self.cookie = cookie.split(";", 1)[0]
        if status == 303:
            self.csrf = self.state()["csrf"]
        return status, headers, data

    def state(self) -> dict:
        status, _, data = self.request("GET", "/api/state")
        assert status == 200, (status, data)
        return json.loads(data)

    def post(self, path: str, data: dict | None = None, csrf: str | None = None):
        headers = {"Content-Type": "application/json"}
        token = self.csrf if csrf is None else csrf
        if token:
            headers["X-CSRF-Token"] = token
        status, _, body = self.request("POST", path, json.dumps(data or {}).encode(), headers)
        return status, body


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that the process holds, IPv4 and IPv6."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN and inode in inodes:
                address, port = local.split(":")
                found.append((_address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)
