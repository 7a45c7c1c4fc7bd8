"""Playing speech: a sounddevice output stream that can be silenced at once, ALSA's `aplay` as a subprocess (the
lightest path: no numpy, no PortAudio in the daemon), or a WAV file when there is no device."""

from __future__ import annotations

import array
import asyncio
import collections
import logging
import shutil
import subprocess
import sys
import threading
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from audio.devices import DeviceError, find_device
from audio.process import ChildProcess, SpawnChild
from audio.speech import Audio

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BLOCK_FRAMES = 441  # 20 ms at 22.05 kHz: how quickly stop() is heard
STALL_S = 2.0  # a stream that consumes nothing for this long is a lost device
ECHO_LATENCY_S = 0.15  # output buffer while the echo canceller listens
# While a child speaks over the story the robot's voice is lowered by this much (duck(); audio.duck_db), so that the
# rest of the word reaches the recognizers over less of the robot's voice than the canceller alone leaves; a ramp
# over one block keeps the change from clicking.
DUCK_DB = 15.0


class PlaybackError(RuntimeError):
    """The output device failed while playing."""


class Sink(Protocol):
    rate_hz: int
    first_audio_monotonic: float | None  # when the first sample of this story reached the device

    async def play(self, audio: Audio) -> bool:
        """Play to the end (True) or until stop() (False)."""
        ...

    async def play_chunks(self, chunks: AsyncIterator[Audio]) -> bool:
        """Play a sentence handed over in pieces as it is synthesized, each as soon as it comes, without gaps
        between them: to the end (True) or until stop() (False)."""
        ...

    def stop(self) -> None: ...

    def set_volume(self, volume: float) -> None:
        """Gain 0-1 for what is played from now on."""
        ...

    def duck(self, is_ducked: bool) -> None:
        """Lower the robot's voice by its ducking depth (DUCK_DB; someone speaks over it) or bring it back, at once
        where the sink can (a device stream), or not at all."""
        ...

    async def close(self) -> None: ...


