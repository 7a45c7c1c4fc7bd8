"""The remote engine: stories streamed from an OpenAI-compatible model server (llama.cpp's llama-server, Ollama,
llama-cpp-python's server...) over `/v1/chat/completions` or `/v1/completions`, in this process (asyncio and httpx).

RemoteClient looks like engines.client.EngineClient to its callers (ready, chat_template, generate yielding Token
and Done frames, EngineError on failure, stop), so that a story cannot tell a server from a child process. There is
no process to die: a server that fails (refused, an HTTP error, garbage, a missed deadline) is an EngineError, and
is_up turns False until a probe (GET /v1/models) succeeds again.

What a server sends is bounded: a line longer than MAX_LINE_BYTES, an event larger than MAX_EVENT_BYTES, or an error
body beyond ERROR_BODY_BYTES is cut off and named, never buffered without end. The API key goes only into the
Authorization header: it is in no message, log line or repr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    import httpx

from engines import protocol as p
from engines.client import EngineError

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024  # one SSE line; a token's chunk is a few hundred bytes
MAX_EVENT_BYTES = 64 * 1024  # the data lines of one event together
ERROR_BODY_BYTES = 300  # of an HTTP error's body, quoted in its message
PROBE_TIMEOUT_S = 5.0

# The chat template the remote engine gives the story session: it marks each message's role with ASCII separators
# (which a cleaned request never holds), so that a prompt rendered through it can be split back into messages for
# /v1/chat/completions, or into instruction and story text for /v1/completions and for a local fallback engine.
ROLE_MARK, CONTENT_MARK = "\x1e", "\x1f"
ROLE_TEMPLATE = (
    "{% for m in messages %}" + ROLE_MARK + "{{ m.role }}" + CONTENT_MARK + "{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}" + ROLE_MARK + "assistant" + CONTENT_MARK + "{% endif %}"
)
CONTINUE_HINT = "The story so far:\n\n{story}\n\nContinue the story from exactly there, without repeating it."


class Secret(str):
    """A string that does not show itself: repr and str() of a RemoteSettings never print the key."""

    def __repr__(self) -> str:
        return "Secret(***)" if self else "Secret('')"


@dataclass(frozen=True)
class RemoteSettings:
    base_url: str  # the server, e.g. http://192.168.1.20:8080 (a trailing /v1 is allowed)
    model: str = ""  # the model name the server knows; "" for the server's own default
    api: str = "chat"  # "chat": /v1/chat/completions; "completions": /v1/completions
    api_key: Secret = field(default=Secret(""), repr=False)
    tls_verify: bool = True
    ca_file: str = ""  # a CA bundle for a server with its own certificate authority
    connect_timeout_s: float = 3.0
    first_token_timeout_s: float = 15.0  # from the request to the first token: the server reads the prompt
    token_timeout_s: float = 3.0  # between two tokens
    context_tokens: int = 1024  # what the story budgets its prompts for

    @property
    def api_url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/v1") else base + "/v1"

    @property
    def server(self) -> str:
        return self.base_url.rstrip("/")


class RemoteError(EngineError):
    """The server failed: unreachable, an HTTP error, garbage, or a missed deadline. status: the HTTP status, 0
    when there was none."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__("remote", message)
        self.status = status


def split_roles(prompt: str) -> list[tuple[str, str]]:
    """A prompt rendered through ROLE_TEMPLATE, as (role, content) pairs; one ("assistant", prompt) for a plain one.
    The last pair is the assistant's reply begun so far (the story's opening and what followed it)."""
    if not prompt.startswith(ROLE_MARK):
        return [("assistant", prompt)]
    pairs = []
    for part in prompt[1:].split(ROLE_MARK):
        role, _, content = part.partition(CONTENT_MARK)
        pairs.append((role, content))
    return pairs


def request_fields(request: Any) -> dict:
    """A generate request's fields, from the dict the story builds (or a dataclass of the same fields)."""
    if dataclasses.is_dataclass(request) and not isinstance(request, type):
        fields = dataclasses.asdict(request)
    else:
        fields = dict(request)
    fields.pop("id", None)
    return fields


