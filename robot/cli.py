"""storybot's command line: parse, load config, validate, build, run."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import faulthandler
import json
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path

from robot.config import EX_CONFIG, Config, ConfigError, check_semantics, load_config

log = logging.getLogger("storybot")

EPILOG = """\
configuration: assets/storybot.toml documents every key; /etc/storybot/storybot.toml (or --config FILE) overrides
it, and --set section.key=value overrides both, e.g. --set engine.threads=1 --set tts.backend=pyttsx3.
The story goes to stdout, a sentence per line as it is spoken; diagnostics and timings go to stderr.
exit status: 0 done, 65 bad model, 69 no microphone or engine, 78 configuration error."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help="configuration file to use instead of /etc/storybot/storybot.toml"
    )
    common.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one configuration key (repeatable)",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics on stderr (-vv: debug)")
    common.add_argument("--timings-json", metavar="FILE", help="also write the story's timings as JSON to FILE")

    parser = argparse.ArgumentParser(
        prog="storybot",
        description="An offline storytelling robot: ask for a story and hear it told.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tell = sub.add_parser(
        "tell",
        parents=[common],
        help="tell one story from a typed request",
        description='Tell one story from a typed request, e.g. storybot tell "a dragon who loves tea". '
        "Speech goes to the speaker, or to a WAV file with --wav or when there is no speaker.",
    )
    tell.add_argument("text", help='what the story is about, or a whole request ("tell me a story about ...")')
    tell.add_argument("--wav", metavar="FILE", help="write the speech to this WAV file instead of the speaker")

    listen = sub.add_parser(
        "listen",
        parents=[common],
        help="wait for one spoken request, then tell that story",
        description="Listen on the microphone until someone asks for a story (as long as it "
        "takes), then tell it and exit.",
    )
    listen.add_argument("--wav", metavar="FILE", help="write the speech to this WAV file instead of the speaker")

    sub.add_parser(
        "run",
        parents=[common],
        help="the daemon: listen and tell stories until stopped",
        description="Run the robot: any spoken request starts a story. On a terminal, Enter is the "
        "push-to-talk button: it starts listening, or stops the story being told. Stop with Ctrl-C or SIGTERM.",
    )
    sub.add_parser(
        "devices",
        parents=[common],
        help="list sound devices and which ones the configuration picks",
        description="List the sound devices PortAudio sees, marking the defaults and the configured ones.",
    )
    sub.add_parser(
        "doctor",
        parents=[common],
        help="print the memory plan for this board and which guards are active",
        description="Read this machine's memory, swap, cgroup limit and pressure support, plan the engine, model "
        "and context that fit, and say which guards (memory cgroup, PSI, swap, zram) are really active.",
    )
    models = sub.add_parser(
        "models",
        add_help=False,
        help="fetch, convert and verify model files (storybot models --help)",
    )
    models.add_argument("models_argv", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a crash in C code (PortAudio, llama.cpp bindings) leaves a stack trace
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 shows where a hung daemon is
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"]:  # its own parser, --help included (argparse's REMAINDER would not take a first --help)
        from engines.models import main as models_main

        return models_main(argv[1:])
    args = build_parser().parse_args(argv)
    from robot.notify import Notifier

    args.notifier = Notifier()  # takes NOTIFY_SOCKET out of the environment before any child is started
    _set_up_logging(args.verbose)
    try:
        config = load_config(args.config, args.overrides)
        check_semantics(config)
    except ConfigError as e:
        print(f"storybot: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    if args.command == "devices":
        return show_devices(config)
    if args.command == "doctor":
        from robot.doctor import run_doctor

        return run_doctor(config, args)
    return asyncio.run(run_robot(config, args))


def _set_up_logging(verbose: int) -> None:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    if os.environ.get("INVOCATION_ID") and not sys.stderr.isatty():  # a systemd service: log to the journal
        try:
            from systemd.journal import JournalHandler

            logging.basicConfig(level=level, handlers=[JournalHandler(SYSLOG_IDENTIFIER="storybot")])
            return
        except ImportError:
            pass
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(relativeCreated)7.0f %(levelname)s %(name)s: %(message)s"
    )


def show_devices(config: Config) -> int:
    from audio.devices import DeviceError, find_device, list_devices

    try:
        devices = list_devices()
    except DeviceError as e:
        print(f"storybot: {e}", file=sys.stderr)
        return 69
    picks = {}
    for is_input, name in ((True, config.audio.input_device), (False, config.audio.output_device)):
        try:
            picks[is_input] = find_device(name, is_input=is_input).index
        except DeviceError as e:
            print(f"storybot: {e}", file=sys.stderr)
    print(f"{'#':>3}  {'in':>3} {'out':>3}  {'rate':>6}  name (host API)")
    for d in devices:
        marks = ("<in " if picks.get(True) == d.index else "") + ("<out" if picks.get(False) == d.index else "")
        print(
            f"{d.index:>3}  {d.max_input_channels:>3} {d.max_output_channels:>3}  {d.default_rate_hz:>6.0f}  "
            f"{d.name} ({d.host_api}) {marks}".rstrip()
        )
    return 0


async def run_robot(config: Config, args: argparse.Namespace) -> int:
    from audio.playback import open_sink
    from audio.tts import Timeouts, TtsError, build_tts
    from robot.commands import CommandPhrases, CommandsError
    from robot.engine_host import EngineHost, EngineUnavailable
    from robot.events import ButtonPressed, EngineStatus, ShutdownRequested, Source, StoryRequested
    from robot.memplan import AsrPolicy
    from robot.paths import state_dir
    from robot.resume import StoryStore
    from robot.robot import Mode, Robot
    from robot.safety import SafetyError, SafetyFilter
    from robot.settings import RuntimeSettings

    mode = Mode(args.command)
    try:
        tts = build_tts(
            config.tts.backend,
            config.tts.voice or ("" if config.story.language == "en" else config.story.language),
            config.tts.rate_wpm,
            Timeouts(config.tts.timeout_base_s, config.tts.timeout_per_char_s),
        )
    except TtsError as e:
        print(f"storybot: {e}", file=sys.stderr)
        return 69
    try:
        safety = SafetyFilter(config.story.language, config.safety.strictness)
    except SafetyError as e:
        print(f"storybot: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    try:
        commands = CommandPhrases.load(config.story.language) if config.asr.voice_commands else None
    except CommandsError as e:
        print(f"storybot: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    settings_path = state_dir() / "settings.json"
    settings = RuntimeSettings.load(settings_path, config.audio.volume)
    notifier = args.notifier
    plan, refusal = _memory_plan(config)
    engine_config = config.engine
    if plan is not None:
        engine_config = dataclasses.replace(
            config.engine, backend=plan.backend, model=plan.model_path, context_tokens=plan.context_tokens
        )
    engine_problems: list[str] = []  # until the robot exists to hear about them
    host = EngineHost(engine_config, on_status=engine_problems.append)
    if plan is not None:
        host.smaller_context_tokens = plan.short_context_tokens
    if refusal:
        host.give_up(EngineUnavailable(f"no model fits in memory: {refusal}", is_permanent=True))
    wav = getattr(args, "wav", None)
    robot = Robot(
        config,
        mode,
        engine_host=host,
        tts=tts,
        safety=safety.filter,
        store=StoryStore(state_dir() / "story.json"),
        commands=commands,
        settings=settings,
        save_settings=lambda changed: changed.save(settings_path),
        open_sink=lambda: open_sink(
            config.audio.output_device, config.audio.output_rate_hz, settings.volume, wav, config.audio.wav_fallback
        ),
        story_out=sys.stdout,
        diag_out=sys.stderr,
    )
    for problem in engine_problems:
        robot.post(EngineStatus(problem))
    host.on_status = lambda problem: robot.post(EngineStatus(problem))
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        notifier.send("STOPPING=1")
        robot.post(ShutdownRequested(sig.name))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)  # kill -USR2: where every coroutine waits
    robot.on_status.append(lambda: notifier.status(robot.status_text))
    notifier.send(f"EXTEND_TIMEOUT_USEC={int((engine_config.load_timeout_s + 30) * 1e6)}", "STATUS=loading the model")
    engine_settled = asyncio.Event()
    helpers: list[asyncio.Task] = [
        asyncio.create_task(_run_engine(host, engine_settled), name="engine"),
        asyncio.create_task(_announce_ready(robot, notifier, engine_settled), name="ready"),
        asyncio.create_task(_watchdog(robot, notifier), name="watchdog"),
    ]
    if plan is not None:
        helpers.append(asyncio.create_task(_guard_memory(config, plan, robot, host), name="memory-guard"))
    if mode is Mode.TELL:
        robot.post(StoryRequested(args.text, Source.TEXT, time.monotonic()))
        button = None
    elif plan is not None and plan.asr_policy is AsrPolicy.NONE:
        robot.is_mic_settled = True
        robot.problems["microphone"] = "the speech recognizer does not fit in memory; the button tells stories"
        button = _start_serial_button(config, robot, loop) or _start_gpio_button(config, robot, loop)
    else:
        robot.is_asr_released_while_generating = plan is not None and not plan.is_asr_loaded_while_generating
        listener = _make_listener(config, robot)
        robot.on_release = listener.end_utterance
        if config.button.earcon:
            earcon = _Earcon(config, listener)
            robot.on_listen_requested = earcon.play
        helpers.append(asyncio.create_task(listener.run(), name="listener"))
        button = _start_serial_button(config, robot, loop) or _start_gpio_button(config, robot, loop)
        if mode is Mode.DAEMON and sys.stdin.isatty():
            loop.add_reader(sys.stdin.fileno(), _on_enter, robot, ButtonPressed(Source.BUTTON))
        print("storybot: listening; ask for a story", file=sys.stderr, flush=True)
    try:
        code = await robot.run()
    finally:
        if button is not None:
            button.stop()
        for task in helpers:
            task.cancel()
        engine_peak_kb = _peak_rss_kb(host.engine_pid)
        await _bounded("the listener", asyncio.gather(*helpers, return_exceptions=True))
        if not await _bounded("the engine", host.close()):
            host.kill_now()
        await _bounded("speech", tts.close())
    if args.timings_json:
        _write_timings(args.timings_json, robot, engine_peak_kb)
    return code


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


STOP_STEP_S = 4.0  # each step of shutdown; systemd's TimeoutStopSec must allow a few of them


async def _bounded(what: str, step) -> bool:
    """Run one shutdown step with a deadline: a stalled step is named in the log and left behind."""
    try:
        await asyncio.wait_for(step, STOP_STEP_S)
        return True
    except TimeoutError:
        log.error("stopping %s took over %g s; going on without it", what, STOP_STEP_S)
        return False


def _make_listener(config: Config, robot):
    from audio.asr import build_recognizer
    from audio.capture import Microphone
    from audio.vad import VadSettings
    from robot.listener import Listener
    from robot.paths import state_dir

    vad = config.vad
    return Listener(
        robot.post,
        make_microphone=lambda: Microphone(
            config.audio.input_device,
            config.audio.block_ms,
            config.audio.capture_rate_hz,
            config.audio.capture_channels,
        ),
        make_recognizer=lambda: build_recognizer(
            config.asr.backend,
            config.asr.vosk_model,
            config.asr.grammar,
            _jsgf_file(config.asr.pocketsphinx_search),
            str(state_dir()),
            robot.commands.grammar() if robot.commands else (),
        ),
        vad_settings=VadSettings(
            config.audio.block_ms,
            vad.margin_db,
            vad.min_level_dbfs,
            vad.preroll_ms,
            vad.min_speech_ms,
            vad.end_silence_ms,
            vad.max_utterance_s,
        ),
        is_open=lambda: robot.is_listening_allowed,
        is_command_time=lambda: robot.is_command_time,
        is_recognizer_wanted=lambda: robot.is_recognizer_wanted,
    )


LED_FOR_STATE = {
    "idle": "idle",
    "listening": "listening",
    "thinking": "thinking",
    "speaking": "speaking",
    "degraded": "error",
    "stopping": "idle",
}


def _start_serial_button(config: Config, robot, loop: asyncio.AbstractEventLoop):
    """The push-button board, when one is configured: its events go to the robot, the robot's state to its LED."""
    if not config.button.serial_port:
        return None
    from robot.button_serial import SerialButton
    from robot.events import ButtonLongPressed, ButtonPressed, ButtonReleased, Source

    kinds = {"press": ButtonPressed, "release": ButtonReleased, "long_press": ButtonLongPressed}

    def on_event(event) -> None:
        loop.call_soon_threadsafe(robot.post, kinds[event.kind](Source.BUTTON))

    def on_status(message: str) -> None:
        log.warning("button: %s", message)

    button = SerialButton(
        config.button.serial_port,
        on_event,
        baudrate=config.button.baudrate,
        long_press_ms=config.button.long_press_ms,
        debounce_ms=config.button.debounce_ms,
        on_status=on_status,
    )
    robot.on_state_change.append(lambda state: button.set_led(LED_FOR_STATE[state.value]))
    button.set_led("idle")
    button.start()
    return button


def _start_gpio_button(config: Config, robot, loop: asyncio.AbstractEventLoop):
    """The push button on a GPIO pin, when one is configured: its events go to the robot (it has no LED)."""
    if not config.button.gpio_chip:
        return None
    try:
        from robot.button_gpio import GpioButton
    except ImportError as e:  # gpiod is the optional [gpio] extra
        log.error("button: no GPIO button: %s (pip install 'storybot[gpio]')", e)
        return None
    from robot.events import ButtonLongPressed, ButtonPressed, ButtonReleased, Source

    kinds = {"press": ButtonPressed, "release": ButtonReleased, "long_press": ButtonLongPressed}
    line = int(config.button.gpio_line) if config.button.gpio_line.isdigit() else config.button.gpio_line
    button = GpioButton(
        config.button.gpio_chip,
        line,
        lambda event: loop.call_soon_threadsafe(robot.post, kinds[event.kind](Source.BUTTON)),
        active_low=config.button.gpio_active_low,
        long_press_ms=config.button.long_press_ms,
        debounce_ms=config.button.debounce_ms,
        on_status=lambda message: log.warning("button: %s", message),
    )
    button.start()
    return button


class _Earcon:
    """The chime played when the robot starts listening; the microphone ignores it."""

    def __init__(self, config: Config, listener) -> None:
        from audio.speech import read_wav
        from robot.paths import assets_dir

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
    from robot.paths import assets_dir

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


MIC_SETTLE_S = 30.0  # READY waits this long for the microphone to open or fail


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
    from robot.memplan import NoModelToPlan, PlanRefused, plan_from_config

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


async def _guard_memory(config: Config, plan, robot, host) -> None:
    """The runtime memory guard: each level it steps down to is applied here and posted to the robot."""
    from robot.events import MemoryPressure
    from robot.guard import Level, PressureGuard, thresholds_for, watch

    guard = PressureGuard(thresholds_for(plan, config.memory))
    tasks: set[asyncio.Task] = set()

    def apply(event) -> None:
        log.warning("memory guard: %s", event)
        robot.post(MemoryPressure(int(event.level), str(event) if event.level else ""))
        context = plan.short_context_tokens if event.level >= Level.SHORTEN_CONTEXT else plan.context_tokens
        host.use_context(context)
        if event.level >= Level.STOP_ENGINE:
            task = asyncio.create_task(host.hold(f"memory pressure ({event.level.name.lower()})"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            host.release()

    await watch(guard, apply, config.memory.guard_interval_s)


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
                **(r.timings.as_dict() if r.timings else {}),
            }
            for r in robot.results
        ],
        "end_of_speech_at": robot.end_of_speech_at,
        "daemon_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "engine_peak_rss_kb": engine_peak_kb,
        "pid": os.getpid(),
    }
    Path(path).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    sys.exit(main())
