"""The supervisor: storybot's one composition root for `tell`, `listen` and `run`.

It builds every part fully at construction (speech, safety, voice commands, settings, the memory plan, the engine
host, the state owner, the listener, the button, the earcon), wiring each hook at the part's construction as a
posted event or a call into its owner; it owns every task (engine, READY, watchdog, memory guard, listener) and
child process (through the engine host and speech), and the systemd contract (READY, STATUS, WATCHDOG, STOPPING,
EXTEND_TIMEOUT). The state owner (robot/robot.py) alone writes its own fields."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robot.plumbing.config import EX_CONFIG, Config
from robot.plumbing.exits import Exit

if TYPE_CHECKING:  # the page's modules load aiohttp: only when [web] is on
    from robot.web.page import ParentsPage
    from robot.web.server import WebServer

log = logging.getLogger("storybot")

EX_UNAVAILABLE = Exit.UNAVAILABLE
STOP_STEP_S = 4.0  # each step of shutdown; systemd's TimeoutStopSec must allow a few of them
MIC_SETTLE_S = 30.0  # READY waits this long for the microphone to open or fail
LED_FOR_STATE = {
    "idle": "idle",
    "listening": "listening",
    "thinking": "thinking",
    "speaking": "speaking",
    "degraded": "error",
    "stopping": "idle",
}


class StartupError(RuntimeError):
    """A part cannot be built: the daemon exits with code, saying message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def run_robot(config: Config, args: argparse.Namespace) -> int:
    """Build the robot and run it until it stops; the exit status."""
    try:
        supervisor = Supervisor(config, args)
    except StartupError as e:
        print(f"storybot: {e}", file=sys.stderr)
        return e.code
    return await supervisor.run()


