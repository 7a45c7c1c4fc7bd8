#!/usr/bin/env python3
"""A complete storybot engine in one file, standard library only: how a vendor's runtime joins storybot.

    python3 examples/echo_engine.py --model WORDS.txt [--context 2048] [--token-ms 20]

It speaks the storybot engine protocol, version 1 (docs/engine-protocol.md) on stdin and stdout. Its "model"
is a UTF-8 text file: generating means saying the file's words, in order from the start when the temperature is
0, else drawn at random from a generator seeded by the request's seed. Replace `next_word` with a real model
and everything else (frames, validation, cancel, busy, stop strings, exit statuses) stays as it is.

Check it with the conformance suite:  storybot engine-check --model WORDS.txt -- python3 examples/echo_engine.py
--model WORDS.txt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import threading
import time

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 65536

# exit statuses (docs/engine-protocol.md)
EXIT_OK = 0
EXIT_USAGE = 64
EXIT_BAD_MODEL = 65
EXIT_MODEL_MISSING = 66
EXIT_INTERNAL = 70

REQUIRED = object()  # a field without a default

# Every field of every request frame: (JSON type, lowest, highest, default). Anything else is refused.
REQUEST_FIELDS = {
    "generate": {
        "id": (int, 0, 2**53 - 1, REQUIRED),
        "prompt": (str, 1, 32768, REQUIRED),  # bounds on its length in characters
        "max_tokens": (int, 1, 2**20, 256),
        "temperature": (float, 0.0, 10.0, 0.8),
        "top_p": (float, 0.0, 1.0, 0.95),
        "top_k": (int, 0, 2**20, 40),
        "repeat_penalty": (float, 0.5, 5.0, 1.0),
        "seed": (int, -1, 2**31 - 1, -1),
        "stop": (list, 0, 8, []),  # bounds on the number of strings; each 1..64 characters
        "special": (bool, None, None, False),
    },
    "cancel": {"id": (int, 0, 2**53 - 1, REQUIRED)},
    "shutdown": {},
}


class BadFrame(ValueError):
    """A request that breaks the protocol; the message says what was wrong."""


def parse_request(line: bytes) -> tuple[str, dict]:
    """The frame type and its fields (defaults filled in), or BadFrame naming the problem."""
    try:
        body = json.loads(line.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise BadFrame("frame is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadFrame(f"frame is not JSON ({e.msg})") from None
    if not isinstance(body, dict):
        raise BadFrame("frame is not a JSON object")
    if body.pop("v", None) != PROTOCOL_VERSION:
        raise BadFrame(f'frame has no "v": {PROTOCOL_VERSION}')
    kind = body.pop("type", None)
    if kind not in REQUEST_FIELDS:
        raise BadFrame(f"{kind!r} is not a request frame type (generate, cancel, shutdown)")
    schema = REQUEST_FIELDS[kind]
    unknown = sorted(set(body) - set(schema))
    if unknown:
        raise BadFrame(f"{kind}: unknown field(s) {unknown}")
    fields = {}
    for name, (kind_of, low, high, default) in schema.items():
        if name not in body:
            if default is REQUIRED:
                raise BadFrame(f"{kind}: missing field {name!r}")
            fields[name] = default
            continue
        fields[name] = _checked(kind, name, body[name], kind_of, low, high)
    return kind, fields


def _checked(kind: str, name: str, value, kind_of: type, low, high):
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind_of is bool:
        ok = isinstance(value, bool)
    elif kind_of is int:
        ok = is_number and isinstance(value, int)
    elif kind_of is float:
        ok = is_number and math.isfinite(value)
    elif kind_of is str:
        ok = isinstance(value, str)
    else:  # the stop list
        ok = isinstance(value, list) and all(isinstance(s, str) and 1 <= len(s) <= 64 for s in value)
    if not ok:
        raise BadFrame(f"{kind}: {name} is {repr(value)[:40]}, not a valid {kind_of.__name__}")
    if kind_of in (str, list) and not low <= len(value) <= high:
        raise BadFrame(f"{kind}: {name} has {len(value)} {'characters' if kind_of is str else 'strings'}, "
                       f"expected {low}..{high}")  # fmt: skip
    if kind_of in (int, float) and not low <= value <= high:
        raise BadFrame(f"{kind}: {name} is {value}, expected {low}..{high}")
    return float(value) if kind_of is float else value


def _no_constants(name: str):
    raise BadFrame(f"frame contains {name}, which is not JSON")


class StopStrings:
    """Holds back text that might be the start of a stop string; never emits any part of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""
        self.is_stopped = False

    def feed(self, piece: str) -> str:
        text = self.held + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.is_stopped, self.held = True, ""
            return text[: min(found)]
        keep = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]


