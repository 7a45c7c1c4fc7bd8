"""storybot's command line: parse, load config, validate, build, run."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys

from robot.memory.heap import limit_heap_arenas
from robot.plumbing.config import Config, ConfigError, check_semantics, load_config
from robot.plumbing.exits import Exit, epilog_line

log = logging.getLogger("storybot")

EPILOG = """\
configuration: assets/storybot.toml documents every key; /etc/storybot/storybot.toml (or --config FILE) overrides
it, and --set section.key=value overrides both, e.g. --set engine.threads=1 --set tts.backend=pyttsx3.
The story goes to stdout, a sentence per line as it is spoken; diagnostics and timings go to stderr.
""" + epilog_line()


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
    doctor = sub.add_parser(
        "doctor",
        parents=[common],
        help="print the memory plan for this board and which guards are active",
        description="Read this machine's memory, swap, cgroup limit and pressure support, plan the engine, model "
        "and context that fit, and say which guards (memory cgroup, PSI, swap, zram) are really active. "
        "With --measure: measure the footprint of each part on this machine's real processes (daemon, TTS, "
        "recognizer, engine) and print a board profile that memory.board can name.",
    )
    doctor.add_argument("--measure", action="store_true", help="measure the parts; print a board profile (TOML)")
    doctor.add_argument("--output", metavar="FILE", help="with --measure: write the profile to FILE")
    sub.add_parser(
        "web-password",
        parents=[common],
        help="set the parent password of the parents' page",
        description="Set the one parent password of the parents' page ([web] in the configuration). It is read "
        "from the terminal (twice), or as one line of standard input, and stored as a salted scrypt hash in the "
        "state directory (STORYBOT_STATE_DIR; the service's is /var/lib/storybot), never in the configuration.",
    )
    web_unit = sub.add_parser(
        "web-unit",
        parents=[common],
        help="write (or remove) the systemd drop-in that opens the parents' page's port",
        description="The service is offline; when [web] is enabled it needs a drop-in that allows its port. "
        "Without --dir, print it; with --dir (e.g. /etc/systemd/system/storybot.service.d), write it there when "
        "[web] is enabled and remove it when not. Then: systemctl daemon-reload && systemctl restart storybot.",
    )
    web_unit.add_argument("--dir", metavar="DIR", help="the unit's drop-in directory")
    models = sub.add_parser(
        "models",
        add_help=False,
        help="fetch, convert and verify model files (storybot models --help)",
    )
    models.add_argument("models_argv", nargs=argparse.REMAINDER)
    check = sub.add_parser(
        "engine-check", add_help=False, help="check that an engine program speaks the engine protocol (-- CMD ARGS)"
    )
    check.add_argument("check_argv", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a crash in C code (PortAudio, llama.cpp bindings) leaves a stack trace
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 shows where a hung daemon is
    limit_heap_arenas()  # before any thread starts (robot/memory/heap.py)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"]:  # its own parser, --help included (argparse's REMAINDER would not take a first --help)
        from engines.models import main as models_main

        return models_main(argv[1:])
    if argv[:1] == ["engine-check"]:  # the same: engines/conformance.py parses its own arguments
        from engines.conformance import main as check_main

        return check_main(argv[1:])
    args = build_parser().parse_args(argv)
    from robot.plumbing.notify import Notifier

    args.notifier = Notifier()  # takes NOTIFY_SOCKET out of the environment before any child is started
    _set_up_logging(args.verbose)
    try:
        config = load_config(args.config, args.overrides)
        check_semantics(config)
    except ConfigError as e:
        print(f"storybot: configuration error: {e}", file=sys.stderr)
        return Exit.CONFIG
    if args.command == "devices":
        return show_devices(config)
    if args.command == "web-password":
        from robot.plumbing.paths import state_dir
        from robot.web.password import set_password_command

        return set_password_command(state_dir())
    if args.command == "web-unit":
        from robot.web.unit import web_unit_command

        return web_unit_command(config, args.dir)
    if args.command == "doctor" and args.measure:
        from robot.memory.measure import run_measure

        return run_measure(config, _config_args(args), args.output)
    if args.command == "doctor":
        from robot.doctor import run_doctor

        return run_doctor(config, args)
    if _is_without_tls(config):
        # asyncio imports ssl only to offer TLS, which a button-only daemon with a local engine never uses:
        # leaving it out keeps OpenSSL's ~4 MiB out of a 64 MiB board
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # None in sys.modules: import raises
    import asyncio

    from robot.supervisor import run_robot

    return asyncio.run(run_robot(config, args))


def _is_without_tls(config: Config) -> bool:
    from engines import registry

    return config.asr.backend == "none" and registry.get(config.engine.backend).is_child_process


def _config_args(args: argparse.Namespace) -> list[str]:
    """The --config and --set arguments again, for the daemons `doctor --measure` starts."""
    out = ["--config", args.config] if args.config else []
    return out + [a for o in args.overrides for a in ("--set", o)]


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
        return Exit.UNAVAILABLE
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


if __name__ == "__main__":
    sys.exit(main())
