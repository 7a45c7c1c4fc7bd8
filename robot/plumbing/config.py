"""Configuration: TOML files and --set overrides in, frozen dataclasses out.

Layers, each over the one before: assets/storybot.toml (the documented defaults), then /etc/storybot/storybot.toml
when present (or the file given with --config instead), then every --set section.key=value. Any mistake raises
ConfigError naming the file, the key or line, and what was expected; the CLI exits with EX_CONFIG (78), which the
systemd unit lists in RestartPreventExitStatus so that a bad config is not retried in a loop.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audio.wake import MODELS as WAKE_WORDS
from engines import registry
from robot.plumbing.exits import Exit
from robot.plumbing.paths import assets_dir

EX_CONFIG = Exit.CONFIG  # the name callers know
SYSTEM_CONFIG = Path("/etc/storybot/storybot.toml")


class ConfigError(ValueError):
    """A configuration mistake. str() is the whole message a person needs."""


def _opt(default: Any, *, low: float | None = None, high: float | None = None, choices: tuple = ()) -> Any:
    return field(default=default, metadata={"low": low, "high": high, "choices": choices})


@dataclass(frozen=True)
class AudioConfig:
    input_device: str = _opt("")  # part of the capture device's name; "" for the system default
    output_device: str = _opt("")  # part of the playback device's name; "" for the system default
    block_ms: int = _opt(30, low=10, high=100)  # capture frame length
    capture_rate_hz: int = _opt(0, low=0, high=192000)  # 0: ask for 16 kHz, else the device's own rate
    capture_channels: int = _opt(0, low=0, high=32)  # 0: ask for mono, else the device's own channels
    output_rate_hz: int = _opt(22050, low=8000, high=48000)
    volume: float = _opt(1.0, low=0.0, high=1.0)
    wav_fallback: str = _opt("storybot-story.wav")  # where speech goes when no output device opens
    # the robot's own playback taken out of what the microphone hears (audio/echo.py): "auto" (where the plan
    # affords its CPU: robot.memory.plan.echo_cancel_choice), "on" or "off"
    echo_cancel: str = _opt("auto", choices=("auto", "on", "off"))
    echo_filter_ms: int = _opt(100, low=20, high=1000)  # the echo tail the canceller models
    # while someone speaks over the story its voice is this much lower (audio/playback.py DUCK_DB; 0: never);
    # only on the PortAudio speaker path the echo canceller listens on
    duck_db: float = _opt(15.0, low=0.0, high=40.0)


@dataclass(frozen=True)
class VadConfig:
    margin_db: float = _opt(12.0, low=3.0, high=40.0)  # speech is this much louder than the noise floor
    min_level_dbfs: float = _opt(-50.0, low=-90.0, high=-10.0)  # and at least this loud
    preroll_ms: int = _opt(300, low=0, high=2000)
    min_speech_ms: int = _opt(150, low=30, high=2000)
    end_silence_ms: int = _opt(700, low=200, high=5000)
    # the silence that ends a request the recognizer already holds as complete (0: always end_silence_ms)
    complete_silence_ms: int = _opt(250, low=0, high=5000)
    max_utterance_s: float = _opt(15.0, low=1.0, high=120.0)


@dataclass(frozen=True)
class AsrConfig:
    # "none": no microphone at all (a button-only board): nothing of the capture stack or a recognizer is loaded
    backend: str = _opt("pocketsphinx", choices=("pocketsphinx", "vosk", "none"))
    vosk_model: str = _opt("")  # a Vosk model directory; required when backend = "vosk"
    grammar: tuple[str, ...] = _opt(())  # phrases to restrict recognition to; empty for free speech
    # PocketSphinx's search: "story-requests" (assets/asr/story-requests.jsgf), "general" (its English model),
    # or the path of a JSGF grammar file
    pocketsphinx_search: str = _opt("story-requests")
    # while the robot speaks, listen for the voice commands of assets/commands/<language>.toml (and nothing else)
    voice_commands: bool = _opt(True)
    # tuned for children's voices (audio/asr.py CHILD_VOICE_LOWERING): the recognizer hears the voice lower and
    # slower; better for children, worse for grown-ups (scripts/bench_requests.py)
    child_voice: bool = _opt(False)
    # a wake word (audio/wake.py; the wake extra): in `storybot run` a request is taken only after it or a press,
    # and said while the robot speaks it stops the story; "" for none
    wake_word: str = _opt("", choices=("", *WAKE_WORDS))
    # the wake word's detection threshold: lower hears more voices (children's, one said over the story) and wakes
    # more often by mistake (scripts/bench_wake_word.py --cutoff)
    wake_word_cutoff: float = _opt(0.5, low=0.05, high=0.99)
    wake_word_speaking_cutoff: float = _opt(0.3, low=0.05, high=0.99)  # ... while the robot speaks
    # while the robot speaks, an utterance the command grammar makes nothing of is asked of the stop-word classifier
    # (audio/stop_word.py; English): it hears a child's "stop" over the story where PocketSphinx does not
    stop_word: bool = _opt(True)
    stop_word_cutoff: float = _opt(0.0, low=0.0, high=0.99)  # 0: the one chosen when it was trained


@dataclass(frozen=True)
class EngineConfig:
    backend: str = _opt("llama2c", choices=registry.names())  # the back ends of engines/backends/
    # llama2c: a checkpoint (v3 converted from GGUF, or llama2.c v0-v2), "" for the default (SmolLM2-135M-Instruct);
    # llama.cpp: a GGUF file, "" for Gemma 3 270M (the llama extra)
    model: str = _opt("")
    # command: the engine's whole command line, a program speaking docs/engine-protocol.md (e.g. a vendor NPU runtime)
    command: tuple[str, ...] = _opt(())
    tokenizer: str = _opt("")  # llama2c v0-v2: tokenizer.bin; "" for tokenizer.bin beside the checkpoint (v3: inside)
    # "auto": the model's chat template when it carries one (GGUF, v3: instruct models), else plain completion
    prompt_style: str = _opt("auto", choices=("auto", "completion", "chat"))
    threads: int = _opt(2, low=1, high=64)
    # llama2c: "read" the weights into private memory (faster: 2 MB pages), "mmap" the file (clean page cache the
    # kernel may drop), "auto": read unless the memory plan needs the weights droppable while listening
    load: str = _opt("auto", choices=("auto", "mmap", "read"))
    # llama2c: the prompt through the layers 32 tokens at a time (each weight row read once per batch: a first token
    # 2-3x sooner); false: token by token, 0.3-0.4 MiB less memory (the batch activations), for the tightest boards
    batched_prefill: bool = _opt(True)
    context_tokens: int = _opt(1024, low=64, high=32768)
    max_tokens: int = _opt(220, low=8, high=4096)
    temperature: float = _opt(0.8, low=0.0, high=2.0)
    top_p: float = _opt(0.95, low=0.05, high=1.0)
    top_k: int = _opt(40, low=0, high=1000)
    repeat_penalty: float = _opt(1.2, low=1.0, high=2.0)
    seed: int = _opt(-1, low=-1, high=2**31 - 1)  # -1 for a new seed each story
    load_timeout_s: float = _opt(120.0, low=1.0, high=3600.0)
    first_token_timeout_s: float = _opt(30.0, low=0.5, high=600.0)
    token_timeout_s: float = _opt(10.0, low=0.5, high=600.0)
    # remote: an OpenAI-compatible server (engines/backends/remote.py, docs/remote-engine.md)
    remote_url: str = _opt("")  # e.g. http://192.168.1.20:8080
    remote_model: str = _opt("")  # the model's name on the server; "" for the server's default
    remote_api: str = _opt("chat", choices=("chat", "completions"))
    remote_api_key_file: str = _opt("")  # a file holding the API key; "" for none
    remote_api_key_env: str = _opt("")  # or the environment variable that holds it
    remote_tls_verify: bool = _opt(True)
    remote_ca_file: str = _opt("")  # a CA bundle for an https server with its own certificate authority
    remote_connect_timeout_s: float = _opt(3.0, low=0.1, high=60.0)
    remote_first_token_timeout_s: float = _opt(15.0, low=0.5, high=600.0)
    remote_token_timeout_s: float = _opt(3.0, low=0.2, high=600.0)
    remote_fallback: str = _opt("llama2c", choices=("none", "llama2c", "llama.cpp"))  # the local engine


@dataclass(frozen=True)
class TtsConfig:
    backend: str = _opt("flite", choices=("flite", "pyttsx3", "espeak-ng"))
    # flite: kal, kal16, slt, rms, awb; pyttsx3 and espeak-ng: an espeak-ng voice such as en or ko
    voice: str = _opt("")
    rate_wpm: int = _opt(150, low=60, high=400)  # pyttsx3 and espeak-ng
    timeout_base_s: float = _opt(5.0, low=0.5, high=120.0)
    timeout_per_char_s: float = _opt(0.05, low=0.0, high=5.0)


@dataclass(frozen=True)
class StoryConfig:
    language: str = _opt("en", choices=("en", "ko"))
    bedtime: bool = _opt(False)  # every story calm and short, as if the request said "bedtime"
    min_sentence_chars: int = _opt(24, low=1, high=400)
    max_sentence_chars: int = _opt(300, low=40, high=2000)
    queue_sentences: int = _opt(8, low=1, high=64)  # how far generation may run ahead of speech


@dataclass(frozen=True)
class ButtonConfig:
    serial_port: str = _opt("")  # the button board's serial port, best its /dev/serial/by-id/ path; "" for none
    baudrate: int = _opt(115200, low=1200, high=4000000)
    long_press_ms: int = _opt(1000, low=200, high=10000)
    debounce_ms: int = _opt(30, low=0, high=500)
    earcon: bool = _opt(True)  # a short chime when the robot starts listening
    gpio_chip: str = _opt("")  # a button on a GPIO pin: its chip, e.g. /dev/gpiochip0; "" for none
    gpio_line: str = _opt("")  # the pin: a line name ("GPIO17") or an offset ("17")
    gpio_active_low: bool = _opt(True)  # true: button to ground with the pull-up; false: to 3.3 V, pull-down


@dataclass(frozen=True)
class SafetyConfig:
    # relaxed: profanity, slurs, sexual content, self-harm; standard: also violence and weapons, drugs and strong
    # drink, scary content, mild swearing; strict: also death and dying, insults, wine and tobacco
    strictness: str = _opt("standard", choices=("relaxed", "standard", "strict"))


@dataclass(frozen=True)
class MemoryConfig:
    board: str = _opt("auto")  # "auto": plan for this machine; or a profile in assets/boards/ (plan as if there)
    fallback_models: tuple[str, ...] = _opt(())  # smaller models, tried in order when engine.model does not fit
    min_context_tokens: int = _opt(128, low=64, high=32768)  # context is shortened down to this before a refusal
    reserve_mb: int = _opt(0, low=0, high=65536)  # RAM kept free; 0: 5% of MemTotal, at least 8 MB
    guard_interval_s: float = _opt(1.0, low=0.1, high=60.0)
    guard_low_mb: int = _opt(0, low=0, high=65536)  # step down below this MemAvailable; 0: the plan's reserve
    guard_hysteresis_mb: int = _opt(0, low=0, high=65536)  # recover above low + this; 0: half the reserve, >= 4 MB
    psi_some_high: float = _opt(20.0, low=0.0, high=100.0)  # step down when PSI "some avg10" (%) exceeds this
    psi_some_low: float = _opt(5.0, low=0.0, high=100.0)  # recover only below this
    psi_full_high: float = _opt(5.0, low=0.0, high=100.0)  # step down when PSI "full avg10" (%) exceeds this
    psi_full_low: float = _opt(1.0, low=0.0, high=100.0)
    breach_dwell_s: float = _opt(3.0, low=0.0, high=600.0)  # pressure lasting this long steps down one level
    recover_dwell_s: float = _opt(30.0, low=0.0, high=3600.0)  # calm lasting this long steps up one level


@dataclass(frozen=True)
class SwapConfig:
    """Read by storybot-swap.service (python -m robot.memory.swap) before the daemon starts; the daemon only checks it."""

    enabled: bool = _opt(True)
    kind: str = _opt("auto", choices=("auto", "zram", "file"))  # auto: zram where the kernel has it, else a file
    size_mb: int = _opt(0, low=0, high=65536)  # 0: zram half the RAM, a swapfile as large as the RAM (<= 1024 MB)
    path: str = _opt("/var/lib/storybot-swap/swapfile")
    swappiness: int = _opt(-1, low=-1, high=200)  # -1: 100 with zram, 60 with a swapfile


@dataclass(frozen=True)
class WebConfig:
    """The parents' page (robot/web/), served by the daemon itself; off unless enabled."""

    enabled: bool = _opt(False)
    host: str = _opt("127.0.0.1")  # the address it listens on; "0.0.0.0" for every network (a phone at home)
    port: int = _opt(8080, low=1, high=65535)
    session_hours: float = _opt(12.0, low=0.1, high=720.0)  # a login lasts this long since the last request
    history_stories: int = _opt(50, low=1, high=1000)  # stories kept in the history (the oldest are dropped)
    # the parents' first limits; the page changes them (kept in the state directory's parents.json)
    volume_cap: float = _opt(1.0, low=0.1, high=1.0)  # the loudest the robot may play, voice commands included
    quiet_start: str = _opt("")  # bedtime: "HH:MM" when quiet hours begin ("" for none)
    quiet_end: str = _opt("")  # "HH:MM" when they end (the next morning when earlier than quiet_start)
    daily_limit_min: int = _opt(0, low=0, high=1440)  # minutes of stories a day; 0 for no limit