class Supervisor:
    def __init__(self, config: Config, args: argparse.Namespace) -> None:
        from audio.playback import open_sink
        from engines.child import Child
        from robot.engine_host import EngineUnavailable
        from robot.events import EngineStatus
        from robot.memory.plan import AsrPolicy
        from robot.plumbing.paths import state_dir
        from robot.plumbing.settings import RuntimeSettings
        from robot.remote_host import build_engine_host
        from robot.robot import Mode, Robot
        from robot.story.resume import StoryStore

        self.config = config
        self.args = args
        self.mode = Mode(args.command)
        if self.mode is Mode.LISTEN and config.asr.backend == "none":
            raise StartupError(
                EX_CONFIG, 'configuration error: storybot listen needs a microphone (asr.backend = "none")'
            )
        self.notifier = args.notifier
        self.robot: Robot  # built below; the hooks given to the parts built first reach it once it runs
        self.tts = _build_tts(config)
        safety = _build_safety(config)
        commands = _build_commands(config)
        settings_path = state_dir() / "settings.json"
        settings = RuntimeSettings.load(settings_path, config.audio.volume, config.web.volume_cap)
        self.plan, refusal = _memory_plan(config)
        plan = self.plan
        engine_config = _engine_config(config, plan)
        self.engine_config = engine_config
        # the parents' page (off by default): built before the robot, whose hooks and safety filter it provides
        is_web_wanted = config.web.enabled and self.mode is Mode.DAEMON
        if is_web_wanted and plan is not None and plan.web_refusal:
            log.warning("the parents' page stays off: %s", plan.web_refusal)
            is_web_wanted = False
        self.web = _build_web(config, safety, engine_config.model, lambda: self.robot) if is_web_wanted else None
        web = self.web
        web_hooks = web.robot_hooks() if web else {}
        self.host = build_engine_host(
            engine_config,
            on_status=lambda problem, what="engine": self.robot.post(EngineStatus(problem, what)),  # once it runs
            smaller_context_tokens=plan.short_context_tokens if plan is not None else 0,
        )
        wav = getattr(args, "wav", None)
        # no microphone (told by text, or button only because the recognizer does not fit): nothing of the capture
        # stack is loaded, and speech goes out through aplay, so neither numpy nor PortAudio is resident
        is_asr_refused = plan is not None and plan.asr_policy is AsrPolicy.NONE and config.asr.backend != "none"
        has_microphone = self.mode is not Mode.TELL and not is_asr_refused and config.asr.backend != "none"
        self.has_listener = has_microphone
        # what the speaker plays, for the microphone's echo canceller (None: no canceller)
        self.echo_reference = _echo_reference(config, has_microphone and not wav)
        self.robot = Robot(
            config,
            self.mode,
            engine_host=self.host,
            tts=self.tts,
            safety=web.page.safety_filter if web else safety.filter,
            store=StoryStore(state_dir() / "story.json"),
            commands=commands,
            settings=settings,
            save_settings=lambda changed: changed.save(settings_path),
            open_sink=lambda: open_sink(
                config.audio.output_device,
                config.audio.output_rate_hz,
                settings.volume * (web.page.volume_factor() if web else 1.0),  # bedtime: each story quieter
                wav,
                config.audio.wav_fallback,
                lean=not has_microphone,
                reference=self.echo_reference,
                duck_db=config.audio.duck_db,
                spawn=Child,
            ),
            story_out=sys.stdout,
            diag_out=sys.stderr,
            on_status=[lambda: self.notifier.status(self.robot.status_text), *web_hooks.pop("on_status", [])],
            on_state_change=[self._show_state, *web_hooks.pop("on_state_change", [])],
            on_listen_requested=self._listen_requested,
            on_release=self._end_utterance,
            is_asr_released_while_generating=plan is not None and not plan.is_asr_loaded_while_generating,
            microphone_problem=(
                "the speech recognizer does not fit in memory; the button tells stories" if is_asr_refused else ""
            ),
            **web_hooks,
            has_microphone=has_microphone,
        )
        if refusal:
            self.host.give_up(EngineUnavailable(f"no model fits in memory: {refusal}", is_permanent=True))
        self.listener = _make_listener(config, self.robot, self.echo_reference) if has_microphone else None
        self.earcon = _Earcon(config, self.listener) if self.listener is not None and config.button.earcon else None
        self.button = None if self.mode is Mode.TELL else _make_button(config, self.robot)

    # --- the hooks, as calls into their owners ---------------------------------------------------------

    def _show_state(self, state) -> None:
        if self.button is not None and self.config.button.serial_port:  # the serial board has the LED
            self.button.set_led(LED_FOR_STATE[state.value])

    def _listen_requested(self) -> None:
        if self.earcon is not None:
            self.earcon.play()

    def _end_utterance(self) -> None:
        if self.listener is not None:
            self.listener.end_utterance()

    # --- running ---------------------------------------------------------------------------------------

    async def run(self) -> int:
        from robot.events import ButtonPressed, ShutdownRequested, Source, StoryRequested
        from robot.robot import Mode

        robot, host, notifier = self.robot, self.host, self.notifier
        loop = asyncio.get_running_loop()
        if not self.has_listener:  # a small board: what start-up freed goes back before the engine maps its weights
            from robot.memory.heap import keep_heap_trimmed, release_free_heap

            release_free_heap()
            helpers_first = [asyncio.create_task(keep_heap_trimmed(), name="heap-trim")]
        else:
            helpers_first = []

        def on_signal(sig: signal.Signals) -> None:
            notifier.send("STOPPING=1")
            robot.post(ShutdownRequested(sig.name))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)  # kill -USR2: where every coroutine waits
        notifier.send(
            f"EXTEND_TIMEOUT_USEC={int((self.engine_config.load_timeout_s + 30) * 1e6)}", "STATUS=loading the model"
        )
        engine_settled = asyncio.Event()
        helpers: list[asyncio.Task] = [
            *helpers_first,
            asyncio.create_task(_run_engine(host, engine_settled), name="engine"),
            asyncio.create_task(_announce_ready(robot, notifier, engine_settled), name="ready"),
            asyncio.create_task(_watchdog(robot, notifier), name="watchdog"),
        ]
        if self.plan is not None:
            helpers.append(asyncio.create_task(_guard_memory(self.config, self.plan, robot), name="memory-guard"))
        helpers.append(asyncio.create_task(_keep_opening_speech(self.tts, self.config), name="opening-speech"))
        if self.mode is Mode.TELL:
            robot.post(StoryRequested(self.args.text, Source.TEXT, time.monotonic()))
        if self.listener is not None:
            helpers.append(asyncio.create_task(self.listener.run(), name="listener"))
        if self.web is not None:
            helpers += [
                asyncio.create_task(self.web.server.run(), name="web"),
                asyncio.create_task(self.web.page.checksum_model(), name="model-checksum"),
            ]
        if self.button is not None:
            self.button.start()
        if self.listener is not None:
            if self.mode is Mode.DAEMON and sys.stdin.isatty():
                loop.add_reader(sys.stdin.fileno(), _on_enter, robot, ButtonPressed(Source.BUTTON))
            print("storybot: listening; ask for a story", file=sys.stderr, flush=True)
        try:
            code = await robot.run()
        finally:
            if self.button is not None:
                self.button.stop()
            for task in helpers:
                task.cancel()
            engine_peak_kb = _peak_rss_kb(host.engine_pid)
            await _bounded("the listener", asyncio.gather(*helpers, return_exceptions=True))
            if not await _bounded("the engine", host.close()):
                host.kill_now()
            await _bounded("speech", self.tts.close())
        if self.args.timings_json:
            _write_timings(self.args.timings_json, robot, engine_peak_kb)
        return code