class RemoteClient:
    """One OpenAI-compatible server. Generations may run concurrently (each is its own HTTP request)."""

    pid = None  # no process of ours
    was_killed_by_us = False

    def __init__(self, settings: RemoteSettings, *, name: str = "remote") -> None:
        self.settings = settings
        self._name = name
        self._http: httpx.AsyncClient | None = None  # made on first use (inside the running loop)
        self._next_id = 1
        self.ready: p.Ready | None = None
        self.chat_template = ROLE_TEMPLATE
        self.is_up = False
        self.problem = ""  # why the server is not up, "" when it is (or was never tried)
        self.latency_ms: float | None = None  # of the last successful probe
        self.failures = 0  # requests and probes that failed, for whoever counts them
        self._changed = asyncio.Event()  # set when is_up changes

    # --- the engine-client interface ----------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self.is_up

    async def start(self, timeout_s: float | None = None) -> p.Ready:
        """Probe the server; Ready when it answers and has the model, RemoteError otherwise."""
        await self.probe(timeout_s or PROBE_TIMEOUT_S)
        assert self.ready is not None
        return self.ready

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Close every connection (a stream being read ends with an error in its reader)."""
        http, self._http = self._http, None
        if http is not None:
            await asyncio.wait_for(http.aclose(), timeout_s)
        self._set_up(False, self.problem or "closed")

    async def wait_exit(self) -> None:
        """Until the server is found down."""
        while self.is_up:
            self._changed.clear()
            await self._changed.wait()

    async def wait_up(self) -> None:
        while not self.is_up:
            self._changed.clear()
            await self._changed.wait()

    # --- health ---------------------------------------------------------------------------------------

    async def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> float:
        """GET /v1/models: the round trip in milliseconds; RemoteError (and is_up False) when the server does not
        answer, answers an error, or does not list the configured model."""
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(self._client().get(self.settings.api_url + "/models"), timeout_s)
            await self._raise_for_status(response)
            models = _model_ids(response.content)
        except TimeoutError:
            raise self.mark_down(RemoteError(f"{self.settings.server} did not answer within {timeout_s:g} s")) from None
        except RemoteError as e:
            raise self.mark_down(e) from None
        except Exception as e:  # httpx.HTTPError and its kin: refused, reset, TLS
            raise self.mark_down(RemoteError(_describe_http_error(self.settings.server, e))) from None
        wanted = self.settings.model
        if wanted and models and wanted not in models:
            raise self.mark_down(
                RemoteError(
                    f"{self.settings.server} has no model {wanted!r} (it has {', '.join(models[:5])})", status=404
                )
            )
        self.latency_ms = (time.monotonic() - started) * 1000
        model = wanted or (models[0] if models else "")
        self.ready = p.Ready(self._name, f"{model} at {self.settings.server}", self.settings.context_tokens,
                             self.latency_ms)  # fmt: skip
        self._set_up(True, "")
        return self.latency_ms

    def mark_down(self, error: RemoteError) -> RemoteError:
        """The server failed: is_up False until a probe succeeds. Returns the error, to be raised."""
        self.failures += 1
        self._set_up(False, str(error.message))
        return error

    def _set_up(self, is_up: bool, problem: str) -> None:
        self.problem = problem
        if is_up != self.is_up:
            self.is_up = is_up
            self._changed.set()

    # --- generation -----------------------------------------------------------------------------------

    async def generate(
        self, request: Mapping | Any, *, first_token_timeout_s: float = 0.0, token_timeout_s: float = 0.0
    ) -> AsyncIterator[p.Token | p.Done]:
        """Stream one generation as Token frames and a Done frame. The deadlines are the remote engine's own
        (remote.first_token_timeout_s, remote.token_timeout_s): a server is expected to answer faster than a board
        loading a model, and a short one keeps the pause short when the story goes on locally.

        Leaving the iteration early closes the HTTP stream at once (the server sees the connection closed)."""
        fields = request_fields(request)
        generate = p.Generate(id=self._take_id(), **fields)  # the same checks as a child engine's request
        settings = self.settings
        path, body = self._body(generate)
        started = time.monotonic()
        first_token_at = None
        tokens = 0
        reason = p.StopReason.LENGTH
        is_finished = False
        prompt_tokens = 0
        http = self._client()
        try:
            request_obj = http.build_request("POST", settings.api_url + path, json=body)
            response = await asyncio.wait_for(http.send(request_obj, stream=True), settings.first_token_timeout_s)
        except TimeoutError:
            raise self.mark_down(
                RemoteError(f"{settings.server} sent no answer within {settings.first_token_timeout_s:g} s")
            ) from None
        except Exception as e:
            raise self.mark_down(RemoteError(_describe_http_error(settings.server, e))) from None
        try:
            await self._raise_for_status(response)
            _check_event_stream(response, settings.server)
            deadline_s, what = settings.first_token_timeout_s - (time.monotonic() - started), "first token"
            events = _sse_events(response.aiter_raw())
            while True:
                try:
                    data = await asyncio.wait_for(_next_event_with_text(events), max(0.05, deadline_s))
                except TimeoutError:
                    timeout_s = settings.first_token_timeout_s if what == "first token" else settings.token_timeout_s
                    raise RemoteError(f"{settings.server} sent no {what} within {timeout_s:g} s") from None
                if data == "[DONE]" or (data is None and is_finished):
                    break
                if data is None:
                    raise RemoteError(f"{settings.server} ended the stream in mid-answer")
                text, finish, usage = _parse_chunk(data, settings.server)
                prompt_tokens = usage or prompt_tokens
                if text:
                    tokens += 1
                    if first_token_at is None:
                        first_token_at = time.monotonic()
                    yield p.Token(generate.id, text)
                    deadline_s, what = settings.token_timeout_s, "next token"
                if finish:
                    reason, is_finished = _stop_reason(finish), True
                    deadline_s, what = settings.token_timeout_s, "end of the stream"
        except RemoteError as e:
            raise self.mark_down(e) from None
        except Exception as e:  # the connection broke mid-stream
            if isinstance(e, EngineError):
                raise
            raise self.mark_down(RemoteError(_describe_http_error(settings.server, e))) from None
        finally:
            await _close_quietly(response)
        now = time.monotonic()
        yield p.Done(generate.id, reason, tokens, prompt_tokens,
                     ((first_token_at or now) - started) * 1000, (now - started) * 1000)  # fmt: skip

    def _body(self, generate: p.Generate) -> tuple[str, dict]:
        settings = self.settings
        sampling: dict[str, Any] = {
            "max_tokens": generate.max_tokens,
            "temperature": generate.temperature,
            "top_p": generate.top_p,
            "top_k": generate.top_k,  # not in OpenAI's API; llama.cpp, Ollama and vLLM read it
            "repeat_penalty": generate.repeat_penalty,
            "stream": True,
        }
        if generate.seed >= 0:
            sampling["seed"] = generate.seed
        if generate.stop:
            sampling["stop"] = list(generate.stop)[:4]  # OpenAI's API takes at most four
        if settings.model:
            sampling["model"] = settings.model
        pairs = split_roles(generate.prompt)
        story = pairs[-1][1]
        if settings.api == "completions":
            return "/completions", {"prompt": story, **sampling}
        messages = [{"role": role, "content": content} for role, content in pairs[:-1]]
        if not messages:
            messages = [{"role": "user", "content": "Go on with this story for a young child."}]
        messages[-1] = {**messages[-1], "content": messages[-1]["content"] + "\n\n" + CONTINUE_HINT.format(story=story)}
        return "/chat/completions", {"messages": messages, **sampling}

    # --- plumbing -------------------------------------------------------------------------------------

    def _client(self):
        if self._http is None:
            import ssl  # here too: a button-only daemon with a local engine runs without ssl (robot/cli.py)

            import httpx  # here: only a robot with a remote engine pays for it

            # httpx says every request at info level; storybot says what matters (failures, once)
            logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

            settings = self.settings
            if not settings.tls_verify and settings.base_url.startswith("https:"):
                log.warning("remote engine: TLS certificates of %s are not verified (engine.remote_tls_verify)",
                            settings.server)  # fmt: skip
            verify: bool | ssl.SSLContext = settings.tls_verify
            if settings.tls_verify and settings.ca_file:
                verify = ssl.create_default_context(cafile=settings.ca_file)
            headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
            self._http = httpx.AsyncClient(
                headers=headers,
                verify=verify,
                timeout=httpx.Timeout(
                    None,
                    connect=settings.connect_timeout_s,
                    write=settings.connect_timeout_s,
                    pool=settings.connect_timeout_s,
                ),  # fmt: skip
                trust_env=False,  # no proxy from the environment: the server is on the home network
                follow_redirects=False,
                # a connection per request: a pooled one to a server that has since restarted fails the next story's
                # request, and an open connection then always means a story being streamed
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._http

    async def _raise_for_status(self, response) -> None:
        if response.status_code < 400:
            return
        body = await _read_bounded(response, ERROR_BODY_BYTES)
        status = response.status_code
        what = {401: "the server refused the API key", 403: "the server refused the API key",
                404: f"no such model or endpoint (model {self.settings.model or '(default)'!r})"}.get(
            status, "the server failed")  # fmt: skip
        detail = body.decode("utf-8", "replace").replace("\n", " ").strip()
        raise RemoteError(f"HTTP {status} from {self.settings.server}: {what}" + (f" ({detail})" if detail else ""),
                          status=status)  # fmt: skip

    def _take_id(self) -> int:
        request_id, self._next_id = self._next_id, self._next_id + 1
        return request_id


def _model_ids(content: bytes) -> list[str]:
    try:
        data = json.loads(content)
        return [str(m["id"]) for m in data.get("data", []) if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError, TypeError):
        raise RemoteError("the server's /v1/models answer is not the OpenAI API's JSON") from None


def _check_event_stream(response, server: str) -> None:
    kind = response.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        raise RemoteError(f"{server} answered {kind or 'no content type'}, not an event stream")


async def _read_bounded(response, limit_bytes: int) -> bytes:
    body = b""
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) >= limit_bytes:
                break
    except Exception:  # what matters is the status; the body is only quoted
        pass
    return body[:limit_bytes]


async def _close_quietly(response) -> None:
    try:
        await asyncio.wait_for(response.aclose(), 1.0)
    except Exception:  # noqa: BLE001 - a stream that cannot even close has nothing left to say
        pass


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream's lines (CR, LF or CRLF), each at most MAX_LINE_BYTES; httpx's aiter_lines would buffer a
    never-ending line whole."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while True:
            cut = min((i for i in (buffer.find(b"\n"), buffer.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            line = bytes(buffer[:cut])
            skip = 2 if buffer[cut : cut + 2] == b"\r\n" else 1
            if cut + 1 == len(buffer) and buffer[cut : cut + 1] == b"\r":
                break  # a CR at the end: its LF may be in the next chunk
            del buffer[: cut + skip]
            yield line
        if len(buffer) > MAX_LINE_BYTES:
            raise RemoteError(f"the server sent a line over {MAX_LINE_BYTES} bytes")
    if buffer:
        yield bytes(buffer.rstrip(b"\r"))


async def _sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The data of each server-sent event (the data lines joined, as the SSE format says); comments, event names,
    ids and retry hints are skipped."""
    data: list[bytes] = []
    size = 0
    async for line in _lines(chunks):
        if not line:
            if data:
                yield _decode(b"\n".join(data))
                data, size = [], 0
            continue
        name, _, value = line.partition(b":")
        if name != b"data":
            continue
        value = value[1:] if value.startswith(b" ") else value
        size += len(value)
        if size > MAX_EVENT_BYTES:
            raise RemoteError(f"the server sent an event over {MAX_EVENT_BYTES} bytes")
        data.append(value)
    if data:
        yield _decode(b"\n".join(data))


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteError("the server sent an event that is not UTF-8") from None