@dataclass(frozen=True)
class Config:
    audio: AudioConfig = AudioConfig()
    vad: VadConfig = VadConfig()
    asr: AsrConfig = AsrConfig()
    engine: EngineConfig = EngineConfig()
    tts: TtsConfig = TtsConfig()
    story: StoryConfig = StoryConfig()
    safety: SafetyConfig = SafetyConfig()
    button: ButtonConfig = ButtonConfig()
    swap: SwapConfig = SwapConfig()
    memory: MemoryConfig = MemoryConfig()
    web: WebConfig = WebConfig()


SECTIONS: dict[str, type] = {
    f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in dataclasses.fields(Config)
}


def default_config_path() -> Path:
    return assets_dir() / "storybot.toml"


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *, use_system: bool = True) -> Config:
    """Build the configuration from its layers; raise ConfigError on any mistake."""
    values: dict[str, dict[str, Any]] = {}
    origins: dict[tuple[str, str], str] = {}
    layers = [default_config_path()]
    if path is not None:
        layers.append(Path(path))
    elif use_system and SYSTEM_CONFIG.exists():
        layers.append(SYSTEM_CONFIG)
    for layer in layers:
        _merge(values, origins, _read_toml(layer), str(layer))
    for item in overrides:
        _merge(values, origins, _parse_override(item), f"--set {item}")
    return _build(values, origins)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from None


