"""The robot: one coroutine owns its state; the listener, the story and the button only post events to it."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from audio.playback import Sink
from audio.tts import Tts
from robot.controls.commands import Command, CommandPhrases
from robot.engine_host import EngineUnavailable
from robot.engine_port import Host
from robot.events import (
    ButtonLongPressed,
    ButtonPressed,
    ButtonReleased,
    CommandHeard,
    EngineGaveUp,
    EngineStatus,
    Event,
    HeldWithoutSpeech,
    ListenerFailed,
    ListenerReady,
    MemoryPressure,
    SentenceStarted,
    ShutdownRequested,
    Source,
    SpeakerOpened,
    SpeechStarted,
    State,
    StopRequested,
    StoryEnded,
    StoryRequested,
    TranscriptFinal,
    TranscriptPartial,
    VoiceOverStory,
    VolumeSet,
    WakeWordHeard,
)
from robot.plumbing.config import Config
from robot.plumbing.exits import Exit
from robot.plumbing.settings import RuntimeSettings
from robot.story.prompt import StoryPrompt, build_prompt, is_continue_request
from robot.story.resume import StoryStore
from robot.story.session import StoryPlan, StoryResult, StoryTeller

log = logging.getLogger(__name__)

EVENT_QUEUE_SIZE = 64
CONTINUE = "continue the story"  # what a long press asks for, in any language
HOLD_GRACE_S = 1.0  # after a long press, how long speech may take to be noticed before it means "continue"
# In run mode a bare "go on" (robot/controls/requests.py is_bare_continue) continues the story only this soon after
# the robot last told one (ended, stopped or lost); later, and from the radio, it takes "continue" or "the story"
BARE_CONTINUE_WITHIN_S = 300.0
MEMORY_LEVEL_UNLOAD_ASR = 1  # robot.memory.guard.Level.UNLOAD_ASR: the recognizer is released while a story is told
MEMORY_LEVEL_CANCEL = 3  # robot.memory.guard.Level.CANCEL: a story being told is stopped


@dataclass(frozen=True)
class StoryGate:
    """What the parents' limits (robot/web/parents.py) allow the next story."""

    refusal: str = ""  # said instead of a story (bedtime is over, the day's story time is used up); "": a story
    is_bedtime: bool = False  # quiet hours: a short, calm story


class Mode(enum.Enum):
    TELL = "tell"  # one story from text, then exit
    LISTEN = "listen"  # one voice request, one story, then exit
    DAEMON = "run"  # forever


