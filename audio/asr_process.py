"""A speech recognizer in a process of its own, behind the same Recognizer interface.

PocketSphinx holds the GIL while it decodes. In the daemon that made the speaker's and the microphone's PortAudio
callbacks late while the robot's own voice was being decoded in command mode: the speaker ran dry, the echo
canceller's reference slipped against its echo, and a child's "stop" over the story was lost. Here the decoder runs
in a child Python (this module's main) and the daemon's thread only waits on a pipe, which holds no lock.

The child is `python -m audio.asr_process`, given build_recognizer's arguments as JSON on its command line. Each
request is one frame on its stdin (a byte naming the call, a 4-byte little-endian length, the payload); each
answer is one frame on its stdout (a 4-byte length, then JSON). A child that dies is reported once and started
again at the next call; what it was decoding counts for nothing (accept() answers None, finish() "").
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import threading

from audio.asr import AsrError, build_recognizer

log = logging.getLogger(__name__)

ACCEPT, FINISH, USE_COMMANDS, NAME, IS_COMPLETE = b"a", b"f", b"c", b"n", b"k"
LENGTH = struct.Struct("<I")
MAX_FRAME_BYTES = 1 << 22  # 131 s of 16 kHz int16: far past any utterance
START_TIMEOUT_S = 60.0  # building the decoder (PocketSphinx: ~0.5 s; a large Vosk model: tens of seconds)


class ProcessRecognizer:
    """build_recognizer(**arguments) in a child process (see the module's docstring)."""

    def __init__(self, arguments: dict) -> None:
        """arguments: build_recognizer's keyword arguments (JSON-serialisable). AsrError when the child cannot
        build its recognizer: the message is the child's."""
        self._arguments = arguments
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one call at a time; a call's frames never interleave with another's
        self._is_lost = False
        self.name = self._start()

    def _start(self) -> str:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "audio.asr_process", json.dumps(self._arguments)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # its diagnostics go where the daemon's go (stderr inherited)
        )
        try:
            answer = self._call_locked(NAME, b"")
        except AsrError:
            self._stop()
            raise
        if "error" in answer:
            self._stop()
            raise AsrError(answer["error"])
        return str(answer["name"])

    def accept(self, pcm: bytes) -> str | None:
        answer = self._call(ACCEPT, pcm)
        return None if answer is None else answer.get("partial")

    def finish(self) -> str:
        answer = self._call(FINISH, b"")
        return "" if answer is None else str(answer.get("text", ""))

    def use_commands(self, is_command: bool) -> None:
        self._call(USE_COMMANDS, b"1" if is_command else b"0")

    def is_complete(self, text: str) -> bool:
        answer = self._call(IS_COMPLETE, text.encode())
        return bool(answer and answer.get("complete"))

    def _call(self, op: bytes, payload: bytes) -> dict | None:
        with self._lock:
            if self._proc is None:
                try:
                    self._start()
                except AsrError as e:
                    log.warning("the speech recognizer's process cannot start again: %s", e)
                    return None
            try:
                answer = self._call_locked(op, payload)
            except AsrError as e:
                if not self._is_lost:
                    log.warning("%s; starting it again", e)
                self._is_lost = True
                self._stop()
                return None
            self._is_lost = False
            return answer

    def _call_locked(self, op: bytes, payload: bytes) -> dict:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(op + LENGTH.pack(len(payload)) + payload)
            proc.stdin.flush()
            head = _read_exactly(proc.stdout, LENGTH.size)
            (length,) = LENGTH.unpack(head)
            if length > MAX_FRAME_BYTES:
                raise AsrError(f"the speech recognizer's process sent a frame of {length} bytes")
            return json.loads(_read_exactly(proc.stdout, length))
        except (OSError, EOFError, ValueError) as e:
            raise AsrError(f"the speech recognizer's process failed ({self._exit_words(e)})") from None

    def _exit_words(self, error: Exception) -> str:
        proc = self._proc
        if proc is None:
            return str(error)
        try:
            status = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return f"{type(error).__name__}: {error}"
        return f"killed by signal {-status}" if status < 0 else f"exit status {status}"

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=2.0)  # its stdin closed: it ends by itself
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """End the child (the recognizer's memory goes with it)."""
        with self._lock:
            self._stop()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self._stop()


def _read_exactly(stream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = stream.read(count - len(data))
        if not chunk:
            raise EOFError("end of stream")
        data += chunk
    return data


def _serve(arguments: dict) -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def answer(value: dict) -> None:
        data = json.dumps(value).encode()
        stdout.write(LENGTH.pack(len(data)) + data)
        stdout.flush()

    phrases = {key: tuple(value) for key, value in arguments.items() if isinstance(value, list)}  # JSON's lists
    try:
        recognizer = build_recognizer(**{**arguments, **phrases})
    except AsrError as e:
        recognizer, error = None, str(e)
    while True:
        try:
            op = _read_exactly(stdin, 1)
            (length,) = LENGTH.unpack(_read_exactly(stdin, LENGTH.size))
            payload = _read_exactly(stdin, length) if length else b""
        except EOFError:
            return 0  # the daemon closed the pipe (or is gone): nothing more to do
        if recognizer is None:
            answer({"error": error})
        elif op == NAME:
            answer({"name": recognizer.name})
        elif op == ACCEPT:
            answer({"partial": recognizer.accept(payload)})
        elif op == FINISH:
            answer({"text": recognizer.finish()})
        elif op == IS_COMPLETE:
            answer({"complete": recognizer.is_complete(payload.decode())})
        elif op == USE_COMMANDS:
            recognizer.use_commands(payload == b"1")
            answer({})
        else:
            answer({"error": f"unknown request {op!r}"})


if __name__ == "__main__":
    sys.exit(_serve(json.loads(sys.argv[1])))
