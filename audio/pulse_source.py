"""Which PulseAudio source this process's capture stream is on.

When a stream's source goes away (a USB microphone unplugged), PulseAudio moves the stream to another source (the
default, often a monitor of the speaker) and never moves it back when the microphone returns: the capture goes on
delivering audio, from the wrong place, and no error is ever raised. SourceWatch notices the move by asking the
sound server (pactl) every WATCH_S, off the event loop, so that capture can reopen on the configured source.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading

log = logging.getLogger(__name__)

WATCH_S = 2.0  # two pactl runs (about 10 ms of CPU) each time
PACTL_TIMEOUT_S = 3.0


def _pactl(*args: str) -> str | None:
    try:
        done = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=PACTL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def source_names() -> dict[int, str]:
    """index -> name of every source the server has now ({} when no server answers)."""
    text = _pactl("list", "short", "sources") or ""
    names = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[0].isdigit():
            names[int(fields[0])] = fields[1]
    return names


def own_capture_sources(pid: int) -> list[str]:
    """The names of the sources this process's capture streams are on (several while one is being reopened); []
    when the server did not answer."""
    text = _pactl("-f", "json", "list", "source-outputs")
    if not text:
        return []
    try:
        outputs = json.loads(text)
    except ValueError:
        return []
    names = source_names()
    # a source the second query did not list (the server busy, or the source added in between) is left out: a
    # name we could not learn is no proof that the stream moved
    return [
        names[o.get("source")]
        for o in outputs
        if str(o.get("properties", {}).get("application.process.id", "")) == str(pid) and o.get("source") in names
    ]


class SourceWatch:
    """Watches that capture stays on the source it was opened on; moved_to is set when PulseAudio moved it."""

    def __init__(self, wanted: str) -> None:
        self.wanted = wanted
        self.moved_to: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="source-watch", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls) -> SourceWatch | None:
        """A watch when a PulseAudio server answers (None on bare ALSA, or without pactl): the source wanted is
        PULSE_SOURCE when set, else the server's default source now."""
        if shutil.which("pactl") is None:
            return None
        wanted = os.environ.get("PULSE_SOURCE") or (_pactl("get-default-source") or "").strip()
        if not wanted:
            return None
        return cls(wanted)

    def _run(self) -> None:
        while not self._stop.wait(WATCH_S):
            sources = own_capture_sources(os.getpid())
            if sources and self.wanted not in sources:
                self.moved_to = sources[0]
                return

    def close(self) -> None:
        self._stop.set()
