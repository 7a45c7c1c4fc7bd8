"""Text to speech behind a process boundary: Flite or espeak-ng as a subprocess per sentence, pyttsx3 in a worker
process.

Each runs under a timeout proportional to the text's length; a synthesizer that hangs is killed and the sentence
reported as failed (TtsError), never waited on forever.

speech_chunks() hands a sentence's speech over in pieces, so that the first can play while the rest is still being
made (the story's opening, which the child waits for): espeak-ng writes its audio to a pipe as it synthesizes;
flite's program writes a whole WAV at the end, so a long sentence is made clause by clause (its first clause alone
first: "Once upon a time," takes a third of the sentence's time); pyttsx3 hands over the whole sentence.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import shutil
import struct
import sys
import tempfile
import time
import wave
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Protocol

from audio.process import ChildProcess, SpawnChild
from audio.speech import Audio, read_wav

log = logging.getLogger(__name__)

MAX_TTS_CHARS = 2000
# a sentence is cut for flite at its first clause boundary with at least this much on either side
MIN_CLAUSE_CHARS = 12
STREAM_CHUNK_BYTES = 8820  # 200 ms of espeak-ng's 22.05 kHz: what a piped chunk holds at most
KEPT_CLAUSES = 4  # clauses whose speech is kept (keep_speech): "Once upon a time," begins every story
WORKER_EXIT_S = 1.0  # how long the pyttsx3 worker may take to exit by itself (each step of its stop)


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


async def speech_chunks(tts: Tts, text: str) -> AsyncGenerator[Audio, None]:
    """The sentence's speech in pieces as they are made (TtsError as synthesize raises it), or in one piece from a
    synthesizer that cannot hand it over sooner."""
    stream = getattr(tts, "stream", None)
    if stream is None:
        yield await tts.synthesize(text)
        return
    async for chunk in stream(text):
        yield chunk


async def keep_speech(tts: Tts, clause: str) -> None:
    """Synthesize a clause that sentences often begin with and keep its speech (a synthesizer that can), so that
    a sentence beginning with it starts playing at once. A failure is logged: the clause is then made when needed."""
    keep = getattr(tts, "keep", None)
    if keep is None or not clause:
        return
    try:
        await keep(clause)
    except TtsError as e:
        log.info("speech of %r not made ahead: %s", clause, e)


def first_clause(text: str) -> tuple[str, str]:
    """text cut after its first clause (at a comma, semicolon, colon or dash), when both parts are long enough to
    be said alone; (text, "") otherwise."""
    for match in re.finditer(r"[,;:—–]\s+|\s-\s", text):
        head, tail = text[: match.end()].strip(), text[match.end() :].strip()
        if len(head) >= MIN_CLAUSE_CHARS and len(tail) >= MIN_CLAUSE_CHARS:
            return head, tail
    return text, ""


def clean_for_speech(text: str) -> str:
    """Text a synthesizer can take as one argument: no control characters, bounded length."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:MAX_TTS_CHARS]


