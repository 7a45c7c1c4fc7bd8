"""Microphone capture: a sounddevice input stream delivering 16 kHz mono int16 frames to asyncio.

The device is asked for 16 kHz mono first; a device that refuses (PortAudio -9997/-9998) is opened at its own
rate and channel count, and the audio is downmixed and resampled here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from audio.devices import DeviceError, find_device
from audio.speech import FULL_SCALE_SQUARED, to_mono_int16

if TYPE_CHECKING:
    from audio.pulse_source import SourceWatch

log = logging.getLogger(__name__)

RATE_HZ = 16000
QUEUE_FRAMES = 256  # ~7.7 s of 30 ms frames; past it the oldest block is dropped and its frames counted
# PortAudio hands over this many frames per callback. Each callback wakes the capture thread, the sound server's
# client thread and the event loop: at one 30 ms frame per callback that was most of the 4% of a core the daemon
# spent listening to silence. Three frames (90 ms) cost a third, and add about 120 ms of input latency (PortAudio
# buffers two callbacks' worth) to a 700 ms end-of-speech silence.
FRAMES_PER_CALLBACK = 3
# Quiet audio (see hold_quiet_below) waits in the capture thread for up to this long before the event loop is
# woken for it: listening to a silent room then wakes the loop twice a second instead of eleven times.
QUIET_HOLD_S = 0.5
FRAME_WATCHDOG_S = 2.0
FIRST_FRAME_WATCHDOG_S = 5.0  # a stream may take a while to deliver its first block
SOURCE_CHECK_S = 1.0  # how long open() waits for a PulseAudio stream to show up on its source


class MicStalled(RuntimeError):
    """The input stream delivered no frames for FRAME_WATCHDOG_S."""


class Microphone:
    def __init__(
        self,
        device_name: str,
        block_ms: int,
        device_rate_hz: int = 0,
        device_channels: int = 0,
        frames_per_callback: int = FRAMES_PER_CALLBACK,
        canceller=None,
    ) -> None:
        """block_ms: the length of a frame read(); device_rate_hz / device_channels: open the device so (0: ask
        for 16 kHz mono, then what it offers); frames_per_callback: frames PortAudio delivers at once;
        canceller: an audio.echo.EchoCanceller that takes the robot's own playback out of every block."""
        self._canceller = canceller
        self.frame_samples = RATE_HZ * block_ms // 1000
        self._callback_samples = self.frame_samples * max(1, frames_per_callback)
        self._device_name = device_name
        self._device_rate_hz = device_rate_hz
        self._device_channels = device_channels
        # blocks of whole frames, as they arrive; read() hands them out frame by frame
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(
            maxsize=max(1, QUEUE_FRAMES // max(1, frames_per_callback))
        )
        self._frames: collections.deque[np.ndarray] = collections.deque()
        self._pending = np.zeros(0, dtype=np.int16)
        self._held: list[np.ndarray] = []  # quiet blocks the capture thread has not handed over yet
        self._held_samples = 0
        self._is_flowing = False
        self._quiet_energy = 0.0  # 0: every block is handed over at once
        self.is_urgent = False  # set by the reader while it needs every block at once (an utterance is open)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream = None
        self._resampler = None
        self.dropped_frames = 0
        self.overflows = 0
        self._has_frames = False
        self.device_description = ""
        self._watch: SourceWatch | None = None  # while the stream is a PulseAudio one

    def hold_quiet_below(self, level_dbfs: float) -> None:
        """Let blocks in which no frame can reach level_dbfs wait in the capture thread (up to QUIET_HOLD_S,
        unless is_urgent): a reader whose detector takes such frames for silence loses nothing by it, because
        the first louder block hands them all over, in order, with it."""
        # A frame's energy is at most that of the blocks it lies in, two at most (a resampled block need not
        # start on a frame): below half a frame's worth of energy at level_dbfs, no frame reaches it.
        self._quiet_energy = 0.5 * self.frame_samples * FULL_SCALE_SQUARED * 10.0 ** (level_dbfs / 10.0)

    def open(self) -> None:
        self._open()
        self._watch_source()

    def _watch_source(self) -> None:
        """Through a PulseAudio server, the stream must be on the source it was meant for: one that is not (the
        microphone is unplugged, and the server put the stream elsewhere) is a device error, so that the
        listener tries again until the microphone is back."""
        from audio.pulse_source import SourceWatch, own_capture_sources

        watch = SourceWatch.start()
        if watch is None:
            return
        deadline = time.monotonic() + SOURCE_CHECK_S
        sources = own_capture_sources(os.getpid())
        while not sources and time.monotonic() < deadline:  # the stream may take a moment to show up
            time.sleep(0.05)
            sources = own_capture_sources(os.getpid())
        if sources and watch.wanted not in sources:
            watch.close()
            self.close()
            raise DeviceError(f"the microphone {watch.wanted} is not there (the sound server offers {sources[0]})")
        self._watch = watch

    def _open(self) -> None:
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
            blocksize=max(1, rate * self._callback_samples // RATE_HZ),
            callback=self._callback,
            latency="low",  # the default ("high") holds the first block back for 2 s on ALSA's pulse plugin
        )
        stream.start()
        return stream

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
            if self._canceller is not None:
                self._canceller.resync()
        mono = to_mono_int16(indata)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        samples = np.array(mono, dtype=np.int16)
        if self._canceller is not None:
            # when the block's first sample was captured, on the clock the speaker's stream stamps its blocks with
            samples = self._canceller.process(samples, time_info.inputBufferAdcTime)
        self._held.append(samples)
        self._held_samples += len(samples)
        if self._is_held(samples):
            return
        held = self._held[0] if len(self._held) == 1 else np.concatenate(self._held)
        self._held, self._held_samples = [], 0
        assert self._loop is not None  # set before the stream starts
        self._loop.call_soon_threadsafe(self._push, held)

    def _is_held(self, samples: np.ndarray) -> bool:
        if not self._quiet_energy or self.is_urgent or self._held_samples >= QUIET_HOLD_S * RATE_HZ:
            return False
        if not self._is_flowing:  # the first block goes at once: it tells the reader that audio flows
            self._is_flowing = True
            return False
        x = samples.astype(np.float32)
        return float(np.dot(x, x)) < self._quiet_energy

    def _push(self, samples: np.ndarray) -> None:
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        whole = len(pending) - len(pending) % self.frame_samples
        self._pending = pending[whole:]
        if not whole:
            return
        if self._queue.full():
            self.dropped_frames += len(self._queue.get_nowait()) // self.frame_samples
        self._queue.put_nowait(pending[:whole])

    async def read(self) -> np.ndarray:
        """The next frame; a frame of the block at hand is returned without waiting (or timers) at all."""
        if not self._frames:
            self._frames.extend(await self.read_block())
        return self._frames.popleft()

    async def read_block(self) -> np.ndarray:
        """The frames that arrived together, shape (n, frame_samples): one wake-up of the event loop for all."""
        self._check_source()
        if self._frames:  # frames that read() has not handed out yet come first
            block = np.stack(list(self._frames))
            self._frames.clear()
            return block
        if self._queue.empty():
            samples = await self._wait_for_block()
        else:
            samples = self._queue.get_nowait()
        self._has_frames = True
        return samples.reshape(-1, self.frame_samples)

    async def _wait_for_block(self) -> np.ndarray:
        timeout_s = FRAME_WATCHDOG_S if self._has_frames else FIRST_FRAME_WATCHDOG_S
        deadline_s = time.monotonic() + timeout_s
        while True:
            # while the source is watched, the wait is cut in slices: a stream moved to a silent source is said
            # to be moved, not stalled
            slice_s = deadline_s - time.monotonic()
            if self._watch is not None:
                self._check_source()
                slice_s = min(slice_s, SOURCE_CHECK_S)
            try:
                async with asyncio.timeout(max(0.0, slice_s)):  # no task per wait, unlike wait_for
                    return await self._queue.get()
            except TimeoutError:
                if time.monotonic() >= deadline_s:
                    raise MicStalled(f"no audio from the microphone for {timeout_s:g} s") from None

    def _check_source(self) -> None:
        if self._watch is not None and self._watch.moved_to is not None:
            raise DeviceError(
                f"the microphone {self._watch.wanted} went away (the sound server moved the capture to "
                f"{self._watch.moved_to})"
            )

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._stream is not None:
            try:
                self._stream.abort()
                self._stream.close()
            except Exception:
                log.debug("closing the input stream failed", exc_info=True)
            self._stream = None