def _parse_override(item: str) -> dict[str, Any]:
    key, sep, raw = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"--set {item}: expected section.key=value, e.g. engine.threads=2")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word is a string: --set tts.backend=flite
    return {section: {name: value}}


def _merge(values: dict, origins: dict, data: dict[str, Any], origin: str) -> None:
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section [{section}], expected one of {sorted(SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: {section} must be a table [{section}], got {_type_name(table)}")
        for key, value in table.items():
            values.setdefault(section, {})[key] = value
            origins[(section, key)] = origin


def _build(values: dict[str, dict[str, Any]], origins: dict) -> Config:
    sections = {}
    for name, cls in SECTIONS.items():
        given = values.get(name, {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in given:
            if key not in known:
                raise ConfigError(f"{origins[(name, key)]}: unknown key {name}.{key}, expected one of {sorted(known)}")
        kwargs = {key: _check(name, known[key], value, origins[(name, key)]) for key, value in given.items()}
        sections[name] = cls(**kwargs)
    config = Config(**sections)
    object.__setattr__(config, "_origins", dict(origins))  # for check_semantics' messages; not a setting
    return config


def check_value(section: str, key: str, value: Any, origin: str) -> Any:
    """One section.key's value checked as a config file's would be (type, range, choices): the value, or
    ConfigError naming origin and key. For changes made at run time (the parents' page)."""
    cls = SECTIONS.get(section)
    known = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
    if key not in known:
        raise ConfigError(f"{origin}: unknown key {section}.{key}")
    return _check(section, known[key], value, origin)


def _check(section: str, f: dataclasses.Field, value: Any, origin: str) -> Any:
    where = f"{origin}: {section}.{f.name}"
    expected = f.type if isinstance(f.type, str) else f.type.__name__
    if expected == "bool":
        ok = isinstance(value, bool)
    elif expected == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected == "str":
        ok = isinstance(value, str)
    elif expected.startswith("tuple[str"):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
        expected = "a list of strings"
    else:  # pragma: no cover - a field type this checker does not know is a bug here
        raise AssertionError(f"unhandled config type {expected}")
    if not ok:
        words = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
        raise ConfigError(f"{where} is {_type_name(value)} {value!r}, expected {words.get(expected, expected)}")
    low, high, choices = f.metadata["low"], f.metadata["high"], f.metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"{where} is {value!r}, expected one of {list(choices)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where} is {value!r}, expected {low:g} to {high:g}")
    return value


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _where(config: Config, key: str) -> str:
    """'FILE: ' for the layer that set section.key (the defaults file, /etc/..., or --set), '' when unknown."""
    section, _, name = key.partition(".")
    origin = getattr(config, "_origins", {}).get((section, name))
    return f"{origin}: " if origin else ""


def check_semantics(config: Config) -> None:
    """Cross-key and filesystem checks that a TOML type cannot express."""
    if config.asr.backend == "vosk" and not config.asr.vosk_model:
        raise ConfigError(
            _where(config, "asr.vosk_model")
            + 'asr.vosk_model: required when asr.backend = "vosk" (a Vosk model directory)'
        )
    if config.asr.vosk_model and not Path(config.asr.vosk_model).is_dir():
        raise ConfigError(
            _where(config, "asr.vosk_model") + f"asr.vosk_model: {config.asr.vosk_model} is not a directory"
        )
    search = config.asr.pocketsphinx_search
    if search not in ("story-requests", "general") and not Path(search).is_file():
        raise ConfigError(
            _where(config, "asr.pocketsphinx_search")
            + f"asr.pocketsphinx_search: {search!r} is neither story-requests, general nor a JSGF file"
        )
    if config.engine.model and not Path(config.engine.model).is_file():
        raise ConfigError(_where(config, "engine.model") + f"engine.model: {config.engine.model}: no such file")
    problem = registry.get(config.engine.backend).settings_problem(config.engine)
    if problem:
        raise ConfigError(_where(config, "engine.backend") + problem)
    if config.button.gpio_chip and not config.button.gpio_line:
        raise ConfigError(
            _where(config, "button.gpio_line")
            + "button.gpio_line: required when button.gpio_chip is set (a line name or offset)"
        )
    if config.button.gpio_chip and config.button.serial_port:
        raise ConfigError("button.gpio_chip and button.serial_port are both set: storybot has one button")
    if config.story.language != "en" and config.tts.backend == "flite":
        raise ConfigError(
            f'story.language = {config.story.language!r} needs tts.backend = "pyttsx3" or "espeak-ng" (flite '
            "speaks English only)"
        )
    if config.story.min_sentence_chars >= config.story.max_sentence_chars:
        raise ConfigError("story.min_sentence_chars must be below story.max_sentence_chars")
    check_quiet_hours(config.web.quiet_start, config.web.quiet_end, _where(config, "web.quiet_start"))


def check_quiet_hours(start: str, end: str, where: str = "") -> None:
    """Quiet hours are two times of day, "HH:MM", or none (both "")."""
    for key, value in (("web.quiet_start", start), ("web.quiet_end", end)):
        if value and not _is_time_of_day(value):
            raise ConfigError(f'{where}{key} is {value!r}, expected a time of day HH:MM (00:00 to 23:59) or ""')
    if bool(start) != bool(end):
        raise ConfigError(f"{where}web.quiet_start and web.quiet_end: set both (HH:MM) or neither")
    if start and start == end:
        raise ConfigError(f"{where}web.quiet_start and web.quiet_end are both {start}: quiet hours need a length")


def _is_time_of_day(text: str) -> bool:
    hours, sep, minutes = text.partition(":")
    return (
        bool(sep)
        and len(hours) == 2
        and len(minutes) == 2
        and hours.isdigit()
        and minutes.isdigit()
        and int(hours) < 24
        and int(minutes) < 60
    )