async def _keep_opening_speech(tts, config: Config) -> None:
    from robot.story.session import keep_opening_speech

    await keep_opening_speech(tts, config.story.language)


def _engine_config(config: Config, plan):
    """engine.* as the memory plan chose it (back end, model, context, how the weights load), or as configured when
    there is no plan."""
    if plan is None:
        return config.engine
    load = plan.weights_load if config.engine.load == "auto" else config.engine.load
    return dataclasses.replace(
        config.engine,
        backend=plan.primary or plan.backend,  # remote: the plan is made for its local fallback (or for none)
        model=plan.model_path,
        context_tokens=plan.context_tokens,
        load=load,
    )


def _build_tts(config: Config):
    from audio.tts import Timeouts, TtsError, build_tts
    from engines.child import Child

    try:
        return build_tts(
            config.tts.backend,
            config.tts.voice or ("" if config.story.language == "en" else config.story.language),
            config.tts.rate_wpm,
            Timeouts(config.tts.timeout_base_s, config.tts.timeout_per_char_s),
            spawn=Child,  # audio/ runs its children through engines' one child-process class, handed in here
        )
    except TtsError as e:
        raise StartupError(EX_UNAVAILABLE, str(e)) from None


def _build_safety(config: Config):
    from robot.story.safety import SafetyError, SafetyFilter

    try:
        return SafetyFilter(config.story.language, config.safety.strictness)
    except SafetyError as e:
        raise StartupError(EX_CONFIG, f"configuration error: {e}") from None


def _build_web(config: Config, safety, model_path: str, robot):
    """The parents' page ([web] enabled): its core and its HTTP server, not listening yet. robot: the state owner,
    once built."""
    from robot.plumbing.paths import state_dir

    try:
        from robot.web.server import WebServer
    except ImportError as e:  # aiohttp is the [web] extra
        raise StartupError(
            EX_CONFIG, f"configuration error: web.enabled needs aiohttp ({e}); pip install 'storybot[web]'"
        ) from None
    from robot.web.page import ParentsPage

    page = ParentsPage(config, state_dir(), safety, model_path, robot)
    return _Web(page, WebServer(page, state_dir()))


@dataclasses.dataclass(frozen=True)
class _Web:
    page: ParentsPage
    server: WebServer

    def robot_hooks(self) -> dict:
        return {
            "on_story_start": [self.page.story_started],
            "on_sentence": [self.page.sentence_spoken],
            "on_story_end": [self.page.story_ended],
            "on_status": [self.page.status_changed],
            "on_state_change": [self.page.state_changed],
            "story_gate": self.page.story_gate,
        }


def _build_commands(config: Config):
    from robot.controls.commands import CommandPhrases, CommandsError

    try:
        return CommandPhrases.load(config.story.language) if config.asr.voice_commands else None
    except CommandsError as e:
        raise StartupError(EX_CONFIG, f"configuration error: {e}") from None


