"""Telling one story: engine tokens -> sentences -> safety -> speech -> speaker, each stage ahead of the next.

The opening sentence is synthesized and played while the engine is still starting or reading the prompt, so the
child hears the story begin at once; its speech plays as it is made (audio.tts.speech_chunks), the first piece
before the whole sentence is synthesized. Generation may run up to story.queue_sentences ahead of speech (a bounded
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
from typing import TYPE_CHECKING

from audio.devices import DeviceError
from audio.playback import PlaybackError, Sink, play_pieces
from audio.speech import Audio
from audio.tts import Tts, TtsError, first_clause, keep_speech, speech_chunks
from engines import protocol as p
from engines.client import EngineError
from robot.plumbing.config import Config
from robot.story.canned import canned_story
from robot.story.prompt import PHRASES, StoryPrompt, build_prompt, chat_prefix
from robot.story.resume import StoryRecord, StoryStore
from robot.story.sentences import SentenceSplitter

if TYPE_CHECKING:
    from robot.engine_port import Engine

log = logging.getLogger(__name__)

CLOSING_SENTENCE = PHRASES["en"].closing
RESUME_BRIDGE = PHRASES["en"].resume_bridge
CHARS_PER_TOKEN = 3  # a cautious average for English prose, used to fit prompts into the context
MIN_PROMPT_CHARS = 12  # a prompt cut to fit the context keeps at least this much (a few words to go on from)
STOP_STRINGS = ("<", "\n\n\n", "http")  # a base model drifting into web pages starts with these


@dataclass
class StoryTimings:
    """Monotonic seconds; None for what did not happen."""

    requested_at: float
    first_token_at: float | None = None
    first_audio_at: float | None = None
    started_at: float | None = None  # the story was asked for (the request's transcript was final)
    first_speech_at: float | None = None  # the first piece of the first sentence's speech was synthesized
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
            "started_at": self.started_at,
            "first_speech_at": self.first_speech_at,
            "generation_done_at": self.generation_done_at,
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "tokens_per_s": round(self.tokens_per_s, 2),
        }


@dataclass
class StoryResult:
    prompt: StoryPrompt
    timings: StoryTimings
    sentences: list[str] = field(default_factory=list)  # as spoken
    outcome: str = "finished"  # finished | stopped | engine failed: ... | speaker failed: ... | canned: ...
    engine_reason: str = ""  # the engine's stop reason, when it finished
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


# --- what flows down the pipeline: sentences, then their speech, then one end --------------------------


@dataclass(frozen=True, slots=True)
class Sentence:
    """A sentence to be said, from generation to synthesis."""

    text: str
    is_story: bool  # False for what is said about the story (a bridge, a reminder, an apology): not saved


@dataclass(frozen=True, slots=True)
class Speech:
    """A sentence as it passed the safety filter, and its synthesized audio, from synthesis to the speaker."""

    sentence: Sentence
    audio: Audio  # all of it, or its first piece when rest is given
    rest: asyncio.Queue[Audio | None] | None = None  # the pieces after the first as they are made, then None


@dataclass(frozen=True, slots=True)
class End:
    """The last item down the pipeline."""

    is_broken_off: bool  # the story broke off (the engine failed): kept as it is, to be continued, not finished


FINISHED = End(is_broken_off=False)
BROKEN_OFF = End(is_broken_off=True)


def tail_at_word(text: str, chars: int) -> str:
    """The last `chars` characters of text or fewer, starting at a word."""
    tail = text[-chars:]
    return tail[tail.find(" ") + 1 :] if len(tail) < len(text) and " " in tail else tail


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
        timings = StoryTimings(requested_at=requested_at, started_at=time.monotonic())
        result = StoryResult(prompt=plan.prompt, timings=timings)
        record = StoryRecord(
            request=plan.prompt.request,
            subject=plan.prompt.subject,
            opening=plan.prompt.opening,
            seed=plan.seed,
            sentences=list(plan.told),
        )
        sentences: asyncio.Queue[Sentence | End] = asyncio.Queue(self._config.story.queue_sentences)
        speech: asyncio.Queue[Speech | End] = asyncio.Queue(2)
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
        self, plan: StoryPlan, engine_ready: Awaitable, out: asyncio.Queue[Sentence | End], result: StoryResult
    ) -> None:
        """Puts the story's sentences, then its End."""
        if plan.told:
            bridge = PHRASES[plan.prompt.language].resume_bridge if plan.bridge is None else plan.bridge
            if bridge:
                await out.put(Sentence(bridge, is_story=False))
            await out.put(Sentence(plan.told[-1], is_story=False))  # the last sentence heard, as a reminder
        else:
            await out.put(Sentence(plan.prompt.opening, is_story=True))
        if plan.max_tokens == 0:  # nothing new to tell (the end of a finished story, repeated)
            result.engine_reason = p.StopReason.EOS.value
            await out.put(FINISHED)
            return
        try:
            engine = await _engine_within(engine_ready, self._config.engine.first_token_timeout_s)
        except Exception as e:  # EngineUnavailable, a start that hangs, or anything that kept the engine from starting
            log.info("no engine (%s); telling a canned story", e)  # the engine host logged the failure
            result.outcome = f"canned: {e}"
            await self._put_canned(plan, out)
            result.timings.generation_done_at = time.monotonic()
            await out.put(FINISHED)
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
                    await out.put(Sentence(sentence, is_story=True))
            await out.put(Sentence(PHRASES[plan.prompt.language].lost, is_story=False))
            await out.put(BROKEN_OFF)
            return
        result.timings.generation_done_at = time.monotonic()
        for sentence in self._ending(splitter, result.engine_reason, PHRASES[plan.prompt.language].closing):
            await out.put(Sentence(sentence, is_story=True))
        await out.put(FINISHED)

    async def _generate_windows(self, plan, engine, splitter, story_so_far: str, out, result: StoryResult) -> str:
        cfg = self._config.engine
        timings = result.timings
        context = engine.ready.context_tokens if engine.ready else cfg.context_tokens
        budget_chars = context // 2 * CHARS_PER_TOKEN  # half the context for the prompt, half for the story
        # off the event loop: the first rendering imports and compiles jinja2 (0.25 s), just as the opening is to play
        prefix = await asyncio.to_thread(self._chat_prefix, engine, plan)
        told = 0
        cut_chars = 0  # > 0 once the engine found a window's prompt too long: its tail of this many characters
        while told < plan.max_tokens:
            text = window_prompt(plan.prompt.engine_prompt, story_so_far, budget_chars - len(prefix))
            request = p.Request(
                prompt=prefix + (tail_at_word(text, cut_chars) if cut_chars else text),
                special=bool(prefix),
                max_tokens=plan.max_tokens - told,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                repeat_penalty=cfg.repeat_penalty,
                seed=(plan.seed + told) % (2**31),
                stop=STOP_STRINGS,
            )
            done = None
            frames = engine.generate(
                request, first_token_timeout_s=cfg.first_token_timeout_s, token_timeout_s=cfg.token_timeout_s
            )
            heard = len(story_so_far)
            try:
                async for frame in _read_ahead(frames):
                    if isinstance(frame, p.Token):
                        if timings.first_token_at is None:
                            timings.first_token_at = time.monotonic()
                        story_so_far += frame.text
                        for sentence in splitter.feed(frame.text):
                            await out.put(Sentence(sentence, is_story=True))
                    else:
                        done = frame
            except EngineError as e:
                # The characters-per-token guess is only a guess: a tokenizer that spends a token on every byte
                # fills a small context with the opening alone. Such a prompt is refused before any token, so the
                # window is asked again with the tail of its text, half as long each time.
                too_long = e.code == p.ErrorCode.BAD_REQUEST and len(story_so_far) == heard
                cut_chars = min(cut_chars or len(text), len(text)) // 2
                if not too_long or cut_chars < MIN_PROMPT_CHARS:
                    raise
                log.warning(
                    "the engine refused the prompt (%s); asking with its last %d characters", e.message, cut_chars
                )
                continue
            assert done is not None  # EngineClient.generate ends with a Done frame, or raises
            told += done.tokens
            result.engine_reason = done.reason.value
            timings.tokens += done.tokens
            timings.prompt_tokens = done.prompt_tokens
            timings.tokens_per_s = done.tokens_per_s
            context_filled = done.reason is p.StopReason.LENGTH and done.tokens < request.max_tokens
            if not context_filled or done.tokens == 0:
                break
            log.info("context full after %d tokens; going on in a new window", told)
        return story_so_far

    @staticmethod
    def _chat_prefix(engine: Engine, plan: StoryPlan) -> str:
        template = engine.chat_template
        if not template:
            return ""
        try:
            prefix = chat_prefix(template, plan.prompt)
        except ValueError as e:
            log.warning("%s; using plain completion", e)
            return ""
        log.debug("chat prompt: %r", prefix)
        return prefix

    async def _put_canned(self, plan: StoryPlan, out: asyncio.Queue[Sentence | End]) -> None:
        story = canned_story(plan.prompt.language, plan.prompt.request, plan.seed)
        if plan.told or story[0] != plan.prompt.opening:
            await out.put(Sentence(PHRASES[plan.prompt.language].apology, is_story=False))
        for sentence in story:
            if sentence != plan.prompt.opening or plan.told:
                await out.put(Sentence(sentence, is_story=True))

    @staticmethod
    def _ending(splitter: SentenceSplitter, engine_reason: str, closing: str) -> list[str]:
        rest = splitter.flush()
        # an unfinished last sentence is dropped: a small model may end its story in mid-sentence ("... and then")
        if rest and rest[-1][-1] not in ".!?\"”'…":
            rest = rest[:-1]
        if engine_reason == p.StopReason.EOS.value:
            return rest
        # cut off (token limit, stop string, failure): close the story
        return [*rest, closing]

    # --- speech -------------------------------------------------------------------------------------

    async def _synthesize(
        self, sentences: asyncio.Queue[Sentence | End], out: asyncio.Queue[Speech | End], result: StoryResult
    ) -> None:
        while not isinstance(item := await sentences.get(), End):
            safe = self._safety(item.text)
            if safe is None:
                result.blocked += 1
                continue
            sentence = Sentence(safe, item.is_story)
            is_first = result.timings.first_speech_at is None
            if is_first and hasattr(self._tts, "stream") and await self._stream_one(sentence, out, result):
                continue  # the child is waiting for the first sentence: it plays as it is made
            audio = await self._synthesize_one(safe)
            if audio is None:
                continue
            if result.timings.first_speech_at is None:
                result.timings.first_speech_at = time.monotonic()
            await out.put(Speech(sentence, audio))
        await out.put(item)

    async def _stream_one(self, sentence: Sentence, out: asyncio.Queue[Speech | End], result: StoryResult) -> bool:
        """The sentence's speech to the speaker piece by piece, from its first piece on; False (nothing sent) when
        the synthesizer failed before its first piece (the caller then tries the whole sentence)."""
        started = time.monotonic()
        pieces = speech_chunks(self._tts, sentence.text)
        try:
            first = await anext(pieces)
        except (TtsError, StopAsyncIteration) as e:
            log.warning("synthesis failed, trying again: %s", e or "no speech")
            await pieces.aclose()
            return False
        result.timings.first_speech_at = time.monotonic()
        log.debug("first %.1f s of speech synthesized in %.3f s", first.duration_s, time.monotonic() - started)
        rest: asyncio.Queue[Audio | None] = asyncio.Queue()
        await out.put(Speech(sentence, first, rest))
        try:
            async for piece in pieces:
                rest.put_nowait(piece)
        except TtsError as e:  # what was made is played; the rest of the sentence is lost
            log.warning("synthesis failed mid-sentence; the sentence is cut short: %s", e)
        finally:
            rest.put_nowait(None)
            await pieces.aclose()
        return True

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

    async def _speak(
        self, speech: asyncio.Queue[Speech | End], opening_sink: Awaitable[Sink], result: StoryResult, record
    ) -> None:
        sink = await opening_sink
        log.debug("speaker open")
        while not isinstance(item := await speech.get(), End):
            sentence = item.sentence.text
            self._on_sentence(len(result.sentences), sentence)
            result.sentences.append(sentence)
            if item.rest is None:
                is_complete = await sink.play(item.audio)
            else:
                is_complete = await play_pieces(sink, _pieces(item.audio, item.rest))
            if result.timings.first_audio_at is None:
                result.timings.first_audio_at = sink.first_audio_monotonic
            if not is_complete:
                result.outcome = "stopped"
                return
            if item.sentence.is_story:
                record.sentences.append(sentence)
                self._save(record)
        result.timings.speech_done_at = time.monotonic()
        if item.is_broken_off:  # kept as it is, to be continued
            return
        record.is_finished = True
        self._save(record)

    def _save(self, record: StoryRecord) -> None:
        if self._store is not None:
            self._store.save(record)


async def keep_opening_speech(tts: Tts, language: str) -> None:
    """The clause every opening of the language begins with ("Once upon a time,"), synthesized ahead (at start-up)
    and kept: the first story's first words then play as soon as it is asked for."""
    head, tail = first_clause(build_prompt("", language=language).opening)
    if tail:  # an opening said in one piece has no clause of its own to keep
        await keep_speech(tts, head)


async def _pieces(first: Audio, rest: asyncio.Queue[Audio | None]) -> AsyncIterator[Audio]:
    audio: Audio | None = first
    while audio is not None:
        yield audio
        audio = await rest.get()


async def _engine_within(engine_ready: Awaitable, timeout_s: float):
    """The engine, or TimeoutError after timeout_s: a start that hangs (an engine frozen while it loads waits out
    the whole load timeout, holding the host's lock) must not hold up the story the child is waiting for. The
    start itself goes on, for the next story."""
    try:
        return await asyncio.wait_for(asyncio.shield(engine_ready), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"the engine is not ready within {timeout_s:g} s; it is still starting") from None


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
