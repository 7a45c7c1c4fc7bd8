"""Playing speech: a sounddevice output stream that can be silenced at once, or a WAV file when there is none."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import wave
from pathlib import Path
from typing import Protocol

import numpy as np

from audio.devices import DeviceError, find_device
from audio.speech import Audio

log = logging.getLogger(__name__)

BLOCK_FRAMES = 441  # 20 ms at 22.05 kHz: how quickly stop() is heard
STALL_S = 2.0  # a stream that consumes nothing for this long is a lost device


class PlaybackError(RuntimeError):
    """The output device failed while playing."""


class Sink(Protocol):
    rate_hz: int
    first_audio_monotonic: float | None  # when the first sample of this story reached the device

    async def play(self, audio: Audio) -> bool:
        """Play to the end (True) or until stop() (False)."""
        ...

    def stop(self) -> None: ...

    def set_volume(self, volume: float) -> None:
        """Gain 0-1 for what is played from now on."""
        ...

    async def close(self) -> None: ...


class SoundDeviceSink:
    """One mono int16 output stream, fed from a queue of blocks by PortAudio's callback."""

    def __init__(self, device_name: str, rate_hz: int, volume: float) -> None:
        import sounddevice as sd

        self.rate_hz = rate_hz
        self.first_audio_monotonic: float | None = None
        self._volume = volume
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
                latency="low",
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
        if filled and self.first_audio_monotonic is None:
            delay_s = max(0.0, time_info.outputBufferDacTime - time_info.currentTime)
            self.first_audio_monotonic = time.monotonic() + delay_s

    def _finished(self) -> None:
        self._stream_error = "the output stream stopped"

    def _pending_frames(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._blocks)

    async def play(self, audio: Audio) -> bool:
        samples = audio.resampled(self.rate_hz).scaled(self._volume).samples
        with self._lock:
            self._blocks.append(samples)
            self._interrupted = False
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
        with self._lock:
            if self._volume > 0:  # what is queued but not yet heard changes too
                factor = volume / self._volume
                self._blocks = collections.deque(
                    np.clip(b.astype(np.float32) * factor, -32768, 32767).astype(np.int16) for b in self._blocks
                )
            self._volume = volume

    async def close(self) -> None:
        self.stop()
        stream = self._stream
        await asyncio.to_thread(_close_stream, stream)


def _close_stream(stream) -> None:
    try:
        stream.abort()
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

    def stop(self) -> None:
        self._is_stopped = True

    def set_volume(self, volume: float) -> None:
        pass  # a file is written at full scale: the volume is for a room, not a recording

    async def close(self) -> None:
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rate_hz)
            w.writeframes(samples.astype("<i2").tobytes())
        tmp.replace(self.path)


def open_sink(device_name: str, rate_hz: int, volume: float, wav_path: str | None, wav_fallback: str) -> Sink:
    """The speaker, or a WAV file when one was asked for or no output device opens."""
    if wav_path:
        return WavSink(wav_path, rate_hz)
    try:
        return SoundDeviceSink(device_name, rate_hz, volume)
    except DeviceError as e:
        log.warning("no speaker (%s); writing speech to %s", e, wav_fallback)
        return WavSink(wav_fallback, rate_hz)
