"""Text to speech behind a process boundary: Flite as a subprocess per sentence, pyttsx3 in a worker process.

Both run under a timeout proportional to the text's length; a synthesizer that hangs is killed and the sentence
reported as failed (TtsError), never waited on forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Protocol

from audio.speech import Audio, read_wav

log = logging.getLogger(__name__)

MAX_TTS_CHARS = 2000


class TtsError(RuntimeError):
    """A sentence could not be spoken. The message says which synthesizer and why."""


class Tts(Protocol):
    name: str

    async def synthesize(self, text: str) -> Audio: ...

    async def close(self) -> None: ...


class Timeouts:
    def __init__(self, base_s: float, per_char_s: float) -> None:
        self.base_s = base_s
        self.per_char_s = per_char_s

    def for_text(self, text: str) -> float:
        return self.base_s + self.per_char_s * len(text)


def clean_for_speech(text: str) -> str:
    """Text a synthesizer can take as one argument: no control characters, bounded length."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:MAX_TTS_CHARS]


class FliteTts:
    """Flite, one subprocess per sentence (~60 ms each), WAV through a private temporary directory."""

    name = "flite"

    def __init__(self, voice: str, timeouts: Timeouts, binary: str = "flite") -> None:
        self._binary = shutil.which(binary)
        if self._binary is None:
            raise TtsError(f"flite: the program {binary!r} is not installed (Debian package flite)")
        self._voice = voice or "slt"
        self._timeouts = timeouts
        self._dir = tempfile.TemporaryDirectory(prefix="storybot-flite-")

    async def synthesize(self, text: str) -> Audio:
        text = clean_for_speech(text)
        if not text:
            raise TtsError("flite: nothing to say")
        out = Path(self._dir.name) / "sentence.wav"
        proc = await asyncio.create_subprocess_exec(
            self._binary,
            "-voice",
            self._voice,
            "-t",
            text,
            "-o",
            str(out),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        timeout_s = self._timeouts.for_text(text)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            raise TtsError(f"flite: no speech after {timeout_s:.1f} s; killed") from None
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            raise
        if proc.returncode != 0:
            raise TtsError(f"flite: exit status {proc.returncode}: {err.decode(errors='replace').strip()[:200]}")
        try:
            return read_wav(out.read_bytes())
        except (OSError, ValueError, EOFError) as e:
            raise TtsError(f"flite: unreadable output ({e})") from None

    async def close(self) -> None:
        self._dir.cleanup()


class Pyttsx3Tts:
    """pyttsx3 (espeak-ng) in a long-lived worker process: `python -m audio.pyttsx3_worker`.

    pyttsx3's runAndWait() is known to hang on a second call in some set-ups; behind a process boundary a hang
    costs one timeout and a restart, not the daemon.
    """

    name = "pyttsx3"

    def __init__(self, voice: str, rate_wpm: int, timeouts: Timeouts) -> None:
        self._voice = voice
        self._rate_wpm = rate_wpm
        self._timeouts = timeouts
        self._proc: asyncio.subprocess.Process | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="storybot-pyttsx3-")
        self._lock = asyncio.Lock()

    async def _ensure_worker(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "audio.pyttsx3_worker",
                "--voice",
                self._voice,
                "--rate",
                str(self._rate_wpm),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        return self._proc

    async def synthesize(self, text: str) -> Audio:
        text = clean_for_speech(text)
        if not text:
            raise TtsError("pyttsx3: nothing to say")
        async with self._lock:
            proc = await self._ensure_worker()
            out = Path(self._dir.name) / "sentence.wav"
            out.unlink(missing_ok=True)
            proc.stdin.write((json.dumps({"text": text, "path": str(out)}) + "\n").encode())
            timeout_s = self._timeouts.for_text(text) + 2.0  # the worker's first sentence also loads espeak-ng
            try:
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
            except (TimeoutError, ConnectionError, asyncio.CancelledError) as e:
                await self._kill_worker()
                if isinstance(e, asyncio.CancelledError):
                    raise
                raise TtsError(f"pyttsx3: no speech after {timeout_s:.1f} s; worker killed") from None
            if not line:
                await self._kill_worker()
                raise TtsError("pyttsx3: the worker exited")
            try:
                reply = json.loads(line)
            except ValueError:
                await self._kill_worker()
                raise TtsError("pyttsx3: the worker answered garbage") from None
            if reply.get("error"):
                await self._kill_worker()  # a fresh worker for the next try
                raise TtsError(f"pyttsx3: {reply['error']}")
            try:
                return read_wav(out.read_bytes())
            except (OSError, ValueError, EOFError) as e:
                await self._kill_worker()
                raise TtsError(f"pyttsx3: unreadable output ({e})") from None

    async def _kill_worker(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            _kill_group(self._proc.pid)
            await self._proc.wait()
        self._proc = None

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.stdin.close()
            try:
                await asyncio.wait_for(self._proc.wait(), 2.0)
            except TimeoutError:
                await self._kill_worker()
        self._dir.cleanup()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def build_tts(backend: str, voice: str, rate_wpm: int, timeouts: Timeouts) -> Tts:
    if backend == "flite":
        return FliteTts(voice, timeouts)
    if backend == "pyttsx3":
        return Pyttsx3Tts(voice, rate_wpm, timeouts)
    raise ValueError(f"unknown TTS backend {backend!r}")
