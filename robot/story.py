"""Telling one story: engine tokens -> sentences -> speech -> speaker, each stage running ahead of the next.

The opening sentence is synthesized and played while the engine is still reading the prompt, so the child hears
the story begin at once. Generation may run up to story.queue_sentences ahead of speech (a bounded queue: a slow
speaker holds the engine back instead of buffering without end).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from audio.devices import DeviceError
from audio.playback import PlaybackError, Sink
from audio.speech import Audio
from audio.tts import Tts, TtsError
from engines import protocol as p
from engines.client import EngineError
from robot.config import Config
from robot.prompt import StoryPrompt
from robot.sentences import SentenceSplitter

log = logging.getLogger(__name__)

CLOSING_SENTENCE = "And that is the end of the story."
STOP_STRINGS = ("<", "\n\n\n", "http")  # a base model drifting into web pages starts with these


@dataclass
class StoryTimings:
    """Monotonic seconds; None for what did not happen."""

    requested_at: float
    first_token_at: float | None = None
    first_audio_at: float | None = None
    generation_done_at: float | None = None
    speech_done_at: float | None = None
    tokens: int = 0
    prompt_tokens: int = 0
    tokens_per_s: float = 0.0

    def as_dict(self) -> dict:
        rel = lambda t: None if t is None else round(t - self.requested_at, 4)  # noqa: E731
        return {
            "requested_at": self.requested_at,
            "first_token_s": rel(self.first_token_at),
            "first_audio_s": rel(self.first_audio_at),
            "generation_done_s": rel(self.generation_done_at),
            "speech_done_s": rel(self.speech_done_at),
            "first_audio_at": self.first_audio_at,
            "generation_done_at": self.generation_done_at,
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "tokens_per_s": round(self.tokens_per_s, 2),
        }


@dataclass
class StoryResult:
    prompt: StoryPrompt
    sentences: list[str] = field(default_factory=list)  # as spoken
    outcome: str = "finished"  # finished | stopped | engine failed: ... | speaker failed: ...
    engine_reason: str = ""  # the engine's stop reason, when it finished
    timings: StoryTimings | None = None

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


class StoryTeller:
    def __init__(self, config: Config, tts: Tts, on_sentence: Callable[[int, str], None]) -> None:
        self._config = config
        self._tts = tts
        self._on_sentence = on_sentence

    async def tell(self, prompt: StoryPrompt, engine, sink: Awaitable[Sink], requested_at: float) -> StoryResult:
        """Tell the story to the sink (still opening, perhaps). Cancelling the task that runs this stops it at once."""
        result = StoryResult(prompt=prompt, timings=StoryTimings(requested_at=requested_at))
        sentences: asyncio.Queue[str | None] = asyncio.Queue(self._config.story.queue_sentences)
        speech: asyncio.Queue[tuple[str, Audio] | None] = asyncio.Queue(2)
        stages = [
            asyncio.create_task(self._generate(prompt, engine, sentences, result), name="story-generate"),
            asyncio.create_task(self._synthesize(sentences, speech), name="story-tts"),
            asyncio.create_task(self._speak(speech, sink, result), name="story-speak"),
        ]
        try:
            await stages[2]
        except (PlaybackError, DeviceError) as e:
            result.outcome = f"speaker failed: {e}"
        finally:
            for task in stages:
                task.cancel()
            await asyncio.gather(*stages, return_exceptions=True)
        return result

    async def _generate(self, prompt: StoryPrompt, engine, out: asyncio.Queue, result: StoryResult) -> None:
        cfg = self._config
        timings = result.timings
        splitter = SentenceSplitter(cfg.story.min_sentence_chars, cfg.story.max_sentence_chars)
        await out.put(prompt.opening)
        request = {
            "prompt": prompt.engine_prompt,
            "max_tokens": cfg.engine.max_tokens,
            "temperature": cfg.engine.temperature,
            "top_p": cfg.engine.top_p,
            "top_k": cfg.engine.top_k,
            "repeat_penalty": cfg.engine.repeat_penalty,
            "seed": cfg.engine.seed,
            "stop": STOP_STRINGS,
        }
        try:
            async for frame in engine.generate(
                request,
                first_token_timeout_s=cfg.engine.first_token_timeout_s,
                token_timeout_s=cfg.engine.token_timeout_s,
            ):
                if isinstance(frame, p.Token):
                    if timings.first_token_at is None:
                        timings.first_token_at = time.monotonic()
                    for sentence in splitter.feed(frame.text):
                        await out.put(sentence)
                else:
                    result.engine_reason = frame.reason.value
                    timings.tokens, timings.prompt_tokens = frame.tokens, frame.prompt_tokens
                    timings.tokens_per_s = frame.tokens_per_s
        except EngineError as e:
            log.error("story generation failed: %s", e)
            result.outcome = f"engine failed: {e}"
        timings.generation_done_at = time.monotonic()
        for sentence in self._ending(splitter, result.engine_reason):
            await out.put(sentence)
        await out.put(None)

    @staticmethod
    def _ending(splitter: SentenceSplitter, engine_reason: str) -> list[str]:
        rest = splitter.flush()
        if engine_reason == p.StopReason.EOS.value:
            return rest
        # cut off (token limit, stop string, failure): drop an unfinished last sentence and close the story
        if rest and rest[-1][-1] not in ".!?\"”'…":
            rest = rest[:-1]
        return [*rest, CLOSING_SENTENCE]

    async def _synthesize(self, sentences: asyncio.Queue, out: asyncio.Queue) -> None:
        while (sentence := await sentences.get()) is not None:
            try:
                started = time.monotonic()
                audio = await self._tts.synthesize(sentence)
                log.debug("synthesized %.1f s of speech in %.3f s", audio.duration_s, time.monotonic() - started)
            except TtsError as e:
                log.warning("sentence skipped: %s", e)
                continue
            await out.put((sentence, audio))
        await out.put(None)

    async def _speak(self, speech: asyncio.Queue, opening_sink: Awaitable[Sink], result: StoryResult) -> None:
        sink = await opening_sink
        log.debug("speaker open")
        while (item := await speech.get()) is not None:
            sentence, audio = item
            self._on_sentence(len(result.sentences), sentence)
            result.sentences.append(sentence)
            is_complete = await sink.play(audio)
            if result.timings.first_audio_at is None:
                result.timings.first_audio_at = sink.first_audio_monotonic
            if not is_complete:
                result.outcome = "stopped"
                return
        result.timings.speech_done_at = time.monotonic()
