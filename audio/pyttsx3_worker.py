"""pyttsx3 worker: reads {"text", "path"} JSON lines on stdin, writes a WAV per line, answers {"ok"} or {"error"}.

Run by audio.tts.Pyttsx3Tts; a hang here is ended by the parent's timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import wave


def _wait_for_wav(path: str, timeout_s: float = 1.0) -> bool:
    """pyttsx3's espeak driver can end runAndWait() before its callback has written the file: wait for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with wave.open(path, "rb") as w:
                if w.getnframes() > 0:
                    return True
        except (OSError, EOFError, wave.Error):
            pass
        time.sleep(0.01)
    return False


def _wait_until_idle(timeout_s: float = 3.0) -> None:
    """espeak-ng can still be finishing the last sentence on its own thread when runAndWait() returns.

    pyttsx3's next runAndWait() then takes the running synthesis for one to stop, cancels its own new one and
    writes no file (seen once in CI on the second sentence): start a sentence only once espeak-ng is idle.
    """
    from pyttsx3.drivers import _espeak

    deadline = time.monotonic() + timeout_s
    while _espeak.IsPlaying() and time.monotonic() < deadline:
        time.sleep(0.01)


def _speak_to_file(engine, text: str, path: str, tries: int = 2) -> dict:
    """One sentence into a WAV file; a try that wrote nothing is made once more before it counts as an error."""
    for _ in range(tries):
        _wait_until_idle()
        engine.save_to_file(text, path)
        engine.runAndWait()
        if _wait_for_wav(path):
            return {"ok": True}
    return {"error": f"no complete WAV at {path} after {tries} tries"}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m audio.pyttsx3_worker")
    parser.add_argument("--voice", default="", help="espeak-ng voice, e.g. en or ko")
    parser.add_argument("--rate", type=int, default=150, help="words per minute")
    args = parser.parse_args()
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # espeak prints to stdout; keep it out of the replies
    import pyttsx3

    engine = pyttsx3.init("espeak")
    engine.setProperty("rate", args.rate)
    if args.voice:
        engine.setProperty("voice", args.voice)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            text, path = str(request["text"]), str(request["path"])
            reply = _speak_to_file(engine, text, path)
        except Exception as e:  # one bad sentence must not end the worker
            reply = {"error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