class FliteTts:
    """Flite, one subprocess per sentence (~60 ms each), WAV through a private temporary directory."""

    name = "flite"
    package = "flite"

    def __init__(self, voice: str, timeouts: Timeouts, binary: str = "flite", *, spawn: SpawnChild) -> None:
        path = shutil.which(binary)
        if path is None:
            raise TtsError(f"{self.name}: the program {binary!r} is not installed (Debian package {self.package})")
        self._binary = path
        self._voice = voice or "slt"
        self._timeouts = timeouts
        self._spawn = spawn
        self._dir = tempfile.TemporaryDirectory(prefix=f"storybot-{self.name}-")
        self._numbers = itertools.count()  # a file per synthesis: two may run at once (keep() and a story)
        self._kept: dict[str, Audio] = {}

    def _argv(self, text: str, out: Path) -> tuple[list[str], bytes]:
        """The command line and what goes to its stdin."""
        return [self._binary, "-voice", self._voice, "-t", text, "-o", str(out)], b""

    async def synthesize(self, text: str) -> Audio:
        text = clean_for_speech(text)
        if not text:
            raise TtsError(f"{self.name}: nothing to say")
        out = Path(self._dir.name) / f"sentence-{next(self._numbers)}.wav"
        try:
            return await self._synthesize_to(text, out)
        finally:
            out.unlink(missing_ok=True)

    async def _synthesize_to(self, text: str, out: Path) -> Audio:
        argv, stdin_bytes = self._argv(text, out)
        child = self._spawn(argv, name=self.name, has_stdin=bool(stdin_bytes), has_stdout=False)
        await child.start()
        timeout_s = self._timeouts.for_text(text)
        try:
            if stdin_bytes:
                child.stdin.write(stdin_bytes)
                await child.stdin.drain()
                child.stdin.close()
            code = await child.run_to_end(timeout_s)
        except TimeoutError:
            raise TtsError(f"{self.name}: no speech after {timeout_s:.1f} s; killed") from None
        except (BrokenPipeError, ConnectionResetError):
            await child.kill()
            raise TtsError(
                f"{self.name}: {child.exit_words()} before it read the text: {child.stderr_tail[:200]}"
            ) from None
        if code != 0:
            raise TtsError(f"{self.name}: {child.exit_words()}: {child.stderr_tail[:200]}")
        try:
            with open(out, "rb") as f:
                return read_wav(f)
        except (OSError, ValueError, EOFError, wave.Error) as e:
            raise TtsError(f"{self.name}: unreadable output ({e})") from None

    async def stream(self, text: str) -> AsyncIterator[Audio]:
        """The first clause's speech (kept, or made), then the rest's: flite writes its WAV only once the whole
        text is made."""
        head, tail = first_clause(clean_for_speech(text))
        kept = self._kept.get(head)
        yield kept if kept is not None else await self.synthesize(head)
        if tail:
            yield await self.synthesize(tail)

    async def keep(self, clause: str) -> None:
        """Make the clause's speech now and keep it, for stream() to hand over at once when a sentence begins
        with it (a few kept, the latest)."""
        clause = clean_for_speech(clause)
        if clause in self._kept:
            return
        audio = await self.synthesize(clause)
        self._kept[clause] = audio
        while len(self._kept) > KEPT_CLAUSES:
            del self._kept[next(iter(self._kept))]

    async def close(self) -> None:
        self._dir.cleanup()


class EspeakNgTts(FliteTts):
    """espeak-ng, one subprocess per sentence: the lightest voice storybot has (about 7 MiB of peak RSS, most of
    it shared with the daemon's C library), for the smallest boards; the text goes in on stdin, so that nothing
    in it can be read as an option."""

    name = "espeak-ng"
    package = "espeak-ng"

    def __init__(
        self, voice: str, rate_wpm: int, timeouts: Timeouts, binary: str = "espeak-ng", *, spawn: SpawnChild
    ) -> None:
        super().__init__(voice, timeouts, binary, spawn=spawn)
        self._voice = voice or "en-us"
        self._rate_wpm = rate_wpm

    def _argv(self, text: str, out: Path) -> tuple[list[str], bytes]:
        argv = [self._binary, "-v", self._voice, "-s", str(self._rate_wpm), "-w", str(out), "--stdin"]
        return argv, text.encode()

    async def stream(self, text: str) -> AsyncIterator[Audio]:
        """espeak-ng --stdout writes a WAV header, then the samples as it makes them: handed over as they come."""
        text = clean_for_speech(text)
        if not text:
            raise TtsError(f"{self.name}: nothing to say")
        argv = [self._binary, "-v", self._voice, "-s", str(self._rate_wpm), "--stdout", "--stdin"]
        child = self._spawn(argv, name=self.name)
        await child.start()
        deadline_s = time.monotonic() + self._timeouts.for_text(text)
        try:
            try:
                child.stdin.write(text.encode())
                await child.stdin.drain()
                child.stdin.close()
                rate_hz = await self._read_header(child, deadline_s)
                while chunk := await _read_within(child.stdout.read(STREAM_CHUNK_BYTES), deadline_s):
                    if len(chunk) % 2:  # a sample split between two reads
                        chunk += await _read_within(child.stdout.readexactly(1), deadline_s)
                    yield Audio(rate_hz=rate_hz, pcm=chunk)
            except TimeoutError:
                raise TtsError(f"{self.name}: no speech after {self._timeouts.for_text(text):.1f} s; killed") from None
            except (BrokenPipeError, ConnectionResetError, asyncio.IncompleteReadError):
                await child.kill()
                raise TtsError(f"{self.name}: {child.exit_words()}: {child.stderr_tail[:200]}") from None
            code = await child.wait()
            if code != 0:
                raise TtsError(f"{self.name}: {child.exit_words()}: {child.stderr_tail[:200]}")
        finally:
            if child.is_running:  # given up on (stopped, or failed): not left behind
                await child.kill()

    async def keep(self, clause: str) -> None:
        pass  # its stream's first piece comes in about 20 ms: nothing is worth keeping

    async def _read_header(self, child: ChildProcess, deadline_s: float) -> int:
        """The sample rate of the WAV header espeak-ng writes first (PCM16 mono, its data length unknown)."""
        header = await _read_within(child.stdout.readexactly(44), deadline_s)
        if header[:4] != b"RIFF" or header[8:16] != b"WAVEfmt " or header[36:40] != b"data":
            raise TtsError(f"{self.name}: unreadable output (no WAV header on its stdout: {header[:16]!r})")
        _format, channels, rate_hz, _byte_rate, _align, bits = struct.unpack("<HHIIHH", header[20:36])
        if channels != 1 or bits != 16:
            raise TtsError(f"{self.name}: unreadable output ({channels} channels of {bits}-bit samples)")
        return rate_hz


