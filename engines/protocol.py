"""The storybot engine protocol, version 1.

An engine is a child process. The parent writes request frames to its stdin; the engine writes reply frames
to its stdout. Diagnostics go to stderr and never mix with frames. See docs/engine-protocol.md.

A frame is one line of UTF-8 JSON (an object) ending in "\\n", at most MAX_FRAME_BYTES long including the
newline. Every frame carries "v" (the protocol version) and "type". Anything else is a ProtocolError: the
receiver reports it and never guesses at what was meant.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 32 * 1024
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64


class ProtocolError(ValueError):
    """A frame that breaks the protocol. The message names what was wrong."""


class ErrorCode(enum.StrEnum):
    """Why an engine could not do what it was asked. One per failure class."""

    BAD_MODEL = "bad_model"  # the model file is missing, unreadable or malformed
    OUT_OF_MEMORY = "out_of_memory"  # the model or its context did not fit
    BAD_REQUEST = "bad_request"  # a well-formed frame whose values cannot be served
    PROTOCOL = "protocol"  # a malformed frame
    BUSY = "busy"  # a generate arrived while another is running
    INTERNAL = "internal"  # anything else; a bug in the engine


class ExitCode(enum.IntEnum):
    """Exit statuses of an engine process, one per failure class (sysexits.h values)."""

    OK = 0
    USAGE = 64  # bad command line
    BAD_MODEL = 65  # EX_DATAERR: the model file is malformed
    MODEL_MISSING = 66  # EX_NOINPUT: the model file is missing or unreadable
    MODEL_SIZE = 67  # storybot-llama2c: the checkpoint's size is not what its header implies
    BAD_TOKENIZER = 68  # storybot-llama2c: tokenizer.bin is malformed
    VOCAB_MISMATCH = 69  # storybot-llama2c: the tokenizer's vocabulary differs from the checkpoint's
    INTERNAL = 70  # EX_SOFTWARE
    OUT_OF_MEMORY = 71  # EX_OSERR: allocation failed while loading

    @property
    def is_permanent(self) -> bool:
        """True when restarting the engine with the same arguments cannot help."""
        return self not in (ExitCode.OK, ExitCode.INTERNAL, ExitCode.OUT_OF_MEMORY)


class StopReason(enum.StrEnum):
    """Why a generation ended."""

    EOS = "eos"  # the model ended the text
    LENGTH = "length"  # max_tokens reached
    STOP = "stop"  # a stop string matched
    CANCELLED = "cancelled"  # the parent sent cancel


# --- frames from the parent to the engine -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One generation asked of an engine: what crosses the engine boundary from the story. The client numbers it
    and sends it as a Generate frame (the same fields, plus its id)."""

    prompt: str  # the text the model continues
    max_tokens: int = 256  # generated tokens, not counting the prompt
    temperature: float = 0.8  # 0 means greedy
    top_p: float = 0.95
    top_k: int = 40  # 0 disables top-k
    repeat_penalty: float = 1.0  # 1.0 disables it
    seed: int = -1  # -1: the engine picks one
    stop: tuple[str, ...] = ()  # generation ends before any of these strings
    special: bool = False  # the prompt contains the model's special tokens (chat markup) to be parsed as such

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ProtocolError("generate: prompt is empty")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ProtocolError(f"generate: prompt has {len(self.prompt)} characters, at most {MAX_PROMPT_CHARS}")
        _check_range("max_tokens", self.max_tokens, 1, 1 << 20)
        _check_range("temperature", self.temperature, 0.0, 10.0)
        _check_range("top_p", self.top_p, 0.0, 1.0)
        _check_range("top_k", self.top_k, 0, 1 << 20)
        _check_range("repeat_penalty", self.repeat_penalty, 0.5, 5.0)
        _check_range("seed", self.seed, -1, (1 << 31) - 1)
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ProtocolError(f"generate: {len(self.stop)} stop strings, at most {MAX_STOP_STRINGS}")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
                raise ProtocolError(f"generate: stop strings must be 1-{MAX_STOP_CHARS} characters, got {s!r}")


@dataclass(frozen=True, slots=True)
class Generate(Request):
    """Start one generation. The engine answers with Token frames and then one Done or Error frame."""

    TYPE: ClassVar[str] = "generate"
    id: int = field(kw_only=True)  # chosen by the parent, echoed in every reply about this generation

    def __post_init__(self) -> None:
        _check_id(self.id)
        super(Generate, self).__post_init__()  # explicit: slots=True makes a new class, and bare super() needs it

    @classmethod
    def of(cls, request: Request, request_id: int) -> Generate:
        """The frame that asks for `request` as generation `request_id`."""
        return cls(**{f.name: getattr(request, f.name) for f in fields(Request)}, id=request_id)

    @property
    def request(self) -> Request:
        """What was asked, without the frame's id."""
        return Request(**{f.name: getattr(self, f.name) for f in fields(Request)})


