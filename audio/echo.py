"""Acoustic echo cancellation: the robot's own playback taken out of what its microphone hears.

The daemon owns both ends. The speaker's callback writes every block it hands to the device into an
EchoReference (resampled to 16 kHz, stamped with the monotonic time it is due at the DAC); the microphone's
callback passes every block through an EchoCanceller, which reads the reference for the same moment and runs
SpeexDSP's echo canceller (MDF, an adaptive filter) and its residual-echo suppressor on 10 ms frames. SpeexDSP is
Debian's libspeexdsp1, called through ctypes (a few functions; no binding package needed).

Neither stream's timestamps are exact (ALSA's pulse plugin reports its latency roughly, a sound server or a USB
microphone adds its own), and the filter only covers a short tail. So each stream's timestamps only anchor it once
(when it starts, and again after a gap the stream reports: an underflow or an overflow), and its blocks are then
placed by counting samples; the delay between the reference and its echo is measured from the signals themselves
(a phase-transform cross-correlation, four times a second while the robot speaks), and the reference is fed
GUARD_MS ahead of the echo, inside the filter.

While the speaker has been silent for TAIL_HOLD_S the microphone passes through untouched: listening to a quiet
room, or to a child's request, costs nothing and hears exactly what it heard before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

RATE_HZ = 16000
FRAME_SAMPLES = 160  # 10 ms: SpeexDSP's usual frame at 16 kHz
GUARD_MS = 40  # the reference leads its echo by this much: an echo up to this much early is still in the filter
RING_S = 8.0  # reference kept; the measured delay can be at most LAG_MAX_MS
TAIL_HOLD_S = 1.0  # the canceller runs until the speaker has been silent this long (the echo's tail and delay)
LOUD_DBFS = -55.0  # a reference block above this is sound the microphone may hear again
# delay estimation
ESTIMATE_EVERY_S = 0.25
ESTIMATE_WINDOW_S = 0.5
# The lags searched. Through PulseAudio the stream timestamps can be off by more than the echo's own delay: in the
# leaky sound room the echo was found at -95 ms and beyond 600 ms in some daemon runs (the loopback itself: 21 ms),
# and with the search cut at -100..600 ms the filter never found it (echo reduced by 1.9-2.5 dB where 14 dB is usual).
LAG_MIN_MS = -500  # a timestamp error may make the echo seem to come before its reference
LAG_MAX_MS = 2000
# A frame the canceller took this much out of is the robot's own voice, whatever is left of it (the adaptive
# filter leaves a residual that a voice detector takes for speech): it is attenuated by GATE_ATTENUATION_DB more.
# A child speaking over the robot is left as it is: the canceller takes only the echo out of such a frame.
GATE_DB = 10.0
GATE_ATTENUATION_DB = 30.0
# The gate judges the frame's band under GATE_SPLIT_HZ and the band above it apart. Judged whole, a frame with a
# child's "s" in it (quiet, high) and the robot's loud vowel (low) was gated as echo, and "stop" reached the
# recognizers as "top": over a loud story in the leaky sound room PocketSphinx's command grammar heard 5 of 87
# recorded stops, 16 of 85 with the two bands (scripts/record_stop_words.py recordings of the tests' voices, the
# stop-word classifier's hits going from 47 to 62 with it, before it was trained on the two-band output).
GATE_SPLIT_HZ = 5000
GATE_SPLIT_BIN = GATE_SPLIT_HZ * FRAME_SAMPLES // RATE_HZ  # the first rfft bin of a frame's upper band
PEAK_RATIO = 6.0  # a correlation peak this many times above the correlation's typical magnitude is trusted
# A peak this close to either end of the lags searched is not trusted. In a sound-room run the estimate swung between
# the two ends (600 ms and -100 ms, 26 changes in 64 s of speech), each move restarting the filter, and the echo was
# reduced by 1.7 dB where 15 dB is usual; CI's leaky room once settled on 600 ms the same way.
EDGE_SAMPLES = 5 * RATE_HZ // 1000  # 5 ms
# Where a stream's blocks lie on the timeline: counted sample by sample. Callback timestamps through ALSA's pulse
# plugin jitter by up to 20 ms, and even their median over 40 blocks wandered by 3-30 ms while the echo itself stayed
# within 0.3 ms of its place (measured in the leaky sound room); following them moved the reference against its
# echo and the filter had to learn the room again each time (5-10 dB of echo reduction instead of 35-65 dB). So a
# stream is placed by its timestamp only when it starts, after a gap it reports (resync()), or when the timestamp
# is past TIMELINE_JUMP_MS from the count; a slip the filter's window cannot hold is found by the delay estimate.
TIMELINE_JUMP_MS = 500

SPEEX_ECHO_SET_SAMPLING_RATE = 24
SPEEX_PREPROCESS_SET_DENOISE = 0
SPEEX_PREPROCESS_SET_AGC = 2
SPEEX_PREPROCESS_SET_ECHO_SUPPRESS = 20
SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 22
SPEEX_PREPROCESS_SET_ECHO_STATE = 24

_epoch_s: float | None = None  # sample index 0 of both streams' common timeline, on PortAudio's clock


class EchoError(RuntimeError):
    """The canceller cannot be built here (no libspeexdsp)."""


@dataclass(frozen=True)
class EchoSettings:
    # the echo tail the adaptive filter models, beyond the measured delay: a longer one learns the room more slowly
    # (in the leaky sound room 100 ms reached 35 dB within 2 s of the story's start, 200 ms needed 3-4 s)
    filter_ms: int = 100
    suppress_db: int = -40  # residual echo suppression while only the robot speaks
    suppress_active_db: int = -15  # ... and while someone speaks over it (double talk)
    denoise: bool = True  # SpeexDSP's noise suppression on the cancelled signal


def _index(at_s: float) -> int:
    """A time on PortAudio's stream clock (time_info's, the same for every stream of the process) as a sample
    index of the common timeline."""
    global _epoch_s
    if _epoch_s is None:
        _epoch_s = at_s - 1.0
    return round((at_s - _epoch_s) * RATE_HZ)


def _library():
    name = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise EchoError(f"echo cancellation needs libspeexdsp (Debian package libspeexdsp1): {e}") from None
    lib.speex_echo_state_init.restype = ctypes.c_void_p
    lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_echo_state_reset.argtypes = [ctypes.c_void_p]
    lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
    lib.speex_preprocess_state_init.restype = ctypes.c_void_p
    lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
    return lib


def check_library() -> None:
    """EchoError when libspeexdsp cannot be loaded here."""
    _library()


class SpeexCanceller:
    """SpeexDSP's echo canceller and preprocessor on FRAME_SAMPLES frames of 16 kHz int16."""

    def __init__(self, settings: EchoSettings) -> None:
        self._lib = lib = _library()
        filter_samples = (settings.filter_ms + GUARD_MS) * RATE_HZ // 1000
        self._echo = lib.speex_echo_state_init(FRAME_SAMPLES, filter_samples)
        self._pre = lib.speex_preprocess_state_init(FRAME_SAMPLES, RATE_HZ)
        if not self._echo or not self._pre:
            raise EchoError("libspeexdsp could not make its echo canceller")
        self._ctl(lib.speex_echo_ctl, self._echo, SPEEX_ECHO_SET_SAMPLING_RATE, RATE_HZ)
        self._ctl(lib.speex_preprocess_ctl, self._pre, SPEEX_PREPROCESS_SET_DENOISE, int(settings.denoise))
        self._ctl(lib.speex_preprocess_ctl, self._pre, SPEEX_PREPROCESS_SET_AGC, 0)  # would lift residual echo
        self._ctl(lib.speex_preprocess_ctl, self._pre, SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, settings.suppress_db)
        self._ctl(
            lib.speex_preprocess_ctl, self._pre, SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, settings.suppress_active_db
        )
        lib.speex_preprocess_ctl(self._pre, SPEEX_PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(self._echo))
        # close() may come from another thread (a garbage-collected Microphone) while a capture callback whose
        # stream could not be aborted still runs: the states are never freed under a running frame
        self._lock = threading.Lock()

    @staticmethod
    def _ctl(function, state, request: int, value: int) -> None:
        number = ctypes.c_int32(value)
        function(state, request, ctypes.byref(number))

    def process(self, mic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """One frame of the microphone less the echo of reference (both FRAME_SAMPLES int16)."""
        mic = np.ascontiguousarray(mic, dtype=np.int16)
        reference = np.ascontiguousarray(reference, dtype=np.int16)
        out = np.empty(FRAME_SAMPLES, dtype=np.int16)
        with self._lock:
            if not self._echo:
                return mic.copy()  # closed: the microphone as it is
            self._lib.speex_echo_cancellation(self._echo, mic.ctypes.data, reference.ctypes.data, out.ctypes.data)
            self._lib.speex_preprocess_run(self._pre, out.ctypes.data)
        return out

    def reset(self) -> None:
        with self._lock:
            if self._echo:
                self._lib.speex_echo_state_reset(self._echo)

    def close(self) -> None:
        lock = getattr(self, "_lock", None)  # None: __init__ failed before it was made
        if lock is None:
            return
        with lock:
            if self._echo:
                self._lib.speex_preprocess_state_destroy(self._pre)
                self._lib.speex_echo_state_destroy(self._echo)
                self._echo = self._pre = None

    def __del__(self) -> None:
        self.close()


class _Timeline:
    """The sample positions of one stream's blocks on the common timeline (see TIMELINE_JUMP_MS)."""

    def __init__(self) -> None:
        self.next: int | None = None

    def resync(self) -> None:
        """The stream reported a gap (samples lost or silence inserted): its next timestamp places it anew."""
        self.next = None

    def place(self, at_index: int, count: int) -> int:
        """Where a block of count samples stamped at_index begins."""
        if self.next is None or abs(at_index - self.next) > TIMELINE_JUMP_MS * RATE_HZ // 1000:
            self.next = at_index
        start = self.next
        self.next += count
        return start


class EchoReference:
    """What the speaker played, at 16 kHz on the monotonic clock: written by the playback callback (begin_stream,
    write), read by the capture callback (read). Thread-safe; silence wherever nothing was played."""

    def __init__(self, ring_s: float = RING_S) -> None:
        self._ring = np.zeros(int(ring_s * RATE_HZ), dtype=np.int16)
        self._head: int | None = None  # absolute index one past the newest sample written
        self._timeline = _Timeline()
        self._resampler = None
        self._rate_hz = 0
        self._lock = threading.Lock()
        self._stamp_offset = 0  # the latest block's place on the timeline less its timestamp's index
        self.resyncs = 0  # underflows of the output stream (each places the reference anew)
        self.last_loud_s = -1e18  # when the latest loud block is due at the DAC (PortAudio's clock)

    def begin_stream(self, rate_hz: int) -> None:
        """A new output stream: its samples are anchored afresh, and resampled from rate_hz."""
        with self._lock:
            self._timeline = _Timeline()
            self._rate_hz = rate_hz
            self._resampler = None
            if rate_hz != RATE_HZ:
                import soxr

                self._resampler = soxr.ResampleStream(rate_hz, RATE_HZ, 1, dtype="int16")

    def resync(self) -> None:
        """The output stream ran dry (an underflow): the device played silence the count does not know of."""
        with self._lock:
            self._timeline.resync()
        self.resyncs += 1

    def write(self, samples: np.ndarray, dac_s: float) -> None:
        """samples (int16 at the stream's rate) are due at the DAC at dac_s (PortAudio's clock)."""
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        samples = np.asarray(samples, dtype=np.int16)
        if not len(samples):
            return
        with self._lock:
            start = self._timeline.place(_index(dac_s), len(samples))
            self._stamp_offset = start - _index(dac_s)
            self._put(start, samples)
        peak = int(np.abs(samples).max())
        if peak and 20 * np.log10(peak / 32768.0) > LOUD_DBFS:
            self.last_loud_s = dac_s + len(samples) / RATE_HZ

    def forget_from(self, at_s: float) -> None:
        """The stream was aborted at at_s (PortAudio's clock): what it was given for later never played. Left in
        the reference, the canceller would take an echo that never came out of the microphone, and the room would
        hear the robot's last words inverted (taken for a request)."""
        with self._lock:
            if self._head is None:
                return
            cut = _index(at_s) + self._stamp_offset
            if cut < self._head:
                gone = np.arange(max(cut, self._head - len(self._ring)), self._head)
                self._ring[gone % len(self._ring)] = 0
                self._head = cut
            self.last_loud_s = min(self.last_loud_s, at_s)

    def _put(self, start: int, samples: np.ndarray) -> None:
        size = len(self._ring)
        if self._head is None:
            self._head = start
        if start > self._head:  # what was not written is silence, not what the ring held a lap ago
            gap = np.arange(self._head, min(start, self._head + size))
            self._ring[gap % size] = 0
        samples = samples[-size:]
        where = np.arange(start, start + len(samples)) % size
        self._ring[where] = samples
        self._head = max(self._head, start + len(samples))

    def read(self, start: int, count: int) -> np.ndarray:
        """count samples from absolute index start; silence where nothing was played."""
        index = np.arange(start, start + count)
        with self._lock:
            if self._head is None:
                return np.zeros(count, dtype=np.int16)
            valid = (index < self._head) & (index >= self._head - len(self._ring))
            return np.where(valid, self._ring[index % len(self._ring)], 0).astype(np.int16)


class EchoCanceller:
    """The microphone's side: process() takes a block of 16 kHz int16 with the time its first sample was
    captured (PortAudio's clock, time_info.inputBufferAdcTime), and returns the cancelled audio (in 10 ms frames: up to 159 samples wait for the next block)."""

    def __init__(self, reference: EchoReference, settings: EchoSettings | None = None) -> None:
        self._reference = reference
        self._speex_settings = settings or EchoSettings()
        self._speex = SpeexCanceller(self._speex_settings)
        self._pending = np.zeros(0, dtype=np.int16)
        self._timeline = _Timeline()
        self._next_index = 0  # absolute index of _pending[0]
        # the echo's delay, as measured; at first as if both streams' timestamps were exact (the filter then
        # covers echoes from GUARD_MS early, as timestamps made them seem in the sound room, to filter_ms late)
        self.delay_samples = 0
        self._filter_samples = (self._speex_settings.filter_ms) * RATE_HZ // 1000
        self._history = np.zeros(0, dtype=np.int16)  # raw microphone, for the delay estimate
        self._history_end = 0  # absolute index one past _history's last sample
        self._since_estimate = 0
        self._last_lag: int | None = None
        self.is_active = False
        # measurements, for benchmarks and the plan: CPU seconds spent, audio seconds cancelled
        self.cpu_s = 0.0
        self.cancelled_s = 0.0
        self.delay_changes = 0
        self.resyncs = 0  # overflows of the input stream (each places the microphone anew)
        self.raw_energy = self.out_energy = 0.0  # what came in and went out while cancelling (for ERLE)

    @property
    def delay_s(self) -> float:
        """The echo's delay behind the robot's playback, as measured now."""
        return self.delay_samples / RATE_HZ

    def resync(self) -> None:
        """The input stream lost samples (an overflow): its next timestamp places it anew."""
        self._timeline.resync()
        self.resyncs += 1

    def process(self, samples: np.ndarray, adc_s: float) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.int16)
        self._next_index = self._timeline.place(_index(adc_s), len(samples)) - len(self._pending)
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        whole = len(pending) - len(pending) % FRAME_SAMPLES
        frames, self._pending = pending[:whole], pending[whole:]
        start = self._next_index
        self._next_index += whole
        if not whole:
            return frames
        now_s = adc_s + len(samples) / RATE_HZ
        if now_s - self._reference.last_loud_s > TAIL_HOLD_S:
            if self.is_active:
                self.is_active = False
                self._history = np.zeros(0, dtype=np.int16)
                log.info(
                    "echo canceller: %.1f s of the robot's speech, echo reduced by %.1f dB, delay %.0f ms "
                    "(%d changes), CPU %.1f%% of a core; streams placed anew after %d microphone overflows "
                    "and %d speaker underflows",
                    self.cancelled_s,
                    self.erle_db,
                    self.delay_samples * 1000 / RATE_HZ,
                    self.delay_changes,
                    100 * self.cpu_s / max(self.cancelled_s, 1e-9),
                    self.resyncs,
                    self._reference.resyncs,
                )
            return frames  # the speaker is silent: nothing to cancel
        self.is_active = True
        began = time.thread_time()
        self._remember(frames, start)
        out = np.empty_like(frames)
        lead = self.delay_samples - GUARD_MS * RATE_HZ // 1000  # < 0: the reference is written ahead
        reference = self._reference.read(start - lead, whole)
        for i in range(0, whole, FRAME_SAMPLES):
            out[i : i + FRAME_SAMPLES] = self._speex.process(
                frames[i : i + FRAME_SAMPLES], reference[i : i + FRAME_SAMPLES]
            )
        raw_energy, out_energy = gate(frames, out)
        self.raw_energy += raw_energy
        self.out_energy += out_energy
        self.cpu_s += time.thread_time() - began
        self.cancelled_s += whole / RATE_HZ
        return out

    @property
    def erle_db(self) -> float:
        """Echo return loss enhancement so far: what came in over what went out while cancelling (a child's voice
        over the robot counts against it)."""
        return 10.0 * np.log10((self.raw_energy + 1.0) / (self.out_energy + 1.0))

    def _remember(self, frames: np.ndarray, start: int) -> None:
        keep = int(ESTIMATE_WINDOW_S * RATE_HZ)
        if start != self._history_end:
            self._history = np.zeros(0, dtype=np.int16)
        self._history = np.concatenate((self._history, frames))[-keep:]
        self._history_end = start + len(frames)
        self._since_estimate += len(frames)
        if self._since_estimate >= ESTIMATE_EVERY_S * RATE_HZ and len(self._history) >= keep:
            self._since_estimate = 0
            self._estimate_delay()

    def _estimate_delay(self) -> None:
        lag = estimate_delay(self._history, self._history_end, self._reference)
        previous, self._last_lag = self._last_lag, lag
        if lag is None or previous is None or abs(lag - previous) > RATE_HZ // 1000 * 3:
            return  # a lag is believed when two estimates in a row agree
        # The filter models lags from delay - GUARD_MS to delay + filter_ms: a lag inside (with a margin) is left
        # to the filter's own adaptation (a stream's slip of a few milliseconds, a sound server's rate
        # adjustment); moving the reference would cost as much re-learning as the slip. A lag outside moves the
        # window, and the filter starts afresh.
        margin = RATE_HZ // 100
        low = self.delay_samples - GUARD_MS * RATE_HZ // 1000 + margin
        high = self.delay_samples + self._filter_samples - 3 * margin
        if not low <= lag <= high:
            log.debug("echo delay %.1f ms (was %.1f ms)", lag * 1000 / RATE_HZ, self.delay_samples * 1000 / RATE_HZ)
            self.delay_samples = lag
            self.delay_changes += 1
            self._speex.reset()

    def close(self) -> None:
        self._speex.close()