class Robot:
    def __init__(
        self,
        config: Config,
        mode: Mode,
        *,
        engine_host: Host,
        tts: Tts,
        open_sink: Callable[[], Sink],
        story_out: TextIO,
        diag_out: TextIO,
        safety: Callable[[str], str | None] = lambda sentence: sentence,
        store: StoryStore | None = None,
        commands: CommandPhrases | None = None,
        settings: RuntimeSettings | None = None,
        save_settings: Callable[[RuntimeSettings], object] = lambda settings: None,
        on_state_change: Sequence[Callable[[State], None]] = (),
        on_status: Sequence[Callable[[], None]] = (),
        on_listen_requested: Callable[[], None] = lambda: None,
        on_release: Callable[[], None] = lambda: None,
        is_asr_released_while_generating: bool = False,
        microphone_problem: str = "",
        on_story_start: Sequence[Callable[[StoryPlan, Source, str], None]] = (),
        on_sentence: Sequence[Callable[[int, str], None]] = (),
        on_story_end: Sequence[Callable[[StoryResult], None]] = (),
        story_gate: Callable[[], StoryGate] = StoryGate,
        has_microphone: bool = True,
    ) -> None:
        """The hooks for the controls: on_state_change (an LED), on_status (systemd's STATUS), on_listen_requested
        (an earcon), on_release (the end of a push-to-talk request). is_asr_released_while_generating: the memory
        plan's choice on a small board. microphone_problem: why there is no microphone at all ("" when there is).
        on_story_start (plan, source, request), on_sentence (index, sentence, as it starts playing) and on_story_end
        (result) are for watchers (the parents' page); story_gate says what the parents' limits allow.
        has_microphone False: a button-only robot (asr.backend = "none", or the plan), where a press tells a story."""
        self.config = config
        self.mode = mode
        self.state = State.IDLE
        self.results: list[StoryResult] = []
        self.exit_code = 0
        self.end_of_speech_at: float | None = None  # of the request that started the current story
        self._engine_host = engine_host
        self._open_sink = open_sink
        self._safety = safety
        self._store = store
        self._teller = StoryTeller(config, tts, self._sentence_started, safety, store)
        self._notice_teller = StoryTeller(config, tts, self._sentence_started, safety, None)  # keeps the saved story
        self.on_story_start = list(on_story_start)
        self.on_sentence = list(on_sentence)
        self.on_story_end = list(on_story_end)
        self._story_gate = story_gate
        self._story_out = story_out
        self._diag = diag_out
        self._events: asyncio.Queue[Event] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self._dropped_events = 0
        self._story_task: asyncio.Task | None = None
        self._story_number = 0  # of the latest telling
        self._sink: Sink | None = None
        # hooks for the controls: an LED that shows the state, an earcon, the end of a push-to-talk request
        self.on_state_change: list[Callable[[State], None]] = list(on_state_change)
        self.on_listen_requested = on_listen_requested
        self.on_release = on_release
        self._is_speech_since_press = False
        self._is_pressed_request = False  # the button opened this request (push-to-talk: a bare subject counts)
        self._is_long_press_pending = False
        self._press_number = 0
        self._told_until: float | None = None  # when the robot last stopped telling a story (monotonic s)
        self.commands = commands
        self.settings = settings or RuntimeSettings(config.audio.volume)
        self._save_settings = save_settings
        self._recently_said: collections.deque[str] = collections.deque(maxlen=2)  # for telling echo from a child
        # what is degraded: "microphone", "engine", "memory" -> why
        self.problems: dict[str, str] = {"microphone": microphone_problem} if microphone_problem else {}
        self.on_status: list[Callable[[], None]] = list(on_status)  # called when the state or a problem changes
        self._helpers: set[asyncio.Task] = set()  # what the state owner started and does not wait for
        self._handling_since: float | None = None  # when the state owner took the event it is handling
        # the microphone opened, or failed once, or there is none (for READY)
        self.has_microphone = has_microphone and not microphone_problem
        self.is_mic_settled = mode is Mode.TELL or not self.has_microphone
        self.is_asr_released_while_generating = is_asr_released_while_generating
        self.memory_level = 0  # robot.memory.guard.Level of the memory guard

    # --- what other tasks may call ------------------------------------------------------------------

    def post(self, event: Event) -> None:
        """Queue an event for the state owner; when the queue is full the event is dropped and counted."""
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            self._dropped_events += 1
            if self._dropped_events == 1:
                log.warning("event queue full; dropping %s", type(event).__name__)

    def _start_helper(self, step) -> None:
        task = asyncio.create_task(step)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    @property
    def is_listening_allowed(self) -> bool:
        """Half-duplex gate: the microphone counts only while the robot is not thinking or speaking."""
        return self.state in (State.IDLE, State.LISTENING)

    @property
    def is_command_time(self) -> bool:
        """While the robot thinks or speaks, the microphone is open for voice commands only."""
        return self.commands is not None and self.state in (State.THINKING, State.SPEAKING)

    # --- the state owner ----------------------------------------------------------------------------

    @property
    def is_recognizer_wanted(self) -> bool:
        """False while a story is generated and memory is short (the plan, or the guard at UNLOAD_ASR or more)."""
        if self.state not in (State.THINKING, State.SPEAKING):
            return True
        return not (self.is_asr_released_while_generating or self.memory_level >= MEMORY_LEVEL_UNLOAD_ASR)

    def is_making_progress(self, limit_s: float) -> bool:
        """False when the state owner has been stuck in one event for limit_s (the watchdog then stays quiet)."""
        since = self._handling_since
        return since is None or time.monotonic() - since < limit_s

    @property
    def status_text(self) -> str:
        """One line for systemd's STATUS: the state, and what is degraded and why."""
        text = self.state.value
        if self.problems:
            text += "; degraded: " + "; ".join(f"{what}: {why}" for what, why in sorted(self.problems.items()))
        return text

    def _set_problem(self, what: str, why: str) -> None:
        if why and self.problems.get(what) != why:
            self.problems[what] = why
        elif not why and what in self.problems:
            del self.problems[what]
        else:
            return
        for hook in self.on_status:
            hook()

    async def run(self) -> int:
        while self.state is not State.STOPPING:
            event = await self._events.get()
            self._handling_since = time.monotonic()
            try:
                await self._handle(event)
            except Exception:  # a bug in one handler must not take the robot down
                log.exception("handling %s failed; back to idle", type(event).__name__)
                await self._stop_story()
                self._set_state(State.IDLE)
            finally:
                self._handling_since = None
        await self._stop_story()
        return self.exit_code

    async def _handle(self, event: Event) -> None:
        match event:
            case ButtonPressed() if self.state in (State.THINKING, State.SPEAKING):
                await self._stop_story()  # a press while the robot talks stops the story
                self._set_state(State.IDLE)
            case ButtonPressed(source=source) if self.state is State.IDLE and not self.has_microphone:
                self._start_story(self._surprise_subject(), source, time.monotonic())  # nothing to listen with
            case ButtonPressed() if self.state is State.IDLE:
                self._listen_for_request()
            case WakeWordHeard(phrase=phrase) if self.state in (State.THINKING, State.SPEAKING):
                log.info("wake word %r while speaking: stopping the story", phrase)
                await self._stop_story()
                self._set_state(State.IDLE)
            case WakeWordHeard(phrase=phrase) if self.state in (State.IDLE, State.LISTENING) and self.has_microphone:
                log.info("wake word %r: listening for a request", phrase)
                self._listen_for_request()
            case SpeechStarted() if self.state in (State.IDLE, State.LISTENING):
                self._set_state(State.LISTENING)
                self._is_speech_since_press = True
            case ButtonReleased(source=source) if self.state is State.LISTENING:
                if self._is_long_press_pending and not self._is_speech_since_press:
                    self._set_state(State.IDLE)  # held without a word: "continue the story"
                    self._start_story(CONTINUE, source, time.monotonic())
                else:
                    self.on_release()  # push-to-talk: the request ends now
                self._is_long_press_pending = False
            case ButtonLongPressed(source=source) if self.state is State.LISTENING:
                # held while listening: push-to-talk if the child speaks (the voice detector needs a moment to
                # notice speech that began with the press), else "continue the story"
                self._is_long_press_pending = True
                if not self._is_speech_since_press:
                    press = self._press_number
                    asyncio.get_running_loop().call_later(HOLD_GRACE_S, self.post, HeldWithoutSpeech(source, press))
            case HeldWithoutSpeech(source=source, press=press) if (
                self.state is State.LISTENING and press == self._press_number and not self._is_speech_since_press
            ):
                self._is_long_press_pending = False
                self._set_state(State.IDLE)
                self._start_story(CONTINUE, source, time.monotonic())
            case ButtonLongPressed(source=source) if self.state is not State.STOPPING:
                await self._stop_story()
                self._set_state(State.IDLE)
                self._start_story(CONTINUE, source, time.monotonic())
            case TranscriptPartial(text=text) if self.state is State.LISTENING:
                log.debug("partial: %s", text)
            case CommandHeard(text=text) if self.state in (State.THINKING, State.SPEAKING):
                command = self.commands.match(text) if self.commands else None
                if command is None:
                    log.debug("heard %r while speaking: not a command", text)
                elif self.commands is not None and self.commands.is_echo(text, " ".join(self._recently_said)):
                    log.info("heard %r while speaking, but the robot just said it: its own voice", text)
                else:
                    await self._obey(command, text)
            case TranscriptFinal(text=text) if self.state in (State.IDLE, State.LISTENING):
                print(f"heard: {text!r}", file=self._diag, flush=True)
                log.info("transcript ready %.2f s after the end of speech", time.monotonic() - event.end_of_speech_at)
                pressed, self._is_pressed_request = self._is_pressed_request, False
                command = self.commands.match(text) if self.commands else None
                if self._is_unbidden(text, pressed):
                    self._set_state(State.IDLE)
                elif command is not None:
                    await self._obey(command, text)
                elif _has_words(text) and not self._is_ambient(text, pressed):
                    self.end_of_speech_at = event.end_of_speech_at
                    self._start_story(text, Source.VOICE, event.end_of_speech_at)
                else:
                    self._set_state(State.IDLE)  # nothing understood: keep waiting
            case StoryRequested(text=text, source=source, at=at) if self.state in (State.IDLE, State.LISTENING):
                self._start_story(text, source, at, event.seed, event.is_bedtime)
            case StopRequested() if self.state in (State.THINKING, State.SPEAKING):
                await self._stop_story()
                self._set_state(State.IDLE)
            case VoiceOverStory(is_speaking=is_speaking) if self.state is State.SPEAKING and self._sink is not None:
                log.debug("voice over the story: %s", "ducked" if is_speaking else "back to its volume")
                self._sink.duck(is_speaking)
            case VolumeSet(volume=volume, cap=cap):
                self.settings.set_volume(volume, cap)
                log.info("volume %.2f, capped at %.2f", self.settings.volume, self.settings.volume_cap)
                if self._sink is not None:
                    self._sink.set_volume(self.settings.volume)
                self._save_settings(self.settings)
            case SentenceStarted(story=story, index=index, text=text):
                self._sentence_heard(story, index, text)
            case SpeakerOpened(story=story, sink=sink) if story == self._story_number and self._story_task:
                self._sink = sink
            case StoryEnded(result=result, story=story) if story != self._story_number:
                self.results.append(result)  # a story that was stopped for the one being told now
                self._print_timings(result)
                _tell_watchers(self.on_story_end, result)
            case StoryEnded(result=result):
                self._finish_story(result)
            case EngineGaveUp(message=message):
                log.debug("the engine cannot start: %s", message)  # the engine host logged it
                self.exit_code = Exit.BAD_MODEL
            case ListenerReady():
                self.is_mic_settled = True
                self._set_problem("microphone", "")
            case EngineStatus(problem=problem, what=what):
                self._set_problem(what, problem)
            case MemoryPressure(level=level, description=description, context_tokens=context, engine_hold=hold):
                self.memory_level = level
                self._set_problem("memory", description if level else "")
                if context:
                    self._engine_host.use_context(context)
                if hold:
                    self._start_helper(self._engine_host.hold(hold))
                else:
                    self._engine_host.release()
                if level >= MEMORY_LEVEL_CANCEL and self.state in (State.THINKING, State.SPEAKING):
                    log.warning("memory pressure: stopping the story")
                    await self._stop_story()
                    self._set_state(State.IDLE)
            case ListenerFailed(message=message):
                self.is_mic_settled = True
                self._set_problem("microphone", message)
                print(f"storybot: microphone: {message}", file=self._diag, flush=True)
                if self.mode is Mode.LISTEN:
                    self.exit_code = Exit.UNAVAILABLE  # nothing to listen with
                    self._set_state(State.STOPPING)
            case ShutdownRequested(reason=reason):
                log.info("shutting down: %s", reason)
                self._set_state(State.STOPPING)
            case _:
                log.debug("%s ignored in state %s", type(event).__name__, self.state.value)

    async def _obey(self, command: Command, heard: str) -> None:
        print(f"command: {command.value} (heard {heard!r})", file=self._diag, flush=True)
        now = time.monotonic()
        match command:
            case Command.STOP:
                await self._stop_story()
                self._set_state(State.IDLE)
            case Command.ANOTHER:
                await self._stop_story()
                self._set_state(State.IDLE)
                self._start_story(self._surprise_subject(), Source.VOICE, now)
            case Command.REPEAT:
                await self._stop_story()
                self._set_state(State.IDLE)
                plan = self._repeat_plan()
                if plan is None:
                    print("storybot: no story to repeat", file=self._diag, flush=True)
                else:
                    self._start_plan(plan, Source.VOICE, now)
            case Command.LOUDER | Command.SOFTER:
                if self.settings.step_volume(1 if command is Command.LOUDER else -1):
                    log.info("volume %.1f", self.settings.volume)
                    if self._sink is not None:
                        self._sink.set_volume(self.settings.volume)
                    self._save_settings(self.settings)
                else:
                    log.info("volume already at %.1f", self.settings.volume)
                if self.state is State.LISTENING:
                    self._set_state(State.IDLE)

    def _listen_for_request(self) -> None:
        """A press, or the wake word: the chime, then the next utterance is the request (a bare subject counts)."""
        self._press_number += 1
        self._is_pressed_request = True
        self._set_state(State.LISTENING)
        self._is_speech_since_press = self._is_long_press_pending = False
        self.on_listen_requested()

    def _is_unbidden(self, text: str, pressed: bool) -> bool:
        """In run mode with a wake word (asr.wake_word), anything heard without it or the button: ignored, and said
        at debug level, commands too (a radio saying "louder")."""
        if self.mode is not Mode.DAEMON or pressed or not self.config.asr.wake_word or not text:
            return False
        log.debug("heard %r without the wake word or the button: ignored", text)
        return True

    def _is_ambient(self, text: str, pressed: bool) -> bool:
        """In run mode, talk heard without the button that does not ask for a story (robot/controls/requests.py),
        or a bare "go on" long after the last story: ignored, and said at debug level."""
        from robot.controls.requests import asks_for_a_story, is_bare_continue

        if self.mode is not Mode.DAEMON or pressed:
            return False
        language = self.config.story.language
        if not asks_for_a_story(text, language):
            log.debug("heard %r without the button: it asks for no story; ignored", text)
            return True
        if is_bare_continue(text, language) and not self._is_soon_after_a_story():
            log.debug("heard %r without the button and long after the last story: ignored", text)
            return True
        return False

    def _is_soon_after_a_story(self) -> bool:
        told_until = self._told_until
        return told_until is not None and time.monotonic() - told_until <= BARE_CONTINUE_WITHIN_S

    def _surprise_subject(self) -> str:
        told = self._store.load() if self._store else None
        subjects = [s for s in (self.commands.surprise if self.commands else ()) if not told or s != told.subject]
        return random.choice(subjects) if subjects else ""

    def _repeat_plan(self) -> StoryPlan | None:
        """The saved story again from its last sentence heard, without the "let's go on" of a resume."""
        saved = self._store.load() if self._store else None
        if saved is None or not saved.sentences:
            return None
        prompt = StoryPrompt(saved.request, saved.subject, saved.opening, language=self.config.story.language)
        told = tuple(saved.sentences)
        if saved.is_finished:  # the end again, and nothing new after it
            return StoryPlan(prompt, saved.seed, 0, told=told, bridge="")
        return StoryPlan(prompt, saved.seed, self.config.engine.max_tokens, told=told, bridge="")

    def _set_state(self, state: State) -> None:
        if state is not State.LISTENING:
            # a press (or the wake word) opens the next request only: a long press that continued the story without a
            # word left it set, and talk heard long after (the robot's own last words) was taken for a pressed request
            self._is_pressed_request = False
        if state is not self.state:
            if self.state in (State.THINKING, State.SPEAKING):
                self._told_until = time.monotonic()
            log.info("state %s -> %s", self.state.value, state.value)
            self.state = state
            for hook in self.on_state_change:
                hook(state)
            for status_hook in self.on_status:
                status_hook()

    # --- stories ------------------------------------------------------------------------------------

    def _start_story(
        self, text: str, source: Source, requested_at: float, seed: int = -1, is_bedtime: bool | None = None
    ) -> None:
        self._start_plan(self._plan(text, seed, is_bedtime), source, requested_at, text)

    def _start_plan(self, plan: StoryPlan, source: Source, requested_at: float, text: str = "") -> None:
        teller = self._teller
        refusal = self._story_gate().refusal
        if refusal:  # said with the story's own voice and speaker, and the saved story kept for tomorrow
            log.info("no story (%s): the parents' limits", refusal)
            notice = StoryPrompt("", "", refusal, language=self.config.story.language)
            plan, teller = StoryPlan(notice, plan.seed, 0, told=(refusal,), bridge=""), self._notice_teller
        log.info(
            "story requested (%s): %r -> %r%s",
            source.value,
            text,
            plan.prompt.opening,
            f", resuming at sentence {len(plan.told)}" if plan.told else "",
        )
        self._set_state(State.THINKING)
        self._story_number += 1
        _tell_watchers(self.on_story_start, plan, source, text)
        self._story_task = asyncio.create_task(self._tell(plan, requested_at, self._story_number, teller), name="story")

    def _plan(self, text: str, seed: int = -1, is_bedtime: bool | None = None) -> StoryPlan:
        cfg = self.config.engine
        language = self.config.story.language
        if text is CONTINUE or is_continue_request(text, language):
            saved = self._store.load() if self._store else None
            if saved is not None and not saved.is_finished and saved.sentences:
                prompt = StoryPrompt(saved.request, saved.subject, saved.opening, language=language)
                return StoryPlan(prompt, saved.seed, cfg.max_tokens, told=tuple(saved.sentences))
            log.info("no story to continue; telling a new one")
            text = ""
        if is_bedtime is None:
            is_bedtime = self.config.story.bedtime or self._story_gate().is_bedtime
        bedtime = is_bedtime
        prompt = build_prompt(text, is_bedtime=bedtime, language=language)
        if self._safety(prompt.opening) is None:
            log.warning("the request's subject is not for children; telling a story about something else")
            prompt = build_prompt("", is_bedtime=bedtime, language=language)
        if seed < 0:  # chosen here, so that it can be saved
            seed = cfg.seed if cfg.seed >= 0 else random.randrange(2**31)
        return StoryPlan(prompt, seed, max(8, round(cfg.max_tokens * prompt.length_factor)))

    async def _tell(self, plan: StoryPlan, requested_at: float, number: int, teller: StoryTeller) -> None:
        # the engine starts and the speaker opens (a blocking PortAudio call, in a thread) while the opening is
        # synthesized: neither is needed for the first sentence
        engine = asyncio.ensure_future(self._engine_host.get())
        engine.add_done_callback(self._engine_resolved)
        opening = asyncio.ensure_future(asyncio.to_thread(self._open_sink))
        # registered before the teller awaits the sink, so SpeakerOpened is posted before the first sentence's
        # SentenceStarted: the state owner can stop the speaker or change its volume once the story is audible
        opening.add_done_callback(lambda done: self._sink_opened(done, number))
        try:
            result = await teller.tell(plan, engine, opening, requested_at)
        finally:
            engine.cancel()
            sink = await asyncio.shield(opening) if not opening.cancelled() else None
            if sink is not None:
                await sink.close()
        self.post(StoryEnded(result, number))

    # the story's hooks (called in the story's task) only post events; the state owner acts on them

    def _engine_resolved(self, engine: asyncio.Future) -> None:
        if engine.cancelled():
            return
        error = engine.exception()
        if isinstance(error, EngineUnavailable) and error.is_permanent:
            self.post(EngineGaveUp(str(error)))

    def _sink_opened(self, opening: asyncio.Future, story: int) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self.post(SpeakerOpened(story, opening.result()))

    def _sentence_started(self, index: int, sentence: str) -> None:
        # the story being told is the latest one: an earlier story's task has ended before the next one starts
        self.post(SentenceStarted(self._story_number, index, sentence))

    def _sentence_heard(self, story: int, index: int, sentence: str) -> None:
        log.debug("sentence %d starts playing", index)
        self._recently_said.append(sentence)
        if index == 0 and story == self._story_number and self.state is State.THINKING:
            self._set_state(State.SPEAKING)
        print(sentence, file=self._story_out, flush=True)
        _tell_watchers(self.on_sentence, index, sentence)

    def _finish_story(self, result: StoryResult) -> None:
        self._story_task = None
        self._sink = None  # closed by the story's task
        self.results.append(result)
        self._print_timings(result)
        _tell_watchers(self.on_story_end, result)
        self._set_state(State.STOPPING if self.mode is not Mode.DAEMON else State.IDLE)

    async def _stop_story(self) -> None:
        task, self._story_task = self._story_task, None
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.stop()
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _print_timings(self, result: StoryResult) -> None:
        t = result.timings
        parts = [f"story {result.outcome}", f"{len(result.sentences)} sentences"]
        start = self.end_of_speech_at if self.end_of_speech_at is not None else t.requested_at
        label = "end of speech" if self.end_of_speech_at is not None else "request"
        if t.first_audio_at is not None:
            parts.append(f"{label} -> first audio {t.first_audio_at - start:.2f} s")
        if t.first_token_at is not None:
            parts.append(f"first token {t.first_token_at - t.requested_at:.2f} s")
        if t.tokens:
            parts.append(f"{t.tokens} tokens at {t.tokens_per_s:.1f} tok/s")
        if t.generation_done_at is not None:
            parts.append(f"generation {t.generation_done_at - t.requested_at:.2f} s")
        if t.speech_done_at is not None:
            parts.append(f"speech done {t.speech_done_at - t.requested_at:.2f} s")
        print("timings: " + "; ".join(parts), file=self._diag, flush=True)


def _tell_watchers(hooks: Sequence[Callable], *args) -> None:
    """A watcher's bug (the parents' page) is logged; it must not stop the story it watches."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            log.exception("a story watcher failed")


def _has_words(text: str) -> bool:
    """True when a transcript holds anything to tell a story about (not only spaces, control characters, NULs)."""
    return any(ch.isalnum() for ch in text)
