"""Microphone capture: a sounddevice input stream delivering 16 kHz mono int16 frames to asyncio.

The device is asked for 16 kHz mono first; a device that refuses (PortAudio -9997/-9998) is opened at its own
rate and channel count, and the audio is downmixed and resampled here.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from audio.devices import DeviceError, find_device
from audio.speech import to_mono_int16

log = logging.getLogger(__name__)

RATE_HZ = 16000
QUEUE_FRAMES = 256  # ~7.7 s of 30 ms frames; past it the oldest frame is dropped and counted
FRAME_WATCHDOG_S = 2.0
FIRST_FRAME_WATCHDOG_S = 5.0  # a stream may take a while to deliver its first block


class MicStalled(RuntimeError):
    """The input stream delivered no frames for FRAME_WATCHDOG_S."""


class Microphone:
    def __init__(self, device_name: str, block_ms: int, device_rate_hz: int = 0, device_channels: int = 0) -> None:
        """device_rate_hz / device_channels: open the device so (0: ask for 16 kHz mono, then what it offers)."""
        self.frame_samples = RATE_HZ * block_ms // 1000
        self._device_name = device_name
        self._device_rate_hz = device_rate_hz
        self._device_channels = device_channels
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=QUEUE_FRAMES)
        self._pending = np.zeros(0, dtype=np.int16)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream = None
        self._resampler = None
        self.dropped_frames = 0
        self.overflows = 0
        self._has_frames = False
        self.device_description = ""

    def open(self) -> None:
        import sounddevice as sd

        self._loop = asyncio.get_running_loop()
        device = find_device(self._device_name, is_input=True)
        if not (self._device_rate_hz or self._device_channels):
            try:
                self._stream = self._start(sd, device.index, RATE_HZ, 1)
                self.device_description = f"{device.name} at {RATE_HZ} Hz mono"
                return
            except sd.PortAudioError as first:
                log.info("%s refused %d Hz mono (%s); trying its own format", device.name, RATE_HZ, first)
        rate = self._device_rate_hz or int(device.default_rate_hz)
        channels = self._device_channels or max(1, min(device.max_input_channels, 2))
        import soxr

        try:
            self._resampler = soxr.ResampleStream(rate, RATE_HZ, 1, dtype="int16")
            self._stream = self._start(sd, device.index, rate, channels)
        except sd.PortAudioError as e:
            raise DeviceError(
                f"cannot open input device {device.name!r}: {e}; it offers {device.max_input_channels} channels "
                f"at {device.default_rate_hz:g} Hz"
            ) from None
        self.device_description = f"{device.name} at {rate} Hz x{channels}, resampled to {RATE_HZ} Hz mono"

    def _start(self, sd, index: int, rate: int, channels: int):
        stream = sd.InputStream(
            samplerate=rate,
            channels=channels,
            dtype="int16",
            device=index,
            blocksize=max(1, rate * self.frame_samples // RATE_HZ),
            callback=self._callback,
            latency="low",  # the default ("high") holds the first block back for 2 s on ALSA's pulse plugin
        )
        stream.start()
        return stream

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        mono = to_mono_int16(indata)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        self._loop.call_soon_threadsafe(self._push, np.array(mono, dtype=np.int16))

    def _push(self, samples: np.ndarray) -> None:
        self._pending = np.concatenate((self._pending, samples))
        n = self.frame_samples
        while len(self._pending) >= n:
            frame, self._pending = self._pending[:n], self._pending[n:]
            if self._queue.full():
                self._queue.get_nowait()
                self.dropped_frames += 1
            self._queue.put_nowait(frame)

    async def read(self) -> np.ndarray:
        timeout_s = FRAME_WATCHDOG_S if self._has_frames else FIRST_FRAME_WATCHDOG_S
        try:
            frame = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            raise MicStalled(f"no audio from the microphone for {timeout_s:g} s") from None
        self._has_frames = True
        return frame

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.abort()
                self._stream.close()
            except Exception:
                log.debug("closing the input stream failed", exc_info=True)
            self._stream = None