@dataclass(frozen=True)
class Cancel:
    """Stop generation `id` as soon as possible; the engine answers Done with reason "cancelled"."""

    TYPE: ClassVar[str] = "cancel"
    id: int

    def __post_init__(self) -> None:
        _check_id(self.id)


@dataclass(frozen=True)
class Shutdown:
    """Finish nothing further and exit 0."""

    TYPE: ClassVar[str] = "shutdown"


# --- frames from the engine to the parent -------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """Sent once, when the model is loaded and requests can be served."""

    TYPE: ClassVar[str] = "ready"
    engine: str  # the back end's name, e.g. "llama.cpp"
    model: str  # the model file
    context_tokens: int  # the context window actually allocated
    load_ms: float  # wall time spent loading, milliseconds


@dataclass(frozen=True)
class Token:
    """A piece of generated text (one or more tokens, always whole UTF-8 characters)."""

    TYPE: ClassVar[str] = "token"
    id: int
    text: str


@dataclass(frozen=True)
class Done:
    """The end of generation `id`."""

    TYPE: ClassVar[str] = "done"
    id: int
    reason: StopReason
    tokens: int  # generated tokens
    prompt_tokens: int
    first_token_ms: float  # from the request's arrival to the first token, milliseconds
    total_ms: float  # from the request's arrival to the end, milliseconds

    @property
    def tokens_per_s(self) -> float:
        gen_ms = self.total_ms - self.first_token_ms
        if self.tokens < 2 or gen_ms <= 0:
            return 0.0
        return (self.tokens - 1) * 1000.0 / gen_ms


@dataclass(frozen=True)
class Error:
    """Something could not be done. `id` is the generation it concerns, or -1 for none."""

    TYPE: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    id: int = -1


Frame = Generate | Cancel | Shutdown | Ready | Token | Done | Error
_FRAME_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (Generate, Cancel, Shutdown, Ready, Token, Done, Error)}
_ENUM_FIELDS: dict[str, type[enum.Enum]] = {"reason": StopReason, "code": ErrorCode}


def encode(frame: Frame) -> bytes:
    """One frame as a line of bytes."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": frame.TYPE}
    values = asdict(frame)
    if "id" in values and isinstance(frame, Generate):
        body["id"] = values.pop("id")  # the frame's id leads, as in the protocol document's examples
    for key, value in values.items():
        body[key] = value.value if isinstance(value, enum.Enum) else value
    line = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    if len(line) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{frame.TYPE} frame is {len(line)} bytes, at most {MAX_FRAME_BYTES}")
    return line


def decode(line: bytes) -> Frame:
    """Parse one line into a frame, or raise ProtocolError naming what was wrong."""
    if len(line) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame is {len(line)} bytes, at most {MAX_FRAME_BYTES}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"frame is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"frame is not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"frame is a JSON {type(body).__name__}, expected an object")
    version = body.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"frame has protocol version {version!r}, expected {PROTOCOL_VERSION}")
    kind = body.pop("type", None)
    cls = _FRAME_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown frame type {kind!r}, expected one of {sorted(_FRAME_TYPES)}")
    return _build(cls, body)


def _build(cls: Any, body: dict[str, Any]) -> Frame:  # one of the frame classes
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ProtocolError(f"{cls.TYPE}: unknown field(s) {unknown}")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        if name not in body:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ProtocolError(f"{cls.TYPE}: missing field {name!r}")
            continue
        kwargs[name] = _coerce(cls.TYPE, name, f.type, body[name])
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ProtocolError(f"{cls.TYPE}: {e}") from None


def _coerce(kind: str, name: str, type_name: Any, value: Any) -> Any:
    expected = str(type_name)
    if name in _ENUM_FIELDS:
        enum_cls = _ENUM_FIELDS[name]
        try:
            return enum_cls(value)
        except ValueError:
            allowed = [m.value for m in enum_cls]
            raise ProtocolError(f"{kind}: {name} is {value!r}, expected one of {allowed}") from None
    if expected == "bool":
        ok = isinstance(value, bool)
    elif expected == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif expected == "str":
        ok = isinstance(value, str)
    elif expected.startswith("tuple[str"):
        ok = isinstance(value, list) and all(isinstance(s, str) for s in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - a field type this decoder does not know is a bug here
        raise AssertionError(f"unhandled field type {expected} for {kind}.{name}")
    if not ok:
        raise ProtocolError(f"{kind}: {name} is {value!r}, expected {expected}")
    return value


def _reject_constant(name: str) -> None:
    raise ProtocolError(f"frame contains {name}, which is not JSON")


def _check_id(value: int) -> None:
    _check_range("id", value, 0, (1 << 53) - 1)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ProtocolError(f"{name} is {value}, expected {low}..{high}")
