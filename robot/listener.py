"""The listening task: microphone frames -> voice-activity detector -> recognizer -> transcript events.

Half-duplex: while the gate is closed (the robot is thinking or speaking) the robot never takes what it hears
for a request. It listens only for the voice commands then (the recognizer's command grammar), in utterances of
at most MAX_COMMAND_S: the robot's own voice leaking into the microphone makes long utterances, which are dropped.

A request ends after end_silence_ms of silence, unless the recognizer had heard a whole request by the time the
voice stopped: a sentence of its grammar ("tell me a story about a dragon who loves tea") as the partial transcript
of the first silent frame. That one ends after complete_silence_ms, so the robot answers sooner; an unfinished one
("a story about a") waits the full silence for the rest. What the decoder makes of the silence itself counts for
nothing: a grammar decoder fed silence revises its last words both ways, forcing "a story about a" onto a whole
request ("a story about a fairy") and "go on" onto an unfinished one ("go on the"), within 60-120 ms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from audio.asr import AsrError, Recognizer
from audio.capture import RATE_HZ, Microphone, MicStalled
from audio.devices import DeviceError
from audio.speech import frame_levels_dbfs
from audio.vad import EnergyVad, VadEvent, VadSettings
from audio.wake import WakeWord
from robot.events import (
    CommandHeard,
    Event,
    ListenerFailed,
    ListenerReady,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    VoiceOverStory,
    WakeWordHeard,
)
from robot.plumbing.backoff import Backoff

if TYPE_CHECKING:
    from audio.stop_word import StopWord

log = logging.getLogger(__name__)

REOPEN_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
MAX_COMMAND_S = 3.0  # a spoken command is short; longer speech while the robot talks is not one
# A command ends after this much silence, not vad.end_silence_ms: "stop" must stop the story within a second of
# the word, and a command is a word or two, with no pause inside to wait out.
COMMAND_END_SILENCE_S = 0.3
# While the robot speaks a frame is speech only from this level up: what the echo canceller leaves of the robot's
# own voice at full volume comes in bursts of -50 to -35 dBFS (measured in the leaky sound room; the story itself is
# at -15 dBFS there), and one such burst next to a child's "stop" made an utterance too long to be a command.
COMMAND_MIN_LEVEL_DBFS = -35.0
# Hold-off against the robot's own words: what is said in the first seconds of a story is not taken for a command.
# The echo canceller learns the room again at each story's start (each story opens a new output stream) for about
# 1.2-1.5 s (measured in the leaky sound room), and its robot's voice was heard as "what did you say" (repeat).
COMMAND_HOLD_OFF_S = 2.0
# Once the robot is quiet again its last words are still on their way into the room: the output device's buffer
# (0.4 s, as the earcon's mute counts it), then the echo's own delay. In CI's leaky sound room, under load, that delay
# was 600 ms, and the last word of a story ("king") was heard as the request of a press that came 0.26 s after the
# story ended. The microphone is ignored for this long, plus the measured delay where an echo canceller measures one.
VOICE_TAIL_S = 0.4
# The stop-word classifier is asked once this long after an utterance's loudest frame (a word's vowel), on what was
# heard so far, without waiting for the utterance's end: in the leaky sound room what the canceller left of the
# robot's voice right after a child's "stop" (bursts over COMMAND_MIN_LEVEL_DBFS) kept one utterance going 1.47 s,
# its loudest at 0.36 s, and the stop came 0.95-1.06 s after the word where it usually comes in 0.45 s. An
# utterance that ends this soon after its peak is a whole word's: 0.84-0.96 s long, the peak at 0.33-0.36 s (10 ms
# frames; the listener follows the peak in its own frames, audio.block_ms).
STOP_WORD_AFTER_PEAK_S = 0.5


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
        echo_delay_s: Callable[[], float] = lambda: 0.0,
        wake_word: WakeWord | None = None,
        stop_word: StopWord | None = None,
    ) -> None:
        """is_open: requests may be heard; is_command_time: (gate closed) voice commands may be heard;
        is_recognizer_wanted: False while its memory is needed elsewhere (the model is then released, and loaded
        again when it is wanted); echo_delay_s: the robot's voice's delay into the microphone as measured now (0:
        not measured), added to VOICE_TAIL_S when the gate opens again. wake_word: listened for in every frame
        while requests or commands may be heard (WakeWordHeard); what was being said with it counts for nothing.
        stop_word: asked of a command-mode utterance the recognizer makes no command word of; "stop" if it says so."""
        self._post = post
        self._make_microphone = make_microphone
        self._make_recognizer = make_recognizer
        self._vad = EnergyVad(vad_settings)
        self._vad_settings = vad_settings
        self._end_silence_s = vad_settings.end_silence_ms / 1000.0
        self._complete_silence_ms = min(vad_settings.complete_silence_ms, vad_settings.end_silence_ms)
        self._is_open = is_open
        self._is_command_time = is_command_time
        self._is_recognizer_wanted = is_recognizer_wanted
        self._recognizer: Recognizer | None = None
        self._utterance: _Utterance | None = None
        self._is_end_requested = False
        self._muted_until = 0.0
        self._echo_delay_s = echo_delay_s
        self._wake_word = wake_word
        self._stop_word = stop_word
        self._was_closed = False  # the gate, at the last block
        self._is_voice_over_story = False  # as last posted (VoiceOverStory)
        self._frames_after = 0  # the frames of the block being heard after the one _on_frame has
        self._command_since: float | None = None  # when the robot began thinking or speaking (commands only)
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
        backoff = Backoff(REOPEN_BACKOFF_S)
        while True:
            mic = self._make_microphone()
            mic.hold_quiet_below(self._vad_settings.min_level_dbfs)  # frames take_quiet() would take
            try:
                mic.open()
                # listening once audio flows (a stream can take a second or two to start): a request spoken
                # before then would begin with no quiet for the detector to learn the room's level from
                first_block = await mic.read_block()
                log.info("listening on %s", mic.device_description)
                self._post(ListenerReady(mic.device_description))
                backoff.succeeded()
                await self._listen(mic, first_block)
            except (DeviceError, MicStalled) as e:
                if backoff.failures == 0:
                    self._post(ListenerFailed(str(e)))
                delay = backoff.failed()
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

    async def _listen(self, mic: Microphone, first_block) -> None:
        self._utterance = None
        block = first_block
        while True:
            self._note_gate()
            if self._wake_word is not None and await self._is_wake_word_in(block):
                self._note_voice_over_story()
                block = await mic.read_block()
                continue
            levels_dbfs = frame_levels_dbfs(block)
            if not await self._is_quiet_block_taken(block, levels_dbfs):
                for k, (frame, level_dbfs) in enumerate(zip(block, levels_dbfs, strict=True)):
                    self._frames_after = len(block) - 1 - k
                    await self._on_frame(frame, level_dbfs)
            self._note_voice_over_story()
            # within an utterance every block counts at once (its end is a stretch of quiet)
            mic.is_urgent = self._utterance is not None or self._vad.is_in_speech
            # a block of frames per wake-up, their levels in one pass: listening to silence costs little
            block = await mic.read_block()

    def _note_voice_over_story(self) -> None:
        """VoiceOverStory posted when a command-mode utterance past the hold-off begins, and again when it ends (or
        has gone on for MAX_COMMAND_S: longer is no command, whatever it is)."""
        utterance = self._utterance
        is_speaking = (
            utterance is not None
            and utterance.is_command
            and not utterance.is_held_off
            and not _is_past_command_length(utterance)
        )
        if is_speaking != self._is_voice_over_story:
            self._is_voice_over_story = is_speaking
            self._post(VoiceOverStory(is_speaking))

    def _note_gate(self) -> None:
        """When the robot began thinking or speaking, for the hold-off; and the robot's voice's tail once the gate
        opens again, ignored (VOICE_TAIL_S). Every block: quiet ones too."""
        is_open = self._is_open()
        if is_open and self._was_closed:
            self.mute_for(VOICE_TAIL_S + max(0.0, self._echo_delay_s()))
        self._was_closed = not is_open
        if is_open or not self._is_command_time():
            self._command_since = None
        elif self._command_since is None:
            self._command_since = time.monotonic()

    async def _is_wake_word_in(self, block) -> bool:
        """The wake word ends in this block (when requests or commands may be heard): posted, and the utterance
        that carried it, if any, is dropped (the word is no request, and a request said with it would be cut)."""
        wake_word = self._wake_word
        assert wake_word is not None
        is_open = self._is_open()
        if time.monotonic() < self._muted_until or not (is_open or self._is_command_time()):
            return False
        if not wake_word.hear(block.reshape(-1), is_speaking=not is_open):
            return False
        log.info("wake word %r heard", wake_word.phrase)
        if self._utterance is not None and self._recognizer is not None:
            await asyncio.get_running_loop().run_in_executor(self._asr_thread, self._recognizer.finish)
        self._utterance = None
        self._vad.reset()
        self._post(WakeWordHeard(wake_word.phrase, time.monotonic()))
        return True

    async def _is_quiet_block_taken(self, block, levels_dbfs: list[float]) -> bool:
        """The common case of a quiet room between requests, a block at a time; what _on_frame would do."""
        if self._utterance is not None or self._is_end_requested:
            return False
        try:
            recognizer = await self._swap_recognizer()
        except AsrError as e:
            self._post(ListenerFailed(str(e)))
            recognizer = self._recognizer = None
        if (
            recognizer is None
            or time.monotonic() < self._muted_until
            or not (self._is_open() or self._is_command_time())
        ):
            self._vad.reset()
            return True
        return self._vad.take_quiet(block, levels_dbfs)

    async def _on_frame(self, frame, level_dbfs: float) -> None:
        loop = asyncio.get_running_loop()
        if self._utterance is None:
            try:
                await self._swap_recognizer()
            except AsrError as e:
                self._post(ListenerFailed(str(e)))
                self._recognizer = None
            if self._recognizer is None:
                self._vad.reset()
                return
        recognizer = self._recognizer
        assert recognizer is not None  # an utterance in progress keeps its recognizer
        utterance = self._utterance
        if self._is_end_requested:
            self._is_end_requested = False
            if utterance is not None and not utterance.is_command:
                self._utterance = None
                self._vad.reset()
                text = await loop.run_in_executor(self._asr_thread, recognizer.finish)
                self._post(TranscriptFinal(text=text, end_of_speech_at=time.monotonic()))
                return
        is_open = self._is_open()
        is_command = not is_open and self._is_command_time()
        is_muted = time.monotonic() < self._muted_until
        if is_muted or not (is_open or is_command) or (utterance is not None and utterance.is_command != is_command):
            if utterance is not None:  # the gate changed mid-utterance: what was heard counts for nothing
                await loop.run_in_executor(self._asr_thread, recognizer.finish)
                self._utterance = None
            self._vad.reset()
            return
        if is_command and level_dbfs < COMMAND_MIN_LEVEL_DBFS:
            level_dbfs = -120.0  # silence to the detector: at most what is left of the robot's own voice
        result = self._vad.process(frame, level_dbfs)
        if result.event is VadEvent.STARTED:
            utterance = self._utterance = _Utterance(is_command, time.monotonic())
            since = self._command_since
            utterance.is_held_off = is_command and since is not None and time.monotonic() - since < COMMAND_HOLD_OFF_S
            await loop.run_in_executor(self._asr_thread, recognizer.use_commands, is_command)
            if not is_command:
                self._post(SpeechStarted(at=time.monotonic()))
            if self._wake_word is not None:  # the utterance heard afresh, from its pre-roll (audio.wake.AFRESH_S)
                frame_s = self._vad_settings.frame_ms / 1000.0
                self._wake_word.hear_afresh((len(result.frames) + self._frames_after) * frame_s, is_command)
        if utterance is not None and result.frames and not _is_past_command_length(utterance):
            pcm = b"".join(f.tobytes() for f in result.frames)
            is_asked = utterance.is_command and self._stop_word is not None
            if is_asked:
                utterance.pcm.append(pcm)  # at most MAX_COMMAND_S of it
                utterance.follow_peak(result.frames)
            partial, is_complete = await loop.run_in_executor(self._asr_thread, _accept, recognizer, pcm)
            if partial is not None:
                utterance.is_complete = is_complete
                utterance.partial = partial
            if is_asked and await self._is_stop_word_early(utterance):
                return
            if self._vad.silence_ms <= self._vad_settings.frame_ms:  # speech, or the first frame of silence
                utterance.was_complete_at_silence = utterance.is_complete
                utterance.partial_at_silence = utterance.partial
            if partial and not utterance.is_command:
                self._post(TranscriptPartial(partial))
        if utterance is not None and result.event is VadEvent.NONE and self._is_request_complete(utterance):
            silence_ms = self._vad.silence_ms
            self._vad.reset()
            self._utterance = None
            text = await loop.run_in_executor(self._asr_thread, recognizer.finish)
            log.info("a whole request: final after %d ms of silence", silence_ms)
            self._post(TranscriptFinal(text=text, end_of_speech_at=time.monotonic() - silence_ms / 1000.0))
            return
        is_command_over = (
            utterance is not None and utterance.is_command and self._is_command_over(utterance, level_dbfs)
        )
        if utterance is not None and (result.event is VadEvent.ENDED or is_command_over):
            if is_command_over:
                self._vad.reset()
            silence_s = COMMAND_END_SILENCE_S if is_command_over else self._end_silence_s
            end_at = time.monotonic() - (0.0 if result.is_cut_off else silence_s)
            text = await loop.run_in_executor(self._asr_thread, recognizer.finish)
            if utterance.is_command and not utterance.is_held_off and not _has_words(text):
                text = await loop.run_in_executor(self._asr_thread, self._stop_word_in, utterance, text)
            if not utterance.is_command:
                if not result.is_cut_off:
                    log.info(
                        "request final after the full %d ms of silence (when the voice stopped: %r, %s)",
                        silence_s * 1000,
                        utterance.partial_at_silence,
                        "a whole request" if utterance.was_complete_at_silence else "not a whole request",
                    )
                self._post(TranscriptFinal(text=text, end_of_speech_at=end_at))
            elif utterance.is_held_off:
                log.debug("%r at the story's start (hold-off against the robot's own words): not a command", text)
            elif end_at - utterance.started_at <= MAX_COMMAND_S and text:
                self._post(CommandHeard(text=text, at=end_at))
            else:
                log.debug("%.1f s of speech while speaking (%r): not a command", end_at - utterance.started_at, text)
            self._utterance = None

    async def _is_stop_word_early(self, utterance: _Utterance) -> bool:
        """Once STOP_WORD_AFTER_PEAK_S has passed since a command-mode utterance's loudest frame: the stop-word
        classifier asked of what was heard so far (unless the grammar is hearing a command word, or the utterance is
        held off); if it hears "stop", the utterance ends here and the command is posted."""
        if utterance.is_early_asked or utterance.is_held_off or _has_words(utterance.partial):
            return False
        if utterance.since_peak_s < STOP_WORD_AFTER_PEAK_S:
            return False
        utterance.is_early_asked = True
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(self._asr_thread, self._stop_word_in, utterance, utterance.partial) != "stop":
            return False
        log.debug("the stop word before the utterance's end: %.2f s after its loudest frame", utterance.since_peak_s)
        assert self._recognizer is not None
        await loop.run_in_executor(self._asr_thread, self._recognizer.finish)
        self._vad.reset()
        self._utterance = None
        self._post(CommandHeard(text="stop", at=time.monotonic()))
        return True

    def _stop_word_in(self, utterance: _Utterance, text: str) -> str:
        """ "stop" when the stop-word classifier hears it in an utterance the command grammar made nothing of
        (text), else text (on the recognizer's thread: a few milliseconds of NumPy)."""
        if self._stop_word is None or not utterance.pcm:
            return text
        probability = self._stop_word.probability(b"".join(utterance.pcm))
        shape = utterance.shape()
        if probability < self._stop_word.cutoff:
            log.debug("%r: not the stop word either (%.2f; %s)", text, probability, shape)
            return text
        log.info("stop word heard (%.2f; the recognizer heard %r; %s)", probability, text, shape)
        return "stop"

    def _is_command_over(self, utterance: _Utterance, level_dbfs: float) -> bool:
        """COMMAND_END_SILENCE_S of silence after a command-mode utterance's speech."""
        if self._vad.is_voiced(level_dbfs):
            utterance.silent_s = 0.0
            return False
        utterance.silent_s += self._vad_settings.frame_ms / 1000.0
        return utterance.silent_s >= COMMAND_END_SILENCE_S

    def _is_request_complete(self, utterance: _Utterance) -> bool:
        """The request may end now: complete_silence_ms of silence after the voice stopped on a whole request."""
        if utterance.is_command or not utterance.was_complete_at_silence or self._complete_silence_ms <= 0:
            return False
        return self._vad.silence_ms >= self._complete_silence_ms


def _accept(recognizer: Recognizer, pcm: bytes) -> tuple[str | None, bool]:
    """Feed audio (on the recognizer's thread): the partial transcript when it changed, and whether it is a whole
    request."""
    partial = recognizer.accept(pcm)
    return partial, partial is not None and recognizer.is_complete(partial)


def _has_words(text: str) -> bool:
    """The command grammar heard a word of its phrases (anything else it reports as [unk])."""
    return any(word != "[unk]" for word in text.split())


def _is_past_command_length(utterance: _Utterance) -> bool:
    """A command-mode utterance longer than MAX_COMMAND_S is no command: the rest of it is not decoded (the
    decoder holds the GIL, and decoding the robot's own voice made the speaker's callback late)."""
    return utterance.is_command and time.monotonic() - utterance.started_at > MAX_COMMAND_S


@dataclass
class _Utterance:
    is_command: bool  # decoded with the command grammar
    started_at: float
    silent_s: float = 0.0  # the silence since its last voiced frame (command mode)
    is_held_off: bool = False  # began within COMMAND_HOLD_OFF_S of the story's start
    was_complete_at_silence: bool = False  # ... when the voice stopped (the first silent frame)
    partial_at_silence: str = ""  # the partial transcript then
    is_complete: bool = False  # the partial transcript is a whole request
    pcm: list[bytes] = field(default_factory=list)  # a command's audio, for the stop-word classifier
    partial: str = ""  # the recognizer's latest partial transcript
    peak_dbfs: float = -120.0  # the loudest frame of pcm so far ...
    since_peak_s: float = 0.0  # ... and the audio since it
    is_early_asked: bool = False  # the classifier was asked before the utterance's end (STOP_WORD_AFTER_PEAK_S)

    def follow_peak(self, frames: Sequence[np.ndarray]) -> None:
        """Keep the loudest of these frames (int16 arrays, appended to pcm) and the audio after it."""
        for level, frame in zip(frame_levels_dbfs(np.stack(frames)), frames, strict=True):
            if level > self.peak_dbfs:
                self.peak_dbfs, self.since_peak_s = level, 0.0
            else:
                self.since_peak_s += len(frame) / RATE_HZ

    def shape(self) -> str:
        """Its length and where its loudest frame lies, for the log (a slow stop: what kept it going)."""
        length_s = sum(len(pcm) for pcm in self.pcm) / 2 / RATE_HZ
        return f"{length_s:.2f} s, loudest {self.peak_dbfs:.0f} dBFS at {length_s - self.since_peak_s:.2f} s"