class SoundDeviceSink:
    """One mono int16 output stream, fed from a queue of blocks by PortAudio's callback."""

    def __init__(self, device_name: str, rate_hz: int, volume: float, reference=None, duck_db: float = DUCK_DB) -> None:
        """reference: an audio.echo.EchoReference that is given every block played (for the echo canceller);
        duck_db: how much lower duck() makes it."""
        import sounddevice as sd

        self._reference = reference
        if reference is not None:
            reference.begin_stream(rate_hz)

        self.rate_hz = rate_hz
        self.first_audio_monotonic: float | None = None
        self._volume = volume
        self._duck_target = self._duck_gain = 1.0  # the callback moves _duck_gain to _duck_target
        self._ducked_gain = 10.0 ** (-duck_db / 20.0)
        self._blocks: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()
        self._consumed = 0  # frames handed to the device, for stall detection
        self._stream_error: str | None = None
        self._interrupted = False
        device = find_device(device_name, is_input=False)
        self.device_name = device.name
        try:
            self._stream = sd.OutputStream(
                samplerate=rate_hz,
                channels=1,
                dtype="int16",
                device=device.index,
                blocksize=BLOCK_FRAMES,
                # the echo canceller's reference must not slip: a device that runs dry between two late callbacks
                # moves the robot's voice against what the reference says was played
                latency=ECHO_LATENCY_S if reference is not None else "low",
                callback=self._callback,
                finished_callback=self._finished,
            )
            self._stream.start()
        except sd.PortAudioError as e:
            raise DeviceError(
                f"cannot open output device {device.name!r} at {rate_hz} Hz mono ({e}); "
                f"it offers {device.max_output_channels} channels, default {device.default_rate_hz:g} Hz"
            ) from None

    def _callback(self, outdata, frames, time_info, status) -> None:
        out = outdata[:, 0]
        filled = 0
        with self._lock:
            while filled < frames and self._blocks:
                block = self._blocks[0]
                take = min(frames - filled, len(block))
                out[filled : filled + take] = block[:take]
                if take == len(block):
                    self._blocks.popleft()
                else:
                    self._blocks[0] = block[take:]
                filled += take
            self._consumed += frames
        out[filled:] = 0
        if self._duck_gain != 1.0 or self._duck_target != 1.0:
            self._apply_duck(out)
        if self._reference is not None:  # what the device will play, when (PortAudio's clock), for the canceller
            if status.output_underflow:
                self._reference.resync()
            self._reference.write(out.copy(), time_info.outputBufferDacTime)
        if filled and self.first_audio_monotonic is None:
            delay_s = max(0.0, time_info.outputBufferDacTime - time_info.currentTime)
            self.first_audio_monotonic = time.monotonic() + delay_s

    def _apply_duck(self, out) -> None:
        """The ducking gain on a block on its way to the device (and the canceller's reference), ramped from the last
        block's gain to the one asked for."""
        import numpy as np

        target = self._duck_target
        ramp = np.linspace(self._duck_gain, target, len(out), endpoint=False, dtype=np.float32)
        out[:] = (out.astype(np.float32) * ramp).astype(np.int16)
        self._duck_gain = target

    def _finished(self) -> None:
        self._stream_error = "the output stream stopped"

    def _pending_frames(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._blocks)

    async def play(self, audio: Audio) -> bool:
        self._queue_samples(audio, is_first=True)
        return await self._wait_played()

    async def play_chunks(self, chunks: AsyncIterator[Audio]) -> bool:
        is_first = True
        async for chunk in chunks:
            if self._interrupted and not is_first:
                return False
            self._queue_samples(chunk, is_first)
            is_first = False
            if self._stream_error:
                raise PlaybackError(f"{self.device_name}: {self._stream_error}")
        return await self._wait_played()

    def _queue_samples(self, audio: Audio, is_first: bool) -> None:
        samples = audio.resampled(self.rate_hz).scaled(self._volume).samples
        with self._lock:
            self._blocks.append(samples)
            if is_first:
                self._interrupted = False

    async def _wait_played(self) -> bool:
        last_consumed, last_progress = -1, time.monotonic()
        while True:
            if self._interrupted:
                return False
            if self._stream_error:
                raise PlaybackError(f"{self.device_name}: {self._stream_error}")
            if self._pending_frames() == 0:
                await asyncio.sleep(self._stream.latency)  # let the last block leave the device buffer
                return not self._interrupted
            if self._consumed != last_consumed:
                last_consumed, last_progress = self._consumed, time.monotonic()
            elif time.monotonic() - last_progress > STALL_S:
                raise PlaybackError(f"{self.device_name}: the device took no audio for {STALL_S:g} s")
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._interrupted = True

    def set_volume(self, volume: float) -> None:
        import numpy as np

        with self._lock:
            if self._volume > 0:  # what is queued but not yet heard changes too
                factor = volume / self._volume
                self._blocks = collections.deque(
                    np.clip(b.astype(np.float32) * factor, -32768, 32767).astype(np.int16) for b in self._blocks
                )
            self._volume = volume

    def duck(self, is_ducked: bool) -> None:
        if self._reference is None:
            return  # no canceller: what the listener hears over the story is the robot's own voice, not a child
        self._duck_target = self._ducked_gain if is_ducked else 1.0

    async def close(self) -> None:
        self.stop()
        stream = self._stream
        await asyncio.to_thread(_close_stream, stream, self._reference)


def _close_stream(stream, reference=None) -> None:
    try:
        aborted_s = stream.time
        stream.abort()
        if reference is not None:  # the device's buffer was dropped: the canceller must not expect its echo
            reference.forget_from(aborted_s)
        stream.close()
    except Exception:  # a lost device may fail to close; there is nothing left to save
        log.debug("closing the output stream failed", exc_info=True)


class WavSink:
    """Writes the story's speech to a WAV file instead of a device."""

    def __init__(self, path: str | Path, rate_hz: int) -> None:
        self.rate_hz = rate_hz
        self.path = Path(path)
        self.first_audio_monotonic: float | None = None
        self._chunks: list[np.ndarray] = []
        self._is_stopped = False

    async def play(self, audio: Audio) -> bool:
        if self._is_stopped:
            return False
        if self.first_audio_monotonic is None:
            self.first_audio_monotonic = time.monotonic()
        self._chunks.append(audio.resampled(self.rate_hz).samples)
        return True

    async def play_chunks(self, chunks: AsyncIterator[Audio]) -> bool:
        async for chunk in chunks:
            if not await self.play(chunk):
                return False
        return True

    def stop(self) -> None:
        self._is_stopped = True

    def set_volume(self, volume: float) -> None:
        pass  # a file is written at full scale: the volume is for a room, not a recording

    def duck(self, is_ducked: bool) -> None:
        pass  # no room: nobody speaks over a file

    async def close(self) -> None:
        import numpy as np

        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rate_hz)
            w.writeframes(samples.astype("<i2").tobytes())
        tmp.replace(self.path)


