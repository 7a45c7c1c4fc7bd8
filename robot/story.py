"""Telling one story: engine tokens -> sentences -> safety -> speech -> speaker, each stage ahead of the next.

The opening sentence is synthesized and played while the engine is still starting or reading the prompt, so the
child hears the story begin at once. Generation may run up to story.queue_sentences ahead of speech (a bounded
queue: a slow speaker holds the engine back instead of buffering without end).

A story longer than the model's context is generated in windows: when the context fills, the next prompt is the
opening (which names the characters) plus as much of the latest text as fits, and the model goes on from there.
The same mechanism resumes a saved story after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from audio.devices import DeviceError
from audio.playback import PlaybackError, Sink
from audio.speech import Audio
from audio.tts import Tts, TtsError
from engines import protocol as p
from engines.client import EngineError
from robot.canned import canned_story
from robot.config import Config
from robot.prompt import PHRASES, StoryPrompt, chat_prefix
from robot.resume import StoryRecord, StoryStore
from robot.sentences import SentenceSplitter

log = logging.getLogger(__name__)

UNFINISHED = ("", False)  # sent down the pipeline instead of None when the story broke off and is to be continued

CLOSING_SENTENCE = PHRASES["en"].closing
RESUME_BRIDGE = PHRASES["en"].resume_bridge
CHARS_PER_TOKEN = 3  # a cautious average for English prose, used to fit prompts into the context
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
    outcome: str = "finished"  # finished | stopped | engine failed: ... | speaker failed: ... | canned: ...
    engine_reason: str = ""  # the engine's stop reason, when it finished
    timings: StoryTimings | None = None
    blocked: int = 0  # sentences the safety filter kept from the child

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass(frozen=True)
class StoryPlan:
    prompt: StoryPrompt
    seed: int
    max_tokens: int  # generated tokens for this telling, over all windows
    told: tuple[str, ...] = ()  # sentences heard before (a resumed story), the opening first
    bridge: str | None = None  # said before a resumed story's reminder; None: the language's usual one


def window_prompt(opening: str, story_so_far: str, budget_chars: int) -> str:
    """The opening plus as much of the latest text as fits in budget_chars, starting at a word."""
    room = budget_chars - len(opening) - 1
    tail = story_so_far[-room:] if room > 0 else ""
    if len(tail) < len(story_so_far):
        tail = tail[tail.find(" ") + 1 :] if " " in tail else ""
    return f"{opening} {tail}".strip() if tail else opening


class StoryTeller:
    def __init__(
        self,
        config: Config,
        tts: Tts,
        on_sentence: Callable[[int, str], None],
        safety: Callable[[str], str | None] = lambda sentence: sentence,
        store: StoryStore | None = None,
    ) -> None:
        self._config = config
        self._tts = tts
        self._on_sentence = on_sentence
        self._safety = safety
        self._store = store

    async def tell(self, plan: StoryPlan, engine: Awaitable, sink: Awaitable[Sink], requested_at: float) -> StoryResult:
        """Tell the story to the sink (both may still be starting). Cancelling the task stops it at once."""
        result = StoryResult(prompt=plan.prompt, timings=StoryTimings(requested_at=requested_at))
        record = StoryRecord(
            request=plan.prompt.request,
            subject=plan.prompt.subject,
            opening=plan.prompt.opening,
            seed=plan.seed,
            sentences=list(plan.told),
        )
        sentences: asyncio.Queue[tuple[str, bool] | None] = asyncio.Queue(self._config.story.queue_sentences)
        speech: asyncio.Queue[tuple[str, bool, Audio] | None] = asyncio.Queue(2)
        stages = [
            asyncio.create_task(self._generate(plan, engine, sentences, result), name="story-generate"),
            asyncio.create_task(self._synthesize(sentences, speech, result), name="story-tts"),
            asyncio.create_task(self._speak(speech, sink, result, record), name="story-speak"),
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

    # --- generation ---------------------------------------------------------------------------------

    async def _generate(
        self, plan: StoryPlan, engine_ready: Awaitable, out: asyncio.Queue, result: StoryResult
    ) -> None:
        """Puts (sentence, is_story) pairs; is_story is False for what is said about the story (a bridge)."""
        if plan.told:
            bridge = PHRASES[plan.prompt.language].resume_bridge if plan.bridge is None else plan.bridge
            if bridge:
                await out.put((bridge, False))
            await out.put((plan.told[-1], False))  # the last sentence heard, as a reminder
        else:
            await out.put((plan.prompt.opening, True))
        if plan.max_tokens == 0:  # nothing new to tell (the end of a finished story, repeated)
            result.engine_reason = p.StopReason.EOS.value
            await out.put(None)
            return
        try:
            engine = await engine_ready
        except Exception as e:  # EngineUnavailable, or anything that kept the engine from starting
            log.info("no engine (%s); telling a canned story", e)  # the engine host logged the failure
            result.outcome = f"canned: {e}"
            await self._put_canned(plan, out)
            result.timings.generation_done_at = time.monotonic()
            await out.put(None)
            return
        splitter = SentenceSplitter(self._config.story.min_sentence_chars, self._config.story.max_sentence_chars)
        story_so_far = " ".join(plan.told[1:])
        try:
            story_so_far = await self._generate_windows(plan, engine, splitter, story_so_far, out, result)
        except EngineError as e:
            log.error("story generation failed: %s", e)
            result.outcome = f"engine failed: {e}"
            result.timings.generation_done_at = time.monotonic()
            for sentence in splitter.flush():  # whole sentences already generated are still told
                if sentence[-1] in ".!?\"”'…":
                    await out.put((sentence, True))
            await out.put((PHRASES[plan.prompt.language].lost, False))
            await out.put(UNFINISHED)
            return
        result.timings.generation_done_at = time.monotonic()
        for sentence in self._ending(splitter, result.engine_reason, PHRASES[plan.prompt.language].closing):
            await out.put((sentence, True))
        await out.put(None)

    async def _generate_windows(self, plan, engine, splitter, story_so_far: str, out, result: StoryResult) -> str:
        cfg = self._config.engine
        timings = result.timings
        context = engine.ready.context_tokens if engine.ready else cfg.context_tokens
        budget_chars = context // 2 * CHARS_PER_TOKEN  # half the context for the prompt, half for the story
        prefix = self._chat_prefix(engine, plan)
        told = 0
        while told < plan.max_tokens:
            request = {
                "prompt": prefix + window_prompt(plan.prompt.engine_prompt, story_so_far, budget_chars - len(prefix)),
                "special": bool(prefix),
                "max_tokens": plan.max_tokens - told,
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
                "top_k": cfg.top_k,
                "repeat_penalty": cfg.repeat_penalty,
                "seed": (plan.seed + told) % (2**31),
                "stop": STOP_STRINGS,
            }
            done = None
            frames = engine.generate(
                request, first_token_timeout_s=cfg.first_token_timeout_s, token_timeout_s=cfg.token_timeout_s
            )
            async for frame in _read_ahead(frames):
                if isinstance(frame, p.Token):
                    if timings.first_token_at is None:
                        timings.first_token_at = time.monotonic()
                    story_so_far += frame.text
                    for sentence in splitter.feed(frame.text):
                        await out.put((sentence, True))
                else:
                    done = frame
            told += done.tokens
            result.engine_reason = done.reason.value
            timings.tokens += done.tokens
            timings.prompt_tokens = done.prompt_tokens
            timings.tokens_per_s = done.tokens_per_s
            context_filled = done.reason is p.StopReason.LENGTH and done.tokens < request["max_tokens"]
            if not context_filled or done.tokens == 0:
                break
            log.info("context full after %d tokens; going on in a new window", told)
        return story_so_far

    @staticmethod
    def _chat_prefix(engine, plan: StoryPlan) -> str:
        template = getattr(engine, "chat_template", "")
        if not template:
            return ""
        try:
            prefix = chat_prefix(template, plan.prompt)
        except ValueError as e:
            log.warning("%s; using plain completion", e)
            return ""
        log.debug("chat prompt: %r", prefix)
        return prefix

    async def _put_canned(self, plan: StoryPlan, out: asyncio.Queue) -> None:
        story = canned_story(plan.prompt.language, plan.prompt.request, plan.seed)
        if plan.told or story[0] != plan.prompt.opening:
            await out.put((PHRASES[plan.prompt.language].apology, False))
        for sentence in story:
            if sentence != plan.prompt.opening or plan.told:
                await out.put((sentence, True))

    @staticmethod
    def _ending(splitter: SentenceSplitter, engine_reason: str, closing: str) -> list[str]:
        rest = splitter.flush()
        if engine_reason == p.StopReason.EOS.value:
            return rest
        # cut off (token limit, stop string, failure): drop an unfinished last sentence and close the story
        if rest and rest[-1][-1] not in ".!?\"”'…":
            rest = rest[:-1]
        return [*rest, closing]

    # --- speech -------------------------------------------------------------------------------------

    async def _synthesize(self, sentences: asyncio.Queue, out: asyncio.Queue, result: StoryResult) -> None:
        while (item := await sentences.get()) is not None:
            if item is UNFINISHED:
                await out.put(UNFINISHED)
                return
            sentence, is_story = item
            safe = self._safety(sentence)
            if safe is None:
                result.blocked += 1
                continue
            audio = await self._synthesize_one(safe)
            if audio is None:
                continue
            await out.put((safe, is_story, audio))
        await out.put(None)

    async def _synthesize_one(self, sentence: str) -> Audio | None:
        """The sentence's speech; one retry (a synthesizer that failed once is restarted) before it is skipped."""
        for attempt in (1, 2):
            try:
                started = time.monotonic()
                audio = await self._tts.synthesize(sentence)
                log.debug("synthesized %.1f s of speech in %.3f s", audio.duration_s, time.monotonic() - started)
                return audio
            except TtsError as e:
                log.warning("%s: %s", "synthesis failed, trying again" if attempt == 1 else "sentence skipped", e)
        return None

    async def _speak(self, speech: asyncio.Queue, opening_sink: Awaitable[Sink], result: StoryResult, record) -> None:
        sink = await opening_sink
        log.debug("speaker open")
        while (item := await speech.get()) is not None:
            if item is UNFINISHED:  # the story broke off: kept as it is, to be continued
                result.timings.speech_done_at = time.monotonic()
                return
            sentence, is_story, audio = item
            self._on_sentence(len(result.sentences), sentence)
            result.sentences.append(sentence)
            is_complete = await sink.play(audio)
            if result.timings.first_audio_at is None:
                result.timings.first_audio_at = sink.first_audio_monotonic
            if not is_complete:
                result.outcome = "stopped"
                return
            if is_story:
                record.sentences.append(sentence)
                self._save(record)
        result.timings.speech_done_at = time.monotonic()
        record.is_finished = True
        self._save(record)

    def _save(self, record: StoryRecord) -> None:
        if self._store is not None:
            self._store.save(record)


async def _read_ahead(frames: AsyncIterator) -> AsyncIterator:
    """The engine's frames, read as they arrive even while the sentence queue is full: the token deadlines then
    measure the engine, not how far ahead of speech the story is, so a stalled engine is found at once. What is
    read ahead is bounded by max_tokens. Leaving early cancels the generation (EngineClient.generate's finally)."""
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump() -> None:
        try:
            async for frame in frames:
                queue.put_nowait(frame)
        except Exception as e:  # EngineError and its kin reach the reader in order
            queue.put_nowait(e)
        queue.put_nowait(end)

    reader = asyncio.create_task(pump(), name="engine-frames")
    try:
        while (item := await queue.get()) is not end:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