async def _read_within(read, deadline_s: float) -> bytes:
    return await asyncio.wait_for(read, max(0.0, deadline_s - time.monotonic()))


class Pyttsx3Tts:
    """pyttsx3 (espeak-ng) in a long-lived worker process: `python -m audio.pyttsx3_worker`.

    pyttsx3's runAndWait() is known to hang on a second call in some set-ups; behind a process boundary a hang
    costs one timeout and a restart, not the daemon.
    """

    name = "pyttsx3"

    def __init__(self, voice: str, rate_wpm: int, timeouts: Timeouts, *, spawn: SpawnChild) -> None:
        self._voice = voice
        self._rate_wpm = rate_wpm
        self._timeouts = timeouts
        self._spawn = spawn
        self._proc: ChildProcess | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="storybot-pyttsx3-")
        self._lock = asyncio.Lock()

    async def _ensure_worker(self) -> ChildProcess:
        if self._proc is None or not self._proc.is_running:
            argv = [sys.executable, "-m", "audio.pyttsx3_worker", "--voice", self._voice, "--rate", str(self._rate_wpm)]
            self._proc = self._spawn(argv, name="pyttsx3")
            await self._proc.start()
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
                why = await self._worker_ended(proc)
                raise TtsError(f"pyttsx3: the worker {why}")
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
        if self._proc is not None:
            await self._proc.kill()
        self._proc = None

    async def _worker_ended(self, proc: ChildProcess) -> str:
        """The worker closed its answers: how it ended, in words, with its last words on stderr."""
        try:
            await asyncio.wait_for(proc.wait(), WORKER_EXIT_S)  # its own exit status, if it is ending by itself
        except TimeoutError:
            pass
        await self._kill_worker()  # reaps it, and anything left in its group
        said = proc.stderr_tail
        return proc.exit_words() + (f"; it said: {said[-200:]}" if said else "")

    async def close(self) -> None:
        if self._proc is not None:
            await self._proc.stop(WORKER_EXIT_S)  # end of input ends the worker's loop; then TERM, then KILL
        self._dir.cleanup()


def build_tts(backend: str, voice: str, rate_wpm: int, timeouts: Timeouts, *, spawn: SpawnChild) -> Tts:
    """spawn: how its children are made (engines.child.Child, handed in by the supervisor)."""
    if backend == "flite":
        return FliteTts(voice, timeouts, spawn=spawn)
    if backend == "pyttsx3":
        return Pyttsx3Tts(voice, rate_wpm, timeouts, spawn=spawn)
    if backend == "espeak-ng":
        return EspeakNgTts(voice, rate_wpm, timeouts, spawn=spawn)
    raise ValueError(f"unknown TTS backend {backend!r}")