PROBE_TIMEOUT_S = 5.0
APLAY_LATENCY_S = 0.1  # about what aplay's default ALSA buffer holds before the first sample is heard


class AplaySink:
    """ALSA's `aplay` as a subprocess per sentence, raw PCM16 on its stdin: stop() kills it, so silence is at once.

    It keeps nothing resident in the daemon (aplay is about 7 MiB while it plays, gone between sentences) and plays
    each sentence at the synthesizer's own rate, so nothing is resampled and numpy is never loaded.
    """

    def __init__(self, device_name: str, volume: float, binary: str = "aplay", *, spawn: SpawnChild) -> None:
        path = shutil.which(binary)
        if path is None:
            raise DeviceError(f"the program {binary!r} is not installed (Debian package alsa-utils)")
        self._binary = path
        self._device = device_name  # an ALSA PCM name ("default", "plughw:0,0"); "" for ALSA's default
        self._volume = volume
        self._spawn = spawn
        self.rate_hz = 0  # each sentence is played at its own rate
        self.first_audio_monotonic: float | None = None
        self._child: ChildProcess | None = None  # the sentence playing now
        self._interrupted = False
        self._probe()

    def _argv(self, rate_hz: int) -> list[str]:
        argv = [self._binary, "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", str(rate_hz)]
        return argv + (["-D", self._device] if self._device else [])

    def _probe(self) -> None:
        """10 ms of silence through the device: a speaker that cannot open is found now (DeviceError, so the
        caller can fall back to a WAV file), not in the middle of the first sentence."""
        try:
            done = subprocess.run(self._argv(16000), input=bytes(320), capture_output=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DeviceError(
                f"aplay: the output device did not take 10 ms of sound in {PROBE_TIMEOUT_S:g} s"
            ) from None
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip().splitlines()
            raise DeviceError(
                f"aplay cannot play to {self._device or 'ALSA default'}: {why[-1] if why else done.returncode}"
            )

    async def play(self, audio: Audio) -> bool:
        async def one() -> AsyncIterator[Audio]:
            yield audio

        return await self.play_chunks(one())

    async def play_chunks(self, chunks: AsyncIterator[Audio]) -> bool:
        """One aplay for the sentence, at its first piece's rate, fed each piece as it comes."""
        self._interrupted = False
        first = await anext(chunks, None)
        if first is None:
            return True
        self._child = child = self._spawn(self._argv(first.rate_hz), name="aplay", has_stdout=False)
        await child.start()
        if self.first_audio_monotonic is None:
            self.first_audio_monotonic = time.monotonic() + APLAY_LATENCY_S
        fed_s = [0.0]  # for the time-out: a device that takes nothing is lost, not slow

        async def pieces() -> AsyncIterator[bytes]:
            audio: Audio | None = first
            while audio is not None:
                if audio.rate_hz != first.rate_hz:
                    audio = audio.resampled(first.rate_hz)
                fed_s[0] += audio.duration_s
                yield _scaled_pcm(audio.pcm, self._volume)
                audio = await anext(chunks, None)

        try:
            code = await _within_played(_feed(child, pieces()), fed_s)
        except TimeoutError:
            await child.kill()
            raise PlaybackError(f"aplay: {fed_s[0]:.1f} s of speech not played after {fed_s[0] + 10:.0f} s") from None
        except (BrokenPipeError, ConnectionResetError):  # stopped (killed) while it was fed, or it gave up
            code = await child.wait()
            await child.wait_for_stderr(0.5)
        except asyncio.CancelledError:
            child.kill_now()
            raise
        finally:
            self._child = None
        if self._interrupted:
            return False
        if code != 0:
            raise PlaybackError(f"aplay: {child.exit_words()}: {child.stderr_tail[:200]}")
        return True

    def stop(self) -> None:
        self._interrupted = True
        if self._child is not None and self._child.is_running:
            self._child.kill_now()  # silence at once

    def set_volume(self, volume: float) -> None:
        self._volume = volume  # from the next sentence on

    def duck(self, is_ducked: bool) -> None:
        pass  # no canceller on this path (no reference), so nobody is heard over the story: nothing to duck for

    async def close(self) -> None:
        self.stop()


async def play_pieces(sink: Sink, pieces: AsyncIterator[Audio]) -> bool:
    """sink.play_chunks(pieces), or each piece in turn on a speaker that cannot take them as they come."""
    play_chunks = getattr(sink, "play_chunks", None)
    if play_chunks is not None:
        return await play_chunks(pieces)
    async for piece in pieces:
        if not await sink.play(piece):
            return False
    return True


FEED_CHUNK_BYTES = 64 * 1024  # a pipe's buffer
PLAY_GRACE_S = 10.0  # beyond the speech's own length: a device that takes nothing for this long is lost


async def _within_played(feeding, fed_s: list[float]):
    """feeding's result, or TimeoutError once it has taken PLAY_GRACE_S longer than the speech fed so far."""
    task = asyncio.ensure_future(feeding)
    started = time.monotonic()
    try:
        while True:
            left_s = started + fed_s[0] + PLAY_GRACE_S - time.monotonic()
            if left_s <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({task}, timeout=min(left_s, 1.0))
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _feed(child: ChildProcess, pieces: AsyncIterator[bytes]) -> int | None:
    """pieces into aplay a pipe's buffer at a time (asyncio's pipe transport would keep a copy of all it could not
    write at once: a sentence's speech twice in the daemon); its exit status once it has played it all."""
    async for pcm in pieces:
        view = memoryview(pcm)
        for start in range(0, len(view), FEED_CHUNK_BYTES):
            child.stdin.write(view[start : start + FEED_CHUNK_BYTES])
            await child.stdin.drain()
    child.stdin.close()
    code = await child.wait()
    await child.wait_for_stderr(1.0)  # its last words, for the error
    return code


def _scaled_pcm(pcm: bytes, gain: float) -> bytes:
    """PCM16 scaled by gain without numpy (a sentence is a few tens of thousands of samples)."""
    if gain >= 0.999:
        return pcm
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    scaled = array.array("h", (int(x * gain) for x in samples))
    if sys.byteorder == "big":
        scaled.byteswap()
    return scaled.tobytes()


def open_sink(
    device_name: str,
    rate_hz: int,
    volume: float,
    wav_path: str | None,
    wav_fallback: str,
    *,
    lean: bool = False,
    reference=None,
    duck_db: float = DUCK_DB,
    spawn: SpawnChild,
) -> Sink:
    """The speaker, or a WAV file when one was asked for or no output device opens.

    lean: play through `aplay` (no PortAudio, no numpy in the daemon) when it is installed; PortAudio otherwise.
    reference: an audio.echo.EchoReference the PortAudio speaker gives what it plays (the echo canceller's).
    duck_db: how much lower the PortAudio speaker plays while someone speaks over it (Sink.duck).
    spawn: how aplay's children are made (engines.child.Child, handed in by the supervisor).
    """
    if wav_path:
        return WavSink(wav_path, rate_hz)
    if lean and shutil.which("aplay"):
        try:
            return AplaySink(_alsa_name(device_name), volume, spawn=spawn)
        except DeviceError as e:
            log.warning("no speaker (%s); writing speech to %s", e, wav_fallback)
            return WavSink(wav_fallback, rate_hz)
    try:
        return SoundDeviceSink(device_name, rate_hz, volume, reference, duck_db)
    except DeviceError as e:
        log.warning("no speaker (%s); writing speech to %s", e, wav_fallback)
        return WavSink(wav_fallback, rate_hz)


def _alsa_name(device_name: str) -> str:
    """audio.output_device as an ALSA PCM for aplay: "" (ALSA's default) unless it already is an ALSA name."""
    if device_name in ("default", "pulse") or device_name.startswith(("hw:", "plughw:", "sysdefault", "dmix")):
        return device_name
    return ""
