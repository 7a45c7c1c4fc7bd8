"""Model servers on loopback for the remote engine's tests: llama-cpp-python's real OpenAI-compatible server with
the default model, and a small real HTTP server of our own for the answers the real one cannot be made to give
(HTTP 500 and 404, malformed event streams, a never-ending line, a trickle of one byte a second)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

API_KEY = "sk-test-0d9c1b7e5a"  # the real server's key in these tests; no log may ever show it
TCP_ESTABLISHED = "01"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm2_gguf() -> str:
    from engines.models import default_gguf_source

    return str(default_gguf_source())


class LlamaServer:
    """`python -m llama_cpp.server` with the default model (SmolLM2-135M-Instruct, its GGUF), one thread."""

    def __init__(self, port: int | None = None, *, api_key: str = API_KEY, log_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.api_key = api_key
        self.log_path = log_dir / f"llama-server-{self.port}.log" if log_dir else Path(os.devnull)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 180.0) -> LlamaServer:
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", smollm2_gguf(), "--model_alias", "smollm2",
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "1",
                "--verbose", "false"]  # fmt: skip
        if self.api_key:
            argv += ["--api_key", self.api_key]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; see {self.log_path}")
            if self.answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {timeout_s} s")

    def answers(self) -> bool:
        request = urllib.request.Request(self.url + "/v1/models", headers={"Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped server cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def throttle(self, running_share: float, period_s: float = 0.1) -> None:
        """From now on the server runs only `running_share` of each period (SIGSTOP for the rest, from a thread), as
        a server busy with other clients would: a story it generates then takes longer than the speech of its first
        sentences, so a kill lands mid-generation on a fast machine too. kill() and stop() end it."""
        assert self.proc is not None
        proc = self.proc

        def duty_cycle() -> None:
            try:
                while proc.poll() is None:
                    os.kill(proc.pid, signal.SIGSTOP)
                    time.sleep(period_s * (1 - running_share))
                    os.kill(proc.pid, signal.SIGCONT)
                    time.sleep(period_s * running_share)
            except ProcessLookupError:
                pass  # killed meanwhile

        threading.Thread(target=duty_cycle, name="server-throttle", daemon=True).start()

    def established_connections(self) -> int:
        """Server-side TCP connections on the port still ESTABLISHED (a closed stream's goes to CLOSE_WAIT at once:
        the server has seen the client's FIN)."""
        return established_on(self.port)


def established_on(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == TCP_ESTABLISHED:
                count += 1
    return count


# --- our own small server --------------------------------------------------------------------------


def _chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "finish_reason": finish}
    return b"data: " + json.dumps({"object": "text_completion", "choices": [choice]}).encode() + b"\n\n"


class FakeServer:
    """A ThreadingHTTPServer on loopback. behaviour names what POST /v1/(chat/)completions answers:

    status:N     HTTP N with a JSON error body (as the OpenAI API sends it)
    malformed    an event stream whose second event is not JSON
    endless      one data line that never ends (bytes as fast as the socket takes them)
    trickle      a well-formed event, one byte a second
    html         200 with an HTML page instead of an event stream
    tokens:N     N well-formed tokens, then [DONE]

    GET /v1/models lists models (default: "smollm2"), or answers models_status when it is set."""

    def __init__(
        self,
        behaviour: str,
        *,
        models: tuple[str, ...] = ("smollm2",),
        models_status: int = 200,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """tls: (certificate file, key file) to serve https."""
        self.behaviour = behaviour
        self.models = models
        self.models_status = models_status
        self.requests: list[dict] = []
        self.headers_seen: list[dict] = []
        self.bytes_sent = 0
        self.disconnected_at: float | None = None  # when a write found the client gone
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.headers_seen.append(dict(self.headers))
                if server.models_status != 200:
                    self._json(server.models_status, {"error": {"message": "refused"}})
                    return
                self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                server.requests.append(json.loads(self.rfile.read(length) or b"{}"))
                server.headers_seen.append(dict(self.headers))
                kind, _, arg = server.behaviour.partition(":")
                try:
                    getattr(self, f"_{kind}")(arg)
                except (BrokenPipeError, ConnectionResetError):
                    server.disconnected_at = time.monotonic()

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream_head(self, kind: str = "text/event-stream") -> None:
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True

            def _send(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()
                server.bytes_sent += len(data)

            def _status(self, arg: str) -> None:
                status = int(arg)
                self._json(status, {"error": {"message": f"fake failure {status}", "code": status}})

            def _malformed(self, arg: str) -> None:
                self._stream_head()
                self._send(_chunk(" Once"))
                self._send(b"data: {this is not json\n\n")
                time.sleep(2)

            def _endless(self, arg: str) -> None:
                self._stream_head()
                self._send(b"data: ")
                block = b"a" * 65536
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    self._send(block)

            def _trickle(self, arg: str) -> None:
                self._stream_head()
                for byte in _chunk(" Once"):
                    self._send(bytes([byte]))
                    time.sleep(1.0)

            def _html(self, arg: str) -> None:
                self._stream_head("text/html")
                self._send(b"<html><body>It works!</body></html>")

            def _tokens(self, arg: str) -> None:
                self._stream_head()
                n = int(arg or 5)
                for i in range(n):
                    self._send(_chunk(f" word{i}", "length" if i == n - 1 else None))
                    time.sleep(0.02)
                self._send(b"data: [DONE]\n\n")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.scheme = "http"
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
