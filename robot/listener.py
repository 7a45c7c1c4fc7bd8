"""The listening task: microphone frames -> voice-activity detector -> recognizer -> transcript events.

Half-duplex: while the gate is closed (the robot is thinking or speaking) the robot never takes what it hears
for a request. It listens only for the voice commands then (the recognizer's command grammar), in utterances of
at most MAX_COMMAND_S: the robot's own voice leaking into the microphone makes long utterances, which are dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from audio.asr import AsrError, Recognizer
from audio.capture import Microphone, MicStalled
from audio.devices import DeviceError
from audio.vad import EnergyVad, VadEvent, VadSettings
from robot.events import (
    CommandHeard,
    Event,
    ListenerFailed,
    ListenerReady,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
)

log = logging.getLogger(__name__)

REOPEN_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
MAX_COMMAND_S = 3.0  # a spoken command is short; longer speech while the robot talks is not one


class Listener:
    def __init__(
        self,
        post: Callable[[Event], None],
        make_microphone: Callable[[], Microphone],
        make_recognizer: Callable[[], Recognizer],
        vad_settings: VadSettings,
        is_open: Callable[[], bool],
        is_command_time: Callable[[], bool] = lambda: False,
        is_recognizer_wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        """is_open: requests may be heard; is_command_time: (gate closed) voice commands may be heard;
        is_recognizer_wanted: False while its memory is needed elsewhere (the model is then released, and loaded
        again when it is wanted)."""
        self._post = post
        self._make_microphone = make_microphone
        self._make_recognizer = make_recognizer
        self._vad = EnergyVad(vad_settings)
        self._end_silence_s = vad_settings.end_silence_ms / 1000.0
        self._is_open = is_open
        self._is_command_time = is_command_time
        self._is_recognizer_wanted = is_recognizer_wanted
        self._recognizer: Recognizer | None = None
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
            self._recognizer = await loop.run_in_executor(self._asr_thread, self._make_recognizer)
        except AsrError as e:
            self._post(ListenerFailed(str(e)))
            return
        failures = 0
        while True:
            mic = self._make_microphone()
            try:
                mic.open()
                log.info("listening on %s", mic.device_description)
                self._post(ListenerReady(mic.device_description))
                failures = 0
                await self._listen(mic)
            except (DeviceError, MicStalled) as e:
                if failures == 0:
                    self._post(ListenerFailed(str(e)))
                delay = REOPEN_BACKOFF_S[min(failures, len(REOPEN_BACKOFF_S) - 1)]
                failures += 1
                log.info("microphone: %s; trying again in %g s", e, delay)
                await asyncio.sleep(delay)
            finally:
                mic.close()

    async def _swap_recognizer(self) -> Recognizer | None:
        """Release the recognizer's model when memory is wanted for the story, load it again after."""
        is_wanted = self._is_recognizer_wanted()
        if not is_wanted and self._recognizer is not None:
            self._recognizer = None
            log.info("speech recognizer released while the story is generated (memory plan)")
        elif is_wanted and self._recognizer is None:
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            self._recognizer = await loop.run_in_executor(self._asr_thread, self._make_recognizer)
            log.info("speech recognizer loaded again in %.2f s", time.monotonic() - started)
        return self._recognizer

    async def _listen(self, mic: Microphone) -> None:
        loop = asyncio.get_running_loop()
        utterance: _Utterance | None = None
        while True:
            frame = await mic.read()
            if utterance is None:
                try:
                    recognizer = await self._swap_recognizer()
                except AsrError as e:
                    self._post(ListenerFailed(str(e)))
                    recognizer = None
                if recognizer is None:
                    self._vad.reset()
                    continue
            if self._is_end_requested:
                self._is_end_requested = False
                if utterance is not None and not utterance.is_command:
                    utterance = None
                    self._vad.reset()
                    text = await loop.run_in_executor(self._asr_thread, recognizer.finish)
                    self._post(TranscriptFinal(text=text, end_of_speech_at=time.monotonic()))
                    continue
            is_open = self._is_open()
            is_command = not is_open and self._is_command_time()
            is_muted = time.monotonic() < self._muted_until
            if (
                is_muted
                or not (is_open or is_command)
                or (utterance is not None and utterance.is_command != is_command)
            ):
                if utterance is not None:  # the gate changed mid-utterance: what was heard counts for nothing
                    await loop.run_in_executor(self._asr_thread, recognizer.finish)
                    utterance = None
                self._vad.reset()
                continue
            result = self._vad.process(frame)
            if result.event is VadEvent.STARTED:
                utterance = _Utterance(is_command, time.monotonic())
                await loop.run_in_executor(self._asr_thread, recognizer.use_commands, is_command)
                if not is_command:
                    self._post(SpeechStarted(at=time.monotonic()))
            if utterance is not None and result.frames:
                pcm = b"".join(f.tobytes() for f in result.frames)
                partial = await loop.run_in_executor(self._asr_thread, recognizer.accept, pcm)
                if partial and not utterance.is_command:
                    self._post(TranscriptPartial(partial))
            if utterance is not None and result.event is VadEvent.ENDED:
                end_at = time.monotonic() - (0.0 if result.is_cut_off else self._end_silence_s)
                text = await loop.run_in_executor(self._asr_thread, recognizer.finish)
                if not utterance.is_command:
                    self._post(TranscriptFinal(text=text, end_of_speech_at=end_at))
                elif end_at - utterance.started_at <= MAX_COMMAND_S and text:
                    self._post(CommandHeard(text=text, at=end_at))
                else:
                    log.debug(
                        "%.1f s of speech while speaking (%r): not a command", end_at - utterance.started_at, text
                    )
                utterance = None


@dataclass
class _Utterance:
    is_command: bool  # decoded with the command grammar
    started_at: float