async def _next_event_with_text(events: AsyncIterator[str]) -> str | None:
    """The next event that carries text, a finish or the end marker (what resets a token deadline); None at the end
    of the stream. Events that carry nothing (a role, keep-alive) do not reset it."""
    async for data in events:
        if data == "[DONE]":
            return data
        text, finish, usage = _parse_chunk(data, "the server")
        if text or finish or usage:
            return data
    return None


def _parse_chunk(data: str, server: str) -> tuple[str, str, int]:
    """(text, finish_reason, prompt tokens) of one streamed chunk of either API; RemoteError for anything else."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise RemoteError(f"{server} sent malformed event data: {data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise RemoteError(f"{server} sent event data that is not a JSON object: {data[:80]!r}")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise RemoteError(f"{server} reported an error mid-stream: {str(message)[:200]}")
    usage = chunk.get("usage")
    prompt_tokens = usage.get("prompt_tokens", 0) if isinstance(usage, dict) else 0
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise RemoteError(f"{server} sent a chunk without choices: {data[:80]!r}")
    if not choices:
        return "", "", int(prompt_tokens or 0)  # a usage-only chunk
    choice = choices[0]
    if not isinstance(choice, dict):
        raise RemoteError(f"{server} sent a malformed choice: {data[:80]!r}")
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    if text is not None and not isinstance(text, str):
        raise RemoteError(f"{server} sent text that is not a string: {data[:80]!r}")
    return text or "", str(choice.get("finish_reason") or ""), int(prompt_tokens or 0)


def _stop_reason(finish: str) -> p.StopReason:
    if finish == "length":
        return p.StopReason.LENGTH
    return p.StopReason.EOS if finish == "stop" else p.StopReason.STOP


def _describe_http_error(server: str, error: Exception) -> str:
    """A connection failure in words: refused, timed out, TLS, reset."""
    name = type(error).__name__
    cause = error.__cause__ or error.__context__
    detail = str(error) or (str(cause) if cause else "")
    if name == "ConnectError":
        return f"cannot connect to {server}: {detail or 'refused'}"
    if name == "ConnectTimeout":
        return f"cannot connect to {server}: no answer to the connection"
    if name in ("RemoteProtocolError", "ReadError"):
        return f"{server} broke the connection mid-answer ({detail or name})"
    return f"{server}: {name}: {detail}"
