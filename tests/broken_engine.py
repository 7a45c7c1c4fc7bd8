"""The example engine (examples/echo_engine.py) with one deliberate defect, for the conformance suite's tests.

    python tests/broken_engine.py DEFECT --model WORDS.txt [echo engine options]

Every defect is a rule of docs/engine-protocol.md broken the way a real engine could break it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "echo_engine.py"


def load_example():
    spec = importlib.util.spec_from_file_location("echo_engine", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ignores_cancel(echo) -> None:
    echo.Engine.on_cancel = lambda self, request_id: None


def slow_cancel(echo) -> None:
    """Honours a cancel, but 600 ms late (the bound is 200 ms)."""
    honour = echo.Engine.on_cancel
    echo.Engine.on_cancel = lambda self, request_id: threading.Timer(0.6, honour, (self, request_id)).start()


def wrong_handshake(echo) -> None:
    """A ready frame without context_tokens."""
    send = echo.Engine.send

    def without_context(self, frame: dict) -> None:
        send(self, {k: v for k, v in frame.items() if k != "context_tokens"} if frame["type"] == "ready" else frame)

    echo.Engine.send = without_context


def garbage(echo) -> None:
    """A debug print among the frames, as a library that writes to the real stdout would leave."""
    send = echo.Engine.send

    def chatty(self, frame: dict) -> None:
        if frame["type"] == "token":
            self.frames.write(b"debug: sampled a token\n")
        send(self, frame)

    echo.Engine.send = chatty


def crashes(echo) -> None:
    """Dies on its third token (SIGABRT, as an assertion in native code)."""
    next_word = echo.Engine.next_word

    def fatal(self, position: int, temperature: float, rng):
        if position == 2:
            os.abort()
        return next_word(self, position, temperature, rng)

    echo.Engine.next_word = fatal


def rejects_special(echo) -> None:
    """Written from revision 1 of the document, which did not list `special`."""
    del echo.REQUEST_FIELDS["generate"]["special"]


def accepts_unknown(echo) -> None:
    """Ignores fields it does not know instead of refusing the frame."""
    parse = echo.parse_request

    def lenient(line: bytes):
        try:
            body = json.loads(line)
        except ValueError:
            return parse(line)
        if isinstance(body, dict) and body.get("type") in echo.REQUEST_FIELDS:
            known = echo.REQUEST_FIELDS[body["type"]]
            line = json.dumps({k: v for k, v in body.items() if k in known or k in ("v", "type")}).encode()
        return parse(line)

    echo.parse_request = lenient


def no_busy(echo) -> None:
    """A generate while one runs is dropped without an answer."""
    on_generate = echo.Engine.on_generate

    def silent(self, request: dict) -> None:
        if self.running_id is None:
            on_generate(self, request)

    echo.Engine.on_generate = silent


def ignores_shutdown(echo) -> None:
    """Goes on reading after a shutdown frame (and so never exits while its stdin is open)."""
    parse = echo.parse_request

    def no_shutdown(line: bytes):
        kind, fields = parse(line)
        if kind == "shutdown":
            raise echo.BadFrame("shutdown is not supported")
        return kind, fields

    echo.parse_request = no_shutdown


def usage_is_2(echo) -> None:
    """argparse's own status for a bad command line."""
    echo.Arguments.error = argparse.ArgumentParser.error


def seed_drifts(echo) -> None:
    """Its random generator carries state from one request to the next (as a reused cache would)."""
    served = [0]
    generate = echo.Engine.generate

    def drifting(self, request: dict) -> dict:
        served[0] += 1
        if request["seed"] >= 0:
            request = {**request, "seed": request["seed"] + served[0]}
        return generate(self, request)

    echo.Engine.generate = drifting


def slow_ready(echo) -> None:
    """Takes 3 s to load (for the --ready-timeout-s option)."""
    time.sleep(3.0)


DEFECTS = {
    "ignores-cancel": ignores_cancel,
    "slow-cancel": slow_cancel,
    "wrong-handshake": wrong_handshake,
    "garbage": garbage,
    "crashes": crashes,
    "rejects-special": rejects_special,
    "accepts-unknown": accepts_unknown,
    "no-busy": no_busy,
    "ignores-shutdown": ignores_shutdown,
    "usage-is-2": usage_is_2,
    "seed-drifts": seed_drifts,
    "slow-ready": slow_ready,
}


if __name__ == "__main__":
    echo = load_example()
    DEFECTS[sys.argv[1]](echo)
    sys.exit(echo.main(sys.argv[2:]))
