"""The engine protocol: frames parse or are rejected with a reason; the real llama.cpp engine honours it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import replace

import pytest

from engines import protocol as p
from engines.client import EngineClient, EngineError, EngineExited, describe_exit
from tests.conftest import PYTHON

# --- frames, no engine -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        p.Generate(id=1, prompt="Once upon a time", max_tokens=8, stop=("<",), seed=7),
        p.Cancel(id=3),
        p.Shutdown(),
        p.Ready(engine="llama.cpp", model="m.gguf", context_tokens=512, load_ms=1.5),
        p.Token(id=1, text=" über 🐉"),
        p.Done(id=1, reason=p.StopReason.LENGTH, tokens=8, prompt_tokens=4, first_token_ms=1.0, total_ms=9.0),
        p.Error(code=p.ErrorCode.BAD_REQUEST, message="no", id=2),
    ],
)
def test_every_frame_survives_a_round_trip(frame):
    line = p.encode(frame)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.decode(line) == frame


MALFORMED = [
    (b"not json\n", "not JSON"),
    (b"[1, 2]\n", "expected an object"),
    (b'{"type": "cancel", "id": 1}\n', "protocol version None"),
    (b'{"v": 2, "type": "cancel", "id": 1}\n', "protocol version 2"),
    (b'{"v": 1, "type": "launch"}\n', "unknown frame type 'launch'"),
    (b'{"v": 1}\n', "unknown frame type None"),
    (b'{"v": 1, "type": "cancel"}\n', "missing field 'id'"),
    (b'{"v": 1, "type": "cancel", "id": "1"}\n', "id is '1', expected int"),
    (b'{"v": 1, "type": "cancel", "id": true}\n', "id is True, expected int"),
    (b'{"v": 1, "type": "cancel", "id": -5}\n', "id is -5"),
    (b'{"v": 1, "type": "cancel", "id": 1, "extra": 0}\n', "unknown field(s) ['extra']"),
    (b'{"v": 1, "type": "generate", "id": 1, "prompt": ""}\n', "prompt is empty"),
    (b'{"v": 1, "type": "generate", "id": 1, "prompt": "x", "max_tokens": 0}\n', "max_tokens is 0"),
    (b'{"v": 1, "type": "generate", "id": 1, "prompt": "x", "temperature": NaN}\n', "NaN"),
    (b'{"v": 1, "type": "generate", "id": 1, "prompt": "x", "top_p": 1.5}\n', "top_p is 1.5"),
    (b'{"v": 1, "type": "generate", "id": 1, "prompt": "x", "stop": "<"}\n', "stop is '<'"),
    (b'{"v": 1, "type": "generate", "id": 1, "prompt": "x", "stop": [""]}\n', "stop strings must be"),
    (
        b'{"v": 1, "type": "done", "id": 1, "reason": "tired", "tokens": 1, "prompt_tokens": 1, '
        b'"first_token_ms": 1, "total_ms": 1}\n',
        "reason is 'tired'",
    ),
    (b"\xff\xfe{}\n", "not UTF-8"),
    (b'{"v": 1, "type": "token", "id": 1, "text": "' + b"a" * p.MAX_FRAME_BYTES + b'"}\n', "at most"),
]


@pytest.mark.parametrize("line,reason", MALFORMED, ids=[m[1] for m in MALFORMED])
def test_a_malformed_frame_is_rejected_with_its_reason(line, reason):
    with pytest.raises(p.ProtocolError) as e:
        p.decode(line)
    assert reason in str(e.value)


def test_an_oversized_frame_is_refused_on_encode():
    with pytest.raises(p.ProtocolError, match="at most"):
        p.encode(p.Token(id=1, text="x" * p.MAX_FRAME_BYTES))


def test_a_typed_request_becomes_the_generate_frame_the_document_shows():
    request = p.Request(prompt="Once upon a time", max_tokens=8, seed=7, stop=("<",), special=True)
    frame = p.Generate.of(request, 4)
    line = p.encode(frame)
    assert line.startswith(b'{"v":1,"type":"generate","id":4,"prompt":"Once upon a time","max_tokens":8,')
    assert json.loads(line) == {
        "v": 1, "type": "generate", "id": 4, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.8,
        "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.0, "seed": 7, "stop": ["<"], "special": True,
    }  # fmt: skip
    decoded = p.decode(line)
    assert decoded == frame and decoded.request == request


def test_a_request_is_checked_where_it_is_made_and_cannot_change():
    with pytest.raises(p.ProtocolError, match="max_tokens is 0"):
        p.Request(prompt="x", max_tokens=0)
    with pytest.raises(p.ProtocolError, match="repeat_penalty is 9"):
        p.Request(prompt="x", repeat_penalty=9)
    with pytest.raises(p.ProtocolError, match="id is -2"):
        p.Generate.of(p.Request(prompt="x"), -2)
    request = p.Request(prompt="x")
    with pytest.raises(AttributeError):
        request.prompt = "y"  # frozen
    assert not hasattr(request, "__dict__")  # slots: no stray fields


def test_exit_statuses_are_decoded_into_words():
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL, possibly out of memory"
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe_exit(65) == "exited with status 65 (bad model)"
    assert describe_exit(3) == "exited with status 3"


# --- the real llama.cpp engine ---------------------------------------------------------------------


def worker_argv(model: str, context: int = 512) -> list[str]:
    return [PYTHON, "-m", "engines.llamacpp_worker", "--model", model, "--threads", "2", "--context", str(context)]


@contextlib.contextmanager
def raw_worker(model: str):
    """The engine as a bare process, for tests that write and read frames by hand; killed afterwards."""
    proc = subprocess.Popen(
        worker_argv(model), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


STORY = p.Request(
    prompt="Once upon a time, there was a dragon who loved tea.", seed=3, temperature=0.8, repeat_penalty=1.2
)


def test_the_engine_streams_tokens_then_done(default_model):
    async def go():
        engine = EngineClient(worker_argv(default_model))
        ready = await engine.start(60)
        frames = [
            f
            async for f in engine.generate(replace(STORY, max_tokens=24), first_token_timeout_s=30, token_timeout_s=10)
        ]
        await engine.stop()
        return ready, frames

    ready, frames = run(go())
    assert ready.engine == "llama.cpp" and ready.context_tokens == 512
    *tokens, done = frames
    assert all(isinstance(t, p.Token) for t in tokens) and isinstance(done, p.Done)
    assert done.tokens == 24 and done.reason is p.StopReason.LENGTH
    assert len("".join(t.text for t in tokens).split()) >= 5
    assert done.first_token_ms > 0 and done.total_ms >= done.first_token_ms


@contextlib.contextmanager
def cpu_load(processes: int = 2):
    """Other processes spinning on every core, as on a busy machine."""
    spinners = [subprocess.Popen([PYTHON, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


SEEDED = [  # the same opening words as STORY: the engine's cache of one matches part of the other
    replace(STORY, max_tokens=16),
    replace(STORY, prompt="Once upon a time, there was a robot who could not sleep.", seed=11, max_tokens=16),
    replace(STORY, prompt="Once upon a time, there was a dragon who loved tea. One day", seed=5, max_tokens=16),
]


def test_the_same_seed_gives_the_same_story(default_model):
    """A favourite story is replayed by its seed: each request gives the same text in a fresh engine, in one
    that told other stories first (sharing words with it, or the very same story), and on a loaded machine."""

    async def tell(engine: EngineClient, request: p.Request) -> str:
        frames = [f async for f in engine.generate(request, first_token_timeout_s=60, token_timeout_s=30)]
        return "".join(f.text for f in frames if isinstance(f, p.Token))

    async def stories(*requests: p.Request, fresh_engine_each: bool = False) -> list[str]:
        texts, engine = [], None
        for request in requests:
            if engine is None:
                engine = EngineClient(worker_argv(default_model))
                await engine.start(120)
            texts.append(await tell(engine, request))
            if fresh_engine_each:
                await engine.stop()
                engine = None
        if engine is not None:
            await engine.stop()
        return texts

    def run_long(coro):
        return asyncio.run(asyncio.wait_for(coro, 600))  # a loaded 2-core machine is slow, not wrong

    fresh = run_long(stories(*SEEDED, fresh_engine_each=True))
    assert all(fresh), fresh
    in_turn = run_long(stories(*SEEDED, *reversed(SEEDED)))
    with cpu_load():
        loaded = run_long(stories(SEEDED[0], SEEDED[1], SEEDED[0]))
    for what, got, want in (
        ("one after another", in_turn, [*fresh, *reversed(fresh)]),
        ("with both cores busy", loaded, [fresh[0], fresh[1], fresh[0]]),
    ):
        differ = [(i, w, text) for i, (w, text) in enumerate(zip(want, got, strict=True)) if w != text]
        assert not differ, f"{what}: (request number, a fresh engine's story, this one) that differ: {differ}"


def test_cancel_stops_generation_within_200_ms(default_model):
    """The bound is the behaviour: a press on the button must silence the engine at once."""
    with raw_worker(default_model) as proc:
        assert json.loads(proc.stdout.readline())["type"] == "ready"
        proc.stdin.write(p.encode(p.Generate(id=9, prompt=STORY.prompt, max_tokens=2000, seed=1)))
        proc.stdin.flush()
        for _ in range(5):  # let it get going
            assert p.decode(proc.stdout.readline()).TYPE == "token"
        sent = time.monotonic()
        proc.stdin.write(p.encode(p.Cancel(id=9)))
        proc.stdin.flush()
        while (frame := p.decode(proc.stdout.readline())).TYPE == "token":
            pass
        elapsed = time.monotonic() - sent
        assert frame == p.Done(
            id=9,
            reason=p.StopReason.CANCELLED,
            tokens=frame.tokens,
            prompt_tokens=frame.prompt_tokens,
            first_token_ms=frame.first_token_ms,
            total_ms=frame.total_ms,
        )
        assert frame.tokens < 2000
        assert elapsed < 0.2, f"cancel took {elapsed * 1000:.0f} ms"


def test_malformed_frames_get_error_frames_and_the_engine_keeps_serving(default_model):
    with raw_worker(default_model) as proc:
        assert json.loads(proc.stdout.readline())["type"] == "ready"
        garbage = [
            b"hello\n",
            b'{"v":1,"type":"cancel"}\n',
            b"\x00\xff\n",
            b"x" * (p.MAX_FRAME_BYTES + 10) + b"\n",
            b'{"v":1,"type":"ready","engine":"e","model":"m","context_tokens":1,"load_ms":1}\n',
        ]
        for line in garbage:
            proc.stdin.write(line)
        proc.stdin.write(p.encode(p.Generate(id=4, prompt="The cat", max_tokens=3)))
        proc.stdin.flush()
        errors = [p.decode(proc.stdout.readline()) for _ in garbage]
        assert all(isinstance(e, p.Error) and e.code is p.ErrorCode.PROTOCOL for e in errors), errors
        assert "longer than" in errors[3].message and "not a request" in errors[4].message
        frames = []
        while not isinstance(frame := p.decode(proc.stdout.readline()), p.Done):
            frames.append(frame)
        assert frame.id == 4 and frame.tokens == 3


def test_a_second_generate_while_busy_is_refused(default_model):
    with raw_worker(default_model) as proc:
        proc.stdout.readline()
        proc.stdin.write(p.encode(p.Generate(id=1, prompt="The dog", max_tokens=200)))
        proc.stdin.write(p.encode(p.Generate(id=2, prompt="The dog", max_tokens=2)))
        proc.stdin.flush()
        seen = []
        while not (isinstance(frame := p.decode(proc.stdout.readline()), p.Done)):
            seen.append(frame)
        busy = [f for f in seen if isinstance(f, p.Error)]
        assert busy and busy[0].code is p.ErrorCode.BUSY and busy[0].id == 2
        assert frame.id == 1


def test_a_prompt_longer_than_the_context_is_a_bad_request(default_model):
    async def go():
        engine = EngineClient(worker_argv(default_model, context=64))
        await engine.start(60)
        try:
            with pytest.raises(EngineError) as e:
                async for _ in engine.generate(
                    p.Request(prompt="word " * 200, max_tokens=4), first_token_timeout_s=30, token_timeout_s=10
                ):
                    pass
            # the engine is still there for the next request
            frames = [
                f
                async for f in engine.generate(
                    p.Request(prompt="The", max_tokens=2), first_token_timeout_s=30, token_timeout_s=10
                )
            ]
            return e.value, frames
        finally:
            await engine.stop()

    error, frames = run(go())
    assert error.code is p.ErrorCode.BAD_REQUEST and "context holds 64" in error.message
    assert isinstance(frames[-1], p.Done)


@pytest.mark.parametrize(
    "content,code,words",
    [
        (None, p.ExitCode.MODEL_MISSING, "No such file"),
        (b"PK\x03\x04 this is a zip archive, not a model", p.ExitCode.BAD_MODEL, "not a GGUF file"),
        (b"GGUF\x03\x00\x00\x00" + b"\xff" * 16, p.ExitCode.BAD_MODEL, "not a sane model"),
        (b"GGUF", p.ExitCode.BAD_MODEL, "too small for a GGUF file"),
    ],
)
def test_a_bad_model_exits_with_its_own_code_before_loading(tmp_path, content, code, words):
    model = tmp_path / "model.gguf"
    if content is not None:
        model.write_bytes(content)

    async def go():
        engine = EngineClient(worker_argv(str(model)))
        with pytest.raises(EngineExited) as e:
            await engine.start(30)
        return e.value

    exited = run(go())
    assert exited.returncode == code
    assert exited.is_permanent
    assert words in str(exited)


def test_a_truncated_model_is_refused(tmp_path, default_model):
    model = tmp_path / "cut.gguf"
    with open(default_model, "rb") as f:
        model.write_bytes(f.read(50_000_000))
    proc = subprocess.run(worker_argv(str(model)), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == p.ExitCode.BAD_MODEL
    assert "truncated" in proc.stderr and str(model) in proc.stderr
    assert proc.stdout == ""


def test_a_killed_engine_is_reported_in_words(default_model):
    async def go():
        engine = EngineClient(worker_argv(default_model))
        await engine.start(60)
        with pytest.raises(EngineExited) as e:
            async for _ in engine.generate(
                replace(STORY, max_tokens=500), first_token_timeout_s=30, token_timeout_s=10
            ):
                os.kill(engine.pid, signal.SIGKILL)
        return e.value

    exited = run(go())
    assert exited.returncode == -signal.SIGKILL
    assert "killed by SIGKILL, possibly out of memory" in str(exited)
    assert not exited.is_permanent