class Engine:
    """The reader thread takes frames from stdin; the main thread generates, one request at a time."""

    def __init__(self, words: list[str], context_tokens: int, token_ms: float, frames) -> None:
        self.words = words
        self.context_tokens = context_tokens
        self.token_s = token_ms / 1000.0
        self.frames = frames  # a duplicate of the original stdout: only frames go there
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.pending: dict | None = None  # a generate accepted, not yet started
        self.running_id: int | None = None  # accepted and not yet answered
        self.cancel_id: int | None = None
        self.is_quitting = False

    def send(self, frame: dict) -> None:
        line = json.dumps({"v": PROTOCOL_VERSION, **frame}, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self.lock:
            try:
                self.frames.write(line.encode("utf-8"))
                self.frames.flush()  # every frame at once: the parent is waiting for it
            except BrokenPipeError:
                os._exit(EXIT_OK)  # the parent is gone

    def error(self, code: str, message: str, request_id: int = -1) -> None:
        self.send({"type": "error", "code": code, "message": message, "id": request_id})

    # --- the reader thread --------------------------------------------------------------------------

    def read_requests(self, stdin) -> None:
        while True:
            line = stdin.readline(MAX_FRAME_BYTES + 1)
            if not line:
                break  # stdin closed: the same as shutdown
            if not line.endswith(b"\n"):
                if len(line) > MAX_FRAME_BYTES:
                    self.error("protocol", f"frame longer than {MAX_FRAME_BYTES} bytes; skipped")
                    self.skip_rest_of_line(stdin)
                else:
                    self.error("protocol", "unterminated frame at the end of input")
                continue
            if not line.strip():
                continue  # blank lines are not frames
            try:
                kind, fields = parse_request(line)
            except BadFrame as e:
                self.error("protocol", str(e))
                continue
            if kind == "shutdown":
                break
            if kind == "cancel":
                self.on_cancel(fields["id"])
            else:
                self.on_generate(fields)
        with self.lock:
            self.is_quitting = True
            self.cancel_id = self.running_id  # stop what runs, then exit 0
            self.wake.notify()

    @staticmethod
    def skip_rest_of_line(stdin) -> None:
        while (chunk := stdin.readline(MAX_FRAME_BYTES)) and not chunk.endswith(b"\n"):
            pass

    def on_generate(self, request: dict) -> None:
        with self.lock:
            is_busy = self.running_id is not None
            if not is_busy:
                self.running_id = request["id"]
                self.pending = request
                self.wake.notify()
        if is_busy:
            self.error("busy", "a generation is already running", request["id"])

    def on_cancel(self, request_id: int) -> None:
        with self.lock:
            if self.running_id == request_id:  # a cancel for anything else is ignored
                self.cancel_id = request_id

    # --- the main thread ----------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            with self.lock:
                while self.pending is None and not self.is_quitting:
                    self.wake.wait()
                request, self.pending = self.pending, None
            if request is None:
                return
            try:
                reply = self.generate(request)
            except Exception as e:  # one failed request must not end the engine
                reply = {"type": "error", "code": "internal", "message": f"{type(e).__name__}: {e}"}
                reply["id"] = request["id"]
            with self.lock:  # free before replying: the parent may send its next request at once
                self.running_id = self.cancel_id = None
            self.send(reply)

    def is_cancelled(self, request_id: int) -> bool:
        with self.lock:
            return self.cancel_id == request_id

    def generate(self, request: dict) -> dict:
        arrived = time.monotonic()
        prompt_tokens = len(request["prompt"].split()) + 1  # a word a token, and a start-of-text token
        if prompt_tokens >= self.context_tokens:
            return {
                "type": "error",
                "code": "bad_request",
                "message": f"prompt is {prompt_tokens} tokens; the context holds {self.context_tokens}",
                "id": request["id"],
            }
        rng = random.Random(request["seed"] if request["seed"] >= 0 else None)
        stops = StopStrings(request["stop"])
        count, first_token_ms, reason = 0, 0.0, "length"
        while count < request["max_tokens"]:
            time.sleep(self.token_s)  # where a real engine computes the next token
            if self.is_cancelled(request["id"]):
                reason = "cancelled"
                break
            word = self.next_word(count, request["temperature"], rng)
            if count == 0:
                first_token_ms = (time.monotonic() - arrived) * 1000.0
            count += 1
            text = stops.feed(" " + word)
            if text:
                self.send({"type": "token", "id": request["id"], "text": text})
            if stops.is_stopped:
                reason = "stop"
                break
        if stops.held and not stops.is_stopped and reason != "cancelled":
            self.send({"type": "token", "id": request["id"], "text": stops.held})
        return {
            "type": "done",
            "id": request["id"],
            "reason": reason,
            "tokens": count,
            "prompt_tokens": prompt_tokens,
            "first_token_ms": round(first_token_ms, 1),
            "total_ms": round((time.monotonic() - arrived) * 1000.0, 1),
        }

    def next_word(self, position: int, temperature: float, rng: random.Random) -> str:
        if temperature == 0:
            return self.words[position % len(self.words)]
        return rng.choice(self.words)


class Arguments(argparse.ArgumentParser):
    def error(self, message: str):  # a bad command line is status 64, not argparse's 2
        self.print_usage(sys.stderr)
        print(f"echo-engine: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def load_words(path: str) -> list[str]:
    """The model's words, or exit with the status that names why not."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        die(EXIT_MODEL_MISSING, f"{path}: {e.strerror}")
    try:
        words = data.decode("utf-8").split()
    except UnicodeDecodeError as e:
        die(EXIT_BAD_MODEL, f"{path}: not UTF-8 text (byte {e.start})")
    if not words:
        die(EXIT_BAD_MODEL, f"{path}: no words in it")
    return words


def die(status: int, message: str):
    print(f"echo-engine: {message}", file=sys.stderr, flush=True)  # one line naming the file and the problem
    sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    parser = Arguments(prog="echo_engine.py", description="An example storybot engine (protocol v1).")
    parser.add_argument("--model", required=True, help="a UTF-8 text file: the words this engine says")
    parser.add_argument("--context", type=int, default=2048, help="context window in tokens (default 2048)")
    parser.add_argument("--token-ms", type=float, default=20.0, help="time per generated token (default 20)")
    args = parser.parse_args(argv)
    if not 16 <= args.context <= 2**20:
        parser.error(f"--context is {args.context}, expected 16..{2**20}")
    started = time.monotonic()
    words = load_words(args.model)
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print now lands on stderr, not among the frames
    engine = Engine(words, args.context, args.token_ms, frames)
    engine.send(
        {
            "type": "ready",
            "engine": "echo",
            "model": args.model,
            "context_tokens": args.context,
            "load_ms": round((time.monotonic() - started) * 1000.0, 1),
        }
    )
    threading.Thread(target=engine.read_requests, args=(sys.stdin.buffer,), daemon=True).start()
    engine.serve()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
