"""The listening task: microphone frames -> voice-activity detector -> recognizer -> transcript events.

Half-duplex: while the gate is closed (the robot is thinking or speaking) frames are read and thrown away, so
the robot never takes its own voice for a request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable

from audio.asr import AsrError, Recognizer
from audio.capture import Microphone, MicStalled
from audio.devices import DeviceError
from audio.vad import EnergyVad, VadEvent, VadSettings
from robot.events import Event, ListenerFailed, SpeechStarted, TranscriptFinal, TranscriptPartial

log = logging.getLogger(__name__)

REOPEN_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class Listener:
    def __init__(
        self,
        post: Callable[[Event], None],
        make_microphone: Callable[[], Microphone],
        make_recognizer: Callable[[], Recognizer],
        vad_settings: VadSettings,
        is_open: Callable[[], bool],
    ) -> None:
        self._post = post
        self._make_microphone = make_microphone
        self._make_recognizer = make_recognizer
        self._vad = EnergyVad(vad_settings)
        self._end_silence_s = vad_settings.end_silence_ms / 1000.0
        self._is_open = is_open
        self._is_end_requested = False
        self._muted_until = 0.0
        # the recognizer is fed in order on one thread, off the event loop
        self._asr_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")

    def end_utterance(self) -> None:
        """The button was released: the request ends now, not after end_silence_ms of silence."""
        self._is_end_requested = True

    def mute_for(self, seconds: float) -> None:
        """Ignore the microphone for a while (the robot's own earcon)."""
        self._muted_until = max(self._muted_until, time.monotonic() + seconds)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            recognizer = await loop.run_in_executor(self._asr_thread, self._make_recognizer)
        except AsrError as e:
            self._post(ListenerFailed(str(e)))
            return
        failures = 0
        while True:
            mic = self._make_microphone()
            try:
                mic.open()
                log.info("listening on %s", mic.device_description)
                failures = 0
                await self._listen(mic, recognizer)
            except (DeviceError, MicStalled) as e:
                if failures == 0:
                    self._post(ListenerFailed(str(e)))
                delay = REOPEN_BACKOFF_S[min(failures, len(REOPEN_BACKOFF_S) - 1)]
                failures += 1
                log.info("microphone: %s; trying again in %g s", e, delay)
                await asyncio.sleep(delay)
            finally:
                mic.close()

    async def _listen(self, mic: Microphone, recognizer: Recognizer) -> None:
        loop = asyncio.get_running_loop()
        is_in_utterance = False
        while True:
            frame = await mic.read()
            if self._is_end_requested:
                self._is_end_requested = False
                if is_in_utterance:
                    is_in_utterance = False
                    self._vad.reset()
                    text = await loop.run_in_executor(self._asr_thread, recognizer.finish)
                    self._post(TranscriptFinal(text=text, end_of_speech_at=time.monotonic()))
                    continue
            if not self._is_open() or time.monotonic() < self._muted_until:
                if is_in_utterance:
                    await loop.run_in_executor(self._asr_thread, recognizer.finish)
                self._vad.reset()
                is_in_utterance = False
                continue
            result = self._vad.process(frame)
            if result.event is VadEvent.STARTED:
                is_in_utterance = True
                self._post(SpeechStarted(at=time.monotonic()))
            if is_in_utterance and result.frames:
                pcm = b"".join(f.tobytes() for f in result.frames)
                partial = await loop.run_in_executor(self._asr_thread, recognizer.accept, pcm)
                if partial:
                    self._post(TranscriptPartial(partial))
            if result.event is VadEvent.ENDED:
                is_in_utterance = False
                end_at = time.monotonic() - (0.0 if result.is_cut_off else self._end_silence_s)
                text = await loop.run_in_executor(self._asr_thread, recognizer.finish)
                self._post(TranscriptFinal(text=text, end_of_speech_at=end_at))