def gate(frames: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """Attenuate, in place, each band of each 10 ms frame of out (the canceller's output for frames) that the
    canceller took more than GATE_DB out of; the energies of frames and of out before it, for the ERLE figure."""
    frames_in = frames.astype(np.float32).reshape(-1, FRAME_SAMPLES)
    frames_out = out.astype(np.float32).reshape(-1, FRAME_SAMPLES)
    energies = float(np.vdot(frames_in, frames_in)), float(np.vdot(frames_out, frames_out))
    raw, done = np.fft.rfft(frames_in, axis=1), np.fft.rfft(frames_out, axis=1)
    raw_power, done_power = np.square(np.abs(raw)), np.square(np.abs(done))
    gains = np.ones(done.shape, dtype=np.float32)
    for band in (slice(0, GATE_SPLIT_BIN), slice(GATE_SPLIT_BIN, None)):
        echo = done_power[:, band].sum(axis=1) * 10.0 ** (GATE_DB / 10.0) < raw_power[:, band].sum(axis=1)
        gains[echo, band] = 10.0 ** (-GATE_ATTENUATION_DB / 20.0)
    if (gains < 1.0).any():
        gated = np.fft.irfft(done * gains, FRAME_SAMPLES, axis=1).ravel()
        out[:] = np.clip(np.round(gated), -32768, 32767).astype(np.int16)
    return energies


def estimate_delay(mic: np.ndarray, mic_end: int, reference: EchoReference) -> int | None:
    """The lag (samples) at which the reference best explains mic (which ends at absolute index mic_end), by
    the phase transform (GCC-PHAT), or None when no lag stands out (the robot was quiet, or a child drowned it)."""
    lag_min, lag_max = LAG_MIN_MS * RATE_HZ // 1000, LAG_MAX_MS * RATE_HZ // 1000
    mic_start = mic_end - len(mic)
    ref = reference.read(mic_start - lag_max, len(mic) + lag_max - lag_min).astype(np.float64)
    frames = ref[: len(ref) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    loud = np.abs(frames).max(axis=1) > 32768 * 10 ** (LOUD_DBFS / 20)
    if loud.sum() * FRAME_SAMPLES < len(mic) or np.mean(loud[int(np.argmax(loud)) :]) < 0.6:
        # mostly silence since the robot began to speak (a pause), or less speech than the window: a peak there means
        # little. The silence before a story's start does not count: judged over the whole 3 s searched, it kept
        # the first story after start-up from being measured for 2.7 s while its echo, 164 ms early, was outside
        # the filter (a child's word said then was lost, in the leaky sound room)
        return None
    size = 1 << int(np.ceil(np.log2(len(mic) + len(ref))))
    spectrum = np.conj(np.fft.rfft(mic.astype(np.float64), size)) * np.fft.rfft(ref, size)
    spectrum /= np.abs(spectrum) + 1e-9
    correlation = np.abs(np.fft.irfft(spectrum, size)[: lag_max - lag_min + 1])
    # correlation[k] = sum mic[n] ref[n + k]: mic[n] is ref at (mic_start + n) - (lag_max - k)
    best = int(np.argmax(correlation))
    typical = float(np.median(correlation)) + 1e-12
    if correlation[best] < PEAK_RATIO * typical:
        return None
    if best < EDGE_SAMPLES or best > len(correlation) - 1 - EDGE_SAMPLES:
        return None  # a peak at the window's edge is its truncation, not an echo (see EDGE_SAMPLES)
    return lag_max - best


def measure_core_fraction(seconds: float = 1.0) -> float:
    """The canceller's CPU time per second of audio on this machine (a share of one core): an EchoCanceller run on
    seconds of noise and its echo, as the capture callback runs it (the delay estimate included)."""
    rng = np.random.default_rng(0)
    count = int(seconds * RATE_HZ)
    played = (rng.normal(0, 3000, count + RATE_HZ)).astype(np.int16)
    reference = EchoReference(ring_s=seconds + 2.0)
    canceller = EchoCanceller(reference)
    start_s, block = 10.0, 3 * 480  # three 30 ms frames per callback, as the microphone delivers them
    reference.write(played, start_s)
    heard = (played[:count].astype(np.float32) * 0.5).astype(np.int16)
    for i in range(0, count - block + 1, block):
        canceller.process(heard[i : i + block], start_s + i / RATE_HZ)
    canceller.close()
    return canceller.cpu_s / max(canceller.cancelled_s, 1e-9)