def _make_button(config: Config, robot):
    """The push button, when one is configured (the serial board, else a GPIO pin): its events go to the robot as
    posted events; not started yet."""
    from robot.events import ButtonLongPressed, ButtonPressed, ButtonReleased, Source

    loop = asyncio.get_running_loop()
    kinds = {"press": ButtonPressed, "release": ButtonReleased, "long_press": ButtonLongPressed}

    def on_event(event) -> None:
        loop.call_soon_threadsafe(robot.post, kinds[event.kind](Source.BUTTON))

    def on_status(message: str) -> None:
        log.warning("button: %s", message)

    if config.button.serial_port:
        from robot.controls.button_serial import SerialButton

        button = SerialButton(
            config.button.serial_port,
            on_event,
            baudrate=config.button.baudrate,
            long_press_ms=config.button.long_press_ms,
            debounce_ms=config.button.debounce_ms,
            on_status=on_status,
        )
        button.set_led("idle")
        return button
    if not config.button.gpio_chip:
        return None
    try:
        from robot.controls.button_gpio import GpioButton
    except ImportError as e:  # gpiod is the optional [gpio] extra
        log.error("button: no GPIO button: %s (pip install 'storybot[gpio]')", e)
        return None
    line = int(config.button.gpio_line) if config.button.gpio_line.isdigit() else config.button.gpio_line
    return GpioButton(
        config.button.gpio_chip,
        line,
        on_event,
        active_low=config.button.gpio_active_low,
        long_press_ms=config.button.long_press_ms,
        debounce_ms=config.button.debounce_ms,
        on_status=on_status,
    )


async def _guard_memory(config: Config, plan, robot) -> None:
    """The runtime memory guard: each level it steps to is posted to the state owner, which alone acts on it
    (the engine's context, holding the engine, the story)."""
    from robot.events import MemoryPressure
    from robot.memory.guard import Level, PressureGuard, thresholds_for, watch

    guard = PressureGuard(thresholds_for(plan, config.memory))

    def post(event) -> None:
        log.warning("memory guard: %s", event)
        robot.post(
            MemoryPressure(
                int(event.level),
                str(event) if event.level else "",
                context_tokens=plan.short_context_tokens
                if event.level >= Level.SHORTEN_CONTEXT
                else plan.context_tokens,
                engine_hold=f"memory pressure ({event.level.name.lower()})" if event.level >= Level.STOP_ENGINE else "",
            )
        )

    await watch(guard, post, config.memory.guard_interval_s)


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


async def _bounded(what: str, step) -> bool:
    """Run one shutdown step with a deadline: a stalled step is named in the log and left behind."""
    try:
        await asyncio.wait_for(step, STOP_STEP_S)
        return True
    except TimeoutError:
        log.error("stopping %s took over %g s; going on without it", what, STOP_STEP_S)
        return False


def _echo_reference(config: Config, has_microphone: bool):
    """The playback reference when the echo canceller is to run, else None: audio.echo_cancel, and with "auto"
    whether the plan can afford its CPU (robot.memory.plan.echo_cancel_choice)."""
    if not has_microphone or config.audio.echo_cancel == "off":
        if has_microphone:
            log.info("memory plan: echo canceller off (audio.echo_cancel = off)")
        return None  # and numpy stays out of a daemon without a microphone
    from audio.echo import EchoError, EchoReference, check_library

    try:
        check_library()
    except EchoError as e:
        if config.audio.echo_cancel == "on":
            raise StartupError(EX_UNAVAILABLE, str(e)) from None
        log.warning("memory plan: echo canceller off: %s", e)
        return None
    choice = _echo_cancel_choice(config)
    log.info("memory plan: %s", choice.reason)
    if not choice.is_on:
        return None
    log.info(
        "echo cancellation on (SpeexDSP, %d ms filter); the speech recognizer runs in its own process",
        config.audio.echo_filter_ms,
    )
    return EchoReference()


def _echo_cancel_choice(config: Config):
    """What the canceller costs here (measured now, or the named board's figure) against what the plan allows."""
    from robot.memory.plan import board_echo_core_fraction, echo_cancel_choice, load_board

    if config.memory.board == "auto":
        from audio.echo import measure_core_fraction

        fraction, how, cores = measure_core_fraction(), "measured here at start-up", os.cpu_count() or 1
    else:
        board = load_board(config.memory.board)
        (fraction, how), cores = board_echo_core_fraction(board), board.cores
    return echo_cancel_choice(config.audio.echo_cancel, fraction, cores, how)


