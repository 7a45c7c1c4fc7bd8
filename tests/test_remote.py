"""The remote engine (engines/remote.py) and its failover to the local engine (robot/remote_host.py), against a
real OpenAI-compatible server on loopback (llama-cpp-python's, with the default model SmolLM2-135M-Instruct) and,
for the answers it cannot be made to give, small real HTTP servers of our own (tests/remote_servers.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import resource
import shutil
import signal
import subprocess
import time

import pytest

from engines import protocol as p
from engines.backends.remote import remote_settings
from engines.remote import ROLE_TEMPLATE, RemoteClient, RemoteError, RemoteSettings, Secret
from robot.plumbing.config import load_config
from robot.remote_host import FailoverEngine, FailoverHost
from robot.story.prompt import build_prompt, chat_prefix
from tests.conftest import need
from tests.remote_servers import API_KEY, FakeServer, LlamaServer, established_on, free_port

OPENING = "Once upon a time, there was a dragon who loved tea."
INSTRUCTION = "Tell a gentle story for a young child about a dragon who loved tea."
CANCEL_BOUND_S = 0.2  # the bound: cancel closes the stream within 200 ms
# from the server's failure to the local engine's first token: the local engine reads the story so far first (a few
# seconds on a loaded 2-core host: scripts/bench_remote.py --only failover); what the child hears is bounded in
# tests/test_remote_daemon.py (speech runs behind generation, so it is shorter)
FAILOVER_PAUSE_BOUND_S = 20.0


def story_request(max_tokens: int = 40, **changes) -> dict:
    return {
        "prompt": chat_prefix(ROLE_TEMPLATE, build_prompt("a dragon who loves tea")) + OPENING,
        "special": True,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 7,
        "stop": ("<", "http"),
        **changes,
    }


def engine_config(url: str, *overrides: str):
    return load_config(
        overrides=[
            "engine.backend=remote",
            f"engine.remote_url={url}",
            "engine.remote_model=smollm2",
            *overrides,
        ],
        use_system=False,
    ).engine


def settings(url: str, **changes) -> RemoteSettings:
    values = {"base_url": url, "model": "smollm2", "api_key": Secret(API_KEY), "first_token_timeout_s": 60.0,
              "token_timeout_s": 30.0}  # fmt: skip
    values.update(changes)
    return RemoteSettings(**values)


async def collect(frames) -> tuple[str, p.Done]:
    text, done = "", None
    async for frame in frames:
        if isinstance(frame, p.Token):
            text += frame.text
        else:
            done = frame
    return text, done


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    need(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python is not installed (setup.sh --test)")
    need(importlib.util.find_spec("uvicorn") is not None, "llama-cpp-python[server] is not installed (setup.sh --test)")
    server = LlamaServer(log_dir=tmp_path_factory.mktemp("llama-server")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path):
    """A server of its own, for the tests that kill or stop it."""
    need(importlib.util.find_spec("uvicorn") is not None, "llama-cpp-python[server] is not installed (setup.sh --test)")
    server = LlamaServer(log_dir=tmp_path).start()
    yield server
    server.stop()


# --- streaming from the real server -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_story_streams_from_the_real_server(llama_server, api):
    async def main():
        client = RemoteClient(settings(llama_server.url, api=api))
        ready = await client.start()
        assert "smollm2" in ready.model and client.is_up
        text, done = await collect(client.generate(story_request(30)))
        await client.stop()
        return text, done

    text, done = asyncio.run(main())
    assert done is not None and done.tokens > 3, done
    assert len(text.split()) >= 3
    assert done.reason in (p.StopReason.LENGTH, p.StopReason.EOS)
    assert done.tokens <= 30


@pytest.mark.slow
def test_cancel_closes_the_stream_within_200_ms_and_the_server_sees_it(llama_server):
    """The story's task is cancelled mid-stream (as a child's "stop" does): the server's side of the connection
    leaves ESTABLISHED (it has the client's FIN) within 200 ms."""

    async def main() -> float:
        client = RemoteClient(settings(llama_server.url, api="completions"))
        await client.start()
        got = asyncio.Event()
        tokens = 0

        async def story():
            nonlocal tokens
            async for _frame in client.generate(story_request(400)):
                tokens += 1
                if tokens >= 3:
                    got.set()

        task = asyncio.create_task(story())
        await asyncio.wait_for(got.wait(), 120)
        assert established_on(llama_server.port) >= 1, "the stream is not open while tokens arrive"
        cancelled_at = time.monotonic()
        task.cancel()
        while established_on(llama_server.port) and time.monotonic() - cancelled_at < 5:
            await asyncio.sleep(0.002)
        closed_s = time.monotonic() - cancelled_at
        await asyncio.gather(task, return_exceptions=True)
        await client.stop()
        return closed_s

    closed_s = asyncio.run(main())
    assert closed_s < CANCEL_BOUND_S, f"the server saw the stream closed {closed_s * 1000:.0f} ms after the cancel"


@pytest.mark.slow
def test_a_wrong_key_is_one_clear_401_line_and_the_key_is_never_logged(llama_server, caplog, tmp_path):
    wrong = "sk-wrong-key-5f2e9a"
    key_file = tmp_path / "key"
    key_file.write_text(wrong + "\n")
    config = engine_config(llama_server.url, f"engine.remote_api_key_file={key_file}", "engine.remote_fallback=none")

    async def main():
        host = FailoverHost(config, on_status=lambda problem, what="engine": statuses.append((what, problem)))
        try:
            with pytest.raises(Exception) as caught:
                await host.get()
            return caught.value
        finally:
            await host.close()

    statuses: list[tuple[str, str]] = []
    with caplog.at_level(logging.DEBUG):
        error = asyncio.run(main())
    assert "401" in str(error)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [line for line in lines if "HTTP 401" in line] == [lines[0]] and len(lines) == 1, lines
    everything = caplog.text + repr(statuses) + str(error) + repr(remote_settings(config))
    assert wrong not in everything and API_KEY not in everything
    assert statuses and statuses[-1][0] == "remote engine" and "401" in statuses[-1][1]


def test_the_key_is_sent_as_a_bearer_token_and_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("STORYBOT_TEST_REMOTE_KEY", "sk-env-42")
    with FakeServer("tokens:3") as server:
        config = engine_config(server.url, "engine.remote_api_key_env=STORYBOT_TEST_REMOTE_KEY")

        async def main():
            client = RemoteClient(remote_settings(config))
            await client.start()
            text, done = await collect(client.generate(story_request(10)))
            await client.stop()
            return text, done

        text, done = asyncio.run(main())
    assert text == " word0 word1 word2" and done.tokens == 3
    assert all(h.get("Authorization") == "Bearer sk-env-42" for h in server.headers_seen)
    assert "sk-env-42" not in repr(remote_settings(config))
    body = server.requests[0]
    assert body["stream"] is True and body["model"] == "smollm2" and body["messages"][-1]["role"] == "user"
    assert OPENING in body["messages"][-1]["content"] and INSTRUCTION in body["messages"][-1]["content"]


# --- faults from servers of our own ------------------------------------------------------------------


def _fail_with(behaviour: str, **changes) -> tuple[RemoteError, float, FakeServer]:
    with FakeServer(behaviour) as server:

        async def main():
            client = RemoteClient(settings(server.url, api="completions", **changes))
            await client.start()
            started = time.monotonic()
            with pytest.raises(RemoteError) as caught:
                await collect(client.generate(story_request(20)))
            elapsed = time.monotonic() - started
            assert not client.is_up, "a failed server must be probed before it is used again"
            await client.stop()
            return caught.value, elapsed

        error, elapsed = asyncio.run(main())
    return error, elapsed, server


def test_http_500_is_named_with_its_status():
    error, _, _ = _fail_with("status:500")
    assert error.status == 500 and "HTTP 500" in str(error) and "fake failure 500" in str(error)


def test_http_404_for_the_model_is_named_with_its_status():
    error, _, _ = _fail_with("status:404")
    assert error.status == 404 and "HTTP 404" in str(error) and "smollm2" in str(error)


def test_a_probe_of_a_server_without_the_model_says_so():
    with FakeServer("tokens:3", models=("llama3",)) as server:

        async def main():
            client = RemoteClient(settings(server.url))
            with pytest.raises(RemoteError) as caught:
                await client.start()
            return caught.value

        error = asyncio.run(main())
    assert error.status == 404 and "no model 'smollm2'" in str(error) and "llama3" in str(error)


def test_malformed_event_data_is_an_error_not_a_guess():
    error, _, _ = _fail_with("malformed")
    assert "malformed event data" in str(error)


def test_an_html_page_instead_of_an_event_stream_is_refused():
    error, _, _ = _fail_with("html")
    assert "text/html" in str(error) and "not an event stream" in str(error)


def test_a_never_ending_line_is_cut_off_with_bounded_memory():
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error, elapsed, server = _fail_with("endless")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    assert "a line over 65536 bytes" in str(error)
    assert elapsed < 10
    assert grown_mib < 32, f"the client's peak grew {grown_mib:.0f} MiB reading one line"


def test_a_trickle_of_one_byte_a_second_misses_the_deadline():
    error, elapsed, server = _fail_with("trickle", first_token_timeout_s=2.0, token_timeout_s=1.0)
    assert "no first token within 2 s" in str(error)
    assert 1.5 < elapsed < 4.0, elapsed


def test_a_refused_connection_is_said_in_words():
    port = free_port()  # bound and closed again: nothing listens there

    async def main():
        client = RemoteClient(settings(f"http://127.0.0.1:{port}"))
        with pytest.raises(RemoteError) as caught:
            await client.start()
        return caught.value

    assert "cannot connect to http://127.0.0.1" in str(asyncio.run(main()))


# --- failover to the local engine ---------------------------------------------------------------------


async def _tell_with_failover(host: FailoverHost, fault, *, max_tokens: int = 120) -> dict:
    """Stream one story's request through the host; fault() runs after the 5th token from the server. Returns
    what was seen: the text, the Done frame, and the pause between the last token before the failure and the first
    after it."""
    engine = await host.get()
    assert isinstance(engine, FailoverEngine), "the server is up: the story should use it"
    arrivals: list[float] = []
    text, done = "", None
    async for frame in engine.generate(story_request(max_tokens, temperature=0.8),
                                       first_token_timeout_s=60, token_timeout_s=30):  # fmt: skip
        if isinstance(frame, p.Token):
            arrivals.append(time.monotonic())
            text += frame.text
            if len(arrivals) == 5:
                fault()
        else:
            done = frame
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {"text": text, "done": done, "pause_s": max(gaps[4:]) if len(gaps) > 4 else None, "engine": engine}


def _failover_host(url: str, key_file, *overrides: str) -> tuple[FailoverHost, list]:
    statuses: list[tuple[str, str]] = []
    config = engine_config(url, "engine.remote_api=completions", f"engine.remote_api_key_file={key_file}",
                           "engine.remote_first_token_timeout_s=120", *overrides)  # fmt: skip
    host = FailoverHost(config, on_status=lambda problem, what="engine": statuses.append((what, problem)))
    return host, statuses


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "remote.key"
    path.write_text(API_KEY + "\n")
    return path


@pytest.mark.slow
def test_a_server_killed_mid_story_the_story_goes_on_locally(fresh_server, smollm2_model, key_file):
    host, statuses = _failover_host(fresh_server.url, key_file)

    async def main():
        await host.local.get()  # the fallback is kept warm, as the supervisor does
        try:
            return await _tell_with_failover(host, fresh_server.kill)
        finally:
            await host.close()

    seen = asyncio.run(main())
    assert host.failovers == 1 and seen["engine"].engine == "llama2c"
    assert seen["done"] is not None and seen["done"].tokens > 5, "the local engine did not go on"
    assert len(seen["text"].split()) > 8
    assert seen["pause_s"] < FAILOVER_PAUSE_BOUND_S, f"the story paused {seen['pause_s']:.2f} s at the failover"
    assert any(what == "remote engine" and "cannot connect" in problem or "broke" in problem
               for what, problem in statuses), statuses  # fmt: skip


@pytest.mark.slow
def test_a_server_stopped_mid_stream_misses_the_between_token_deadline(fresh_server, smollm2_model, key_file):
    host, statuses = _failover_host(fresh_server.url, key_file, "engine.remote_token_timeout_s=1.5")

    async def main():
        await host.local.get()
        try:
            return await _tell_with_failover(host, lambda: fresh_server.signal(signal.SIGSTOP))
        finally:
            fresh_server.signal(signal.SIGCONT)
            await host.close()

    seen = asyncio.run(main())
    assert host.failovers == 1
    assert seen["done"].tokens > 5
    assert any("no next token within 1.5 s" in problem for _, problem in statuses), statuses
    assert 1.4 < seen["pause_s"] < 1.5 + FAILOVER_PAUSE_BOUND_S, seen["pause_s"]


@pytest.mark.slow
def test_after_the_server_comes_back_the_next_story_uses_it_again(tmp_path, smollm2_model, key_file):
    need(importlib.util.find_spec("uvicorn") is not None, "llama-cpp-python[server] is not installed (setup.sh --test)")
    server = LlamaServer(log_dir=tmp_path).start()
    host, statuses = _failover_host(server.url, key_file)

    async def main():
        supervise = asyncio.create_task(host.supervise())
        try:
            first = await host.get()
            assert isinstance(first, FailoverEngine)
            server.kill()
            seen = await _tell_with_failover_from(first)
            assert host.failovers == 1 and seen.engine == "llama2c"
            during = await host.get()
            assert not isinstance(during, FailoverEngine), "a story while the server is down must be local"
            assert host.next_engine == "local (llama2c)"
            server.start()
            deadline = time.monotonic() + 60
            while not host.remote.is_up and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            after = await host.get()
            text, done = await collect(after.generate(story_request(12), first_token_timeout_s=60,
                                                      token_timeout_s=30))  # fmt: skip
            return after, text, done
        finally:
            supervise.cancel()
            await asyncio.gather(supervise, return_exceptions=True)
            await host.close()
            server.stop()

    after, text, done = asyncio.run(main())
    assert isinstance(after, FailoverEngine) and after.engine == "remote", "the server answers again: use it"
    assert done.tokens > 0 and text
    assert statuses[-1] == ("remote engine", ""), statuses


async def _tell_with_failover_from(engine: FailoverEngine) -> FailoverEngine:
    await collect(engine.generate(story_request(20), first_token_timeout_s=60, token_timeout_s=30))
    return engine


@pytest.mark.slow
def test_with_no_local_engine_a_failed_server_ends_the_story_resumably(fresh_server, key_file):
    """No fallback: the story ends with the apology and stays resumable (the story session's 'lost' path)."""
    from robot.story.session import StoryPlan, StoryTeller
    from tests.harness import NullSink, RecordingTts, resolved

    config = load_config(
        overrides=["engine.backend=remote", f"engine.remote_url={fresh_server.url}", "engine.remote_model=smollm2",
                   "engine.remote_api=completions", "engine.remote_fallback=none", "engine.max_tokens=200", "engine.remote_first_token_timeout_s=120",
                   f"engine.remote_api_key_file={key_file}"],
        use_system=False,
    )  # fmt: skip

    async def main():
        host = FailoverHost(config.engine, on_status=lambda *a: None)
        engine = await host.get()
        tts = RecordingTts()
        killed = False

        def on_sentence(index, sentence):
            nonlocal killed
            if index == 1 and not killed:
                fresh_server.kill()
                killed = True

        teller = StoryTeller(config, tts, on_sentence)
        plan = StoryPlan(build_prompt("a dragon who loves tea"), 3, 200)
        result = await teller.tell(plan, resolved(engine), resolved(NullSink()), time.monotonic())
        await host.close()
        return result, tts

    result, tts = asyncio.run(main())
    assert result.outcome.startswith("engine failed: remote:"), result.outcome
    assert tts.spoken[-1].startswith("Oh dear, I lost my place in the story")


@pytest.mark.parametrize("status", [500, 404])
def test_an_http_error_mid_story_is_one_log_line_naming_its_status_and_no_key(status, caplog, monkeypatch):
    monkeypatch.setenv("STORYBOT_TEST_REMOTE_KEY", API_KEY)
    with FakeServer(f"status:{status}") as server:
        config = engine_config(server.url, "engine.remote_api_key_env=STORYBOT_TEST_REMOTE_KEY",
                               "engine.remote_fallback=none")  # fmt: skip
        statuses: list[tuple[str, str]] = []

        async def main():
            host = FailoverHost(config, on_status=lambda problem, what="engine": statuses.append((what, problem)))
            try:
                engine = await host.get()
                assert isinstance(engine, FailoverEngine), "the probe answers: the story goes to the server"
                with pytest.raises(RemoteError) as caught:
                    await collect(engine.generate(story_request(10), first_token_timeout_s=10, token_timeout_s=10))
                return caught.value
            finally:
                await host.close()

        with caplog.at_level(logging.DEBUG):
            error = asyncio.run(main())
    assert error.status == status
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and f"HTTP {status}" in lines[0], lines
    assert API_KEY not in caplog.text + repr(statuses) + str(error)
    assert server.headers_seen[-1]["Authorization"] == f"Bearer {API_KEY}"
    assert statuses[-1][0] == "remote engine" and f"HTTP {status}" in statuses[-1][1]


def test_tls_is_verified_by_default_and_a_home_ca_file_is_trusted(tmp_path):
    need(shutil.which("openssl") is not None, "openssl is not installed (to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    with FakeServer("tokens:3", tls=(str(cert), str(key))) as server:

        async def probe(**changes) -> str:
            client = RemoteClient(settings(server.url, **changes))
            try:
                await client.start()
                text, _ = await collect(client.generate(story_request(5)))
                return text
            except RemoteError as e:
                return f"error: {e}"
            finally:
                await client.stop()

        refused = asyncio.run(probe())
        trusted = asyncio.run(probe(ca_file=str(cert)))
        unverified = asyncio.run(probe(tls_verify=False))
    assert refused.startswith("error:") and "CERTIFICATE_VERIFY_FAILED" in refused, refused
    assert trusted == " word0 word1 word2"
    assert unverified == " word0 word1 word2"