def _make_listener(config: Config, robot, echo_reference=None):
    from audio.asr import build_recognizer
    from audio.capture import Microphone
    from audio.vad import VadSettings
    from robot.listener import Listener
    from robot.plumbing.paths import state_dir

    vad = config.vad

    cancellers: list = []  # the microphone's current one last

    def canceller():
        if echo_reference is None:
            return None
        from audio.echo import EchoCanceller, EchoSettings

        cancellers[:] = [EchoCanceller(echo_reference, EchoSettings(filter_ms=config.audio.echo_filter_ms))]
        return cancellers[0]

    arguments: dict[str, Any] = {
        "backend": config.asr.backend,
        "vosk_model": config.asr.vosk_model,
        "grammar": tuple(config.asr.grammar),
        "jsgf_file": _jsgf_file(config.asr.pocketsphinx_search),
        "state_dir": str(state_dir()),
        "commands": robot.commands.grammar() if robot.commands else (),
        "is_child_voice": config.asr.child_voice,
    }

    def make_recognizer():
        # With the canceller on the robot listens for commands over its own voice at full volume: decoding it in
        # the daemon would hold the GIL and make the speaker's and the microphone's callbacks late.
        if echo_reference is not None:
            from audio.asr_process import ProcessRecognizer

            return ProcessRecognizer(arguments)
        return build_recognizer(**arguments)

    return Listener(
        robot.post,
        make_microphone=lambda: Microphone(
            config.audio.input_device,
            config.audio.block_ms,
            config.audio.capture_rate_hz,
            config.audio.capture_channels,
            canceller=canceller(),
        ),
        make_recognizer=make_recognizer,
        vad_settings=VadSettings(
            config.audio.block_ms,
            vad.margin_db,
            vad.min_level_dbfs,
            vad.preroll_ms,
            vad.min_speech_ms,
            vad.end_silence_ms,
            vad.max_utterance_s,
            vad.complete_silence_ms,
        ),
        is_open=lambda: robot.is_listening_allowed,
        is_command_time=lambda: robot.is_command_time,
        is_recognizer_wanted=lambda: robot.is_recognizer_wanted,
        echo_delay_s=lambda: cancellers[0].delay_s if cancellers else 0.0,
        wake_word=_wake_word(config),
        stop_word=_stop_word(config),
    )


def _stop_word(config: Config):
    """The stop-word classifier (asr.stop_word), or None: off, not English, no voice commands, or its file unusable
    (then the robot runs on without it, as PocketSphinx decodes the commands, and says why)."""
    from robot.memory.plan import is_stop_word_on

    if not is_stop_word_on(config):
        return None
    from audio.stop_word import MODEL_NAME, StopWord, StopWordError
    from robot.plumbing import paths

    try:
        stop_word = StopWord.load(paths.assets_dir() / "asr" / MODEL_NAME, config.asr.stop_word_cutoff or None)
    except StopWordError as e:
        log.warning("stop word: %s; voice commands are heard without it", e)
        return None
    log.info("stop word classifier on while speaking (cutoff %.2f)", stop_word.cutoff)
    return stop_word


def _wake_word(config: Config):
    """The wake word's detector (asr.wake_word), or None; one that is asked for and cannot be had stops the start:
    the robot would take no spoken request at all."""
    if not config.asr.wake_word:
        return None
    from audio.wake import WakeWord, WakeWordError

    try:
        wake_word = WakeWord(config.asr.wake_word, config.asr.wake_word_cutoff, config.asr.wake_word_speaking_cutoff)
    except WakeWordError as e:
        raise StartupError(EX_UNAVAILABLE, str(e)) from None
    log.info(
        "wake word %r (cutoff %g, %g while speaking): in run mode a request needs it or a press",
        wake_word.phrase,
        wake_word.cutoff,
        wake_word.speaking_cutoff,
    )
    return wake_word


class _Earcon:
    """The chime played when the robot starts listening; the microphone ignores it."""

    def __init__(self, config: Config, listener) -> None:
        from audio.speech import read_wav
        from robot.plumbing.paths import assets_dir

        self._config = config
        self._listener = listener
        self._audio = read_wav((assets_dir() / "earcons" / "listen.wav").read_bytes())
        self._task: asyncio.Task | None = None

    def play(self) -> None:
        self._listener.mute_for(self._audio.duration_s + 0.4)  # the chime, plus the device's latency
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._play(), name="earcon")

    async def _play(self) -> None:
        from audio.devices import DeviceError
        from audio.playback import PlaybackError, SoundDeviceSink

        audio = self._config.audio
        try:
            sink = await asyncio.to_thread(SoundDeviceSink, audio.output_device, audio.output_rate_hz, audio.volume)
        except DeviceError as e:
            log.info("no earcon: %s", e)
            return
        try:
            await sink.play(self._audio)
        except PlaybackError as e:
            log.info("earcon: %s", e)
        finally:
            await sink.close()


def _jsgf_file(search: str) -> str | None:
    from robot.plumbing.paths import assets_dir

    if search == "general":
        return None
    if search == "story-requests":
        return str(assets_dir() / "asr" / "story-requests.jsgf")
    return search


async def _run_engine(host, settled: asyncio.Event) -> None:
    """Load the model at once (while a request is still being spoken), then keep the engine alive."""
    from robot.engine_host import EngineUnavailable

    try:
        await host.get()
    except EngineUnavailable:
        pass  # the host has said why, once
    finally:
        settled.set()
    await host.supervise()


async def _announce_ready(robot, notifier, engine_settled: asyncio.Event) -> None:
    """READY=1 once the robot can answer a child: the engine loaded (or known unavailable: canned stories) and
    the microphone listening (or known missing)."""
    await engine_settled.wait()
    deadline = time.monotonic() + MIC_SETTLE_S
    while not robot.is_mic_settled and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    notifier.send("READY=1", f"STATUS={robot.status_text}")
    log.info("ready: %s", robot.status_text)
    _inject_fault_after_ready()


def _inject_fault_after_ready() -> None:
    """STORYBOT_FAULT=wedge-loop:SECONDS blocks the event loop for good SECONDS after READY: a hang that real
    parts cannot produce on demand, for the watchdog's test."""
    fault = os.environ.get("STORYBOT_FAULT", "")
    if fault.startswith("wedge-loop:"):
        delay_s = float(fault.split(":", 1)[1])
        log.warning("fault injection: the event loop will block in %g s", delay_s)
        asyncio.get_running_loop().call_later(delay_s, lambda: time.sleep(1e9))


async def _watchdog(robot, notifier) -> None:
    """WATCHDOG=1 from the event loop, only while the state owner makes progress: a wedged loop or a handler
    stuck on one event stops the pings, and systemd restarts the service."""
    period_s = notifier.watchdog_s
    if not period_s:
        return
    is_stuck = False
    while True:
        if robot.is_making_progress(period_s / 2):
            notifier.send("WATCHDOG=1")
            is_stuck = False
        elif not is_stuck:
            is_stuck = True
            log.error(
                "the robot has been handling one event for over %g s; the watchdog is no longer fed", period_s / 2
            )
        await asyncio.sleep(period_s / 4)


def _memory_plan(config: Config):
    """(plan, "") or (None, why nothing fits); (None, "") when no plan can be made here (then the config rules)."""
    from robot.memory.plan import NoModelToPlan, PlanRefused, plan_from_config

    try:
        plan = plan_from_config(config)
    except NoModelToPlan as e:  # the engine host checks the model again and says what is wrong with it
        log.debug("memory plan: %s", e)
        return None, ""
    except PlanRefused as e:  # the engine host gives up with these numbers, in one line
        return None, str(e)
    except (OSError, ValueError) as e:
        log.warning("memory plan: cannot make one (%s); using the configuration as it is", e)
        return None, ""
    for reason in plan.reasons:
        log.info("memory plan: %s", reason)
    return plan, ""


def _on_enter(robot, event) -> None:
    if not sys.stdin.readline():  # end of input: stop watching the terminal
        asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
        return
    robot.post(event)


def _peak_rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _write_timings(path: str, robot, engine_peak_kb: int | None) -> None:
    record = {
        "results": [
            {
                "outcome": r.outcome,
                "engine_reason": r.engine_reason,
                "sentences": r.sentences,
                "blocked": r.blocked,
                "subject": r.prompt.subject,
                **r.timings.as_dict(),
            }
            for r in robot.results
        ],
        "end_of_speech_at": robot.end_of_speech_at,
        "daemon_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "engine_peak_rss_kb": engine_peak_kb,
        "pid": os.getpid(),
    }
    Path(path).write_text(json.dumps(record, indent=2))
