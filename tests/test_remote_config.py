"""The remote engine's configuration (engine.remote_*), its memory plan, and its request shapes: no server."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engines.remote import ROLE_TEMPLATE, RemoteClient, RemoteSettings, Secret, split_roles
from robot.memory.plan import MachineMemory, plan_from_config, read_model_shape
from robot.plumbing.config import ConfigError, check_semantics, load_config
from robot.remote_host import FAILOVER_TAIL_CHARS, continue_request
from robot.story.prompt import build_prompt, chat_prefix


def config(*overrides: str):
    return load_config(overrides=["engine.backend=remote", *overrides], use_system=False)


def problem(*overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        check_semantics(config(*overrides))
    return str(caught.value)


def test_a_remote_engine_needs_an_http_url():
    assert "engine.remote_url: required" in problem()
    assert "not an http:// or https:// URL" in problem("engine.remote_url=ftp://server/")
    assert "not an http:// or https:// URL" in problem("engine.remote_url=192.168.1.2:8080")
    check_semantics(config("engine.remote_url=https://192.168.1.2:8080/v1"))


def test_key_mistakes_name_the_file_or_variable_and_never_the_key(tmp_path, monkeypatch):
    url = "engine.remote_url=http://127.0.0.1:8080"
    missing = tmp_path / "no-such.key"
    assert f"engine.remote_api_key_file: {missing}: No such file or directory" in problem(
        url, f"engine.remote_api_key_file={missing}"
    )
    two = tmp_path / "two.key"
    two.write_text("sk-one sk-two\n")
    message = problem(url, f"engine.remote_api_key_file={two}")
    assert "holds no key (or more than one word)" in message and "sk-one" not in message
    monkeypatch.delenv("STORYBOT_NO_SUCH_KEY", raising=False)
    assert "the environment variable STORYBOT_NO_SUCH_KEY is not set" in problem(
        url, "engine.remote_api_key_env=STORYBOT_NO_SUCH_KEY"
    )
    monkeypatch.setenv("STORYBOT_KEY", "sk-x")
    assert "both set" in problem(url, f"engine.remote_api_key_file={two}", "engine.remote_api_key_env=STORYBOT_KEY")
    assert "expected one of ['none', 'llama2c', 'llama.cpp']" in str(
        pytest.raises(
            ConfigError, load_config, overrides=[url, "engine.remote_fallback=command"], use_system=False
        ).value
    )


def test_secret_settings_do_not_show_the_key():
    settings = RemoteSettings("http://127.0.0.1:1", api_key=Secret("sk-hidden"))
    assert "sk-hidden" not in repr(settings) and "sk-hidden" not in repr(settings.api_key)


MACHINE = MachineMemory("a 512 MB test machine", 512 << 20, 400 << 20, 0, 0, 2)


def test_with_no_local_fallback_the_plan_counts_no_weights():
    plan = plan_from_config(config("engine.remote_url=http://10.0.0.2:8080", "engine.remote_fallback=none"), MACHINE)
    assert plan.primary == "remote" and plan.backend == "remote"
    assert plan.weights_bytes == 0 and plan.kv_cache_bytes == 0
    assert plan.engine_overhead_bytes == 10_293_248  # the HTTP client, measured (engines/backends/remote.py)
    assert "no local weights" in plan.reasons[0]


def test_with_a_local_fallback_the_plan_counts_its_weights(smollm2_model):
    plan = plan_from_config(config("engine.remote_url=http://10.0.0.2:8080"), MACHINE)
    local = plan_from_config(load_config(use_system=False), MACHINE)
    assert plan.primary == "remote" and plan.backend == "llama2c"
    assert plan.weights_bytes == read_model_shape(smollm2_model).file_bytes == local.weights_bytes
    assert plan.daemon_bytes == local.daemon_bytes + 10_293_248
    assert "the fallback's weights are counted" in plan.reasons[0]


def test_the_supervisor_keeps_the_remote_engine_primary(smollm2_model):
    from robot.supervisor import _engine_config

    cfg = config("engine.remote_url=http://10.0.0.2:8080")
    engine = _engine_config(cfg, plan_from_config(cfg, MACHINE))
    assert engine.backend == "remote" and engine.model == smollm2_model


def test_roles_survive_the_template_and_a_local_fallback_gets_the_story_so_far():
    fox = build_prompt("a fox")
    prompt = chat_prefix(ROLE_TEMPLATE, fox) + fox.opening
    roles = split_roles(prompt)
    assert [role for role, _ in roles] == ["user", "assistant"] and roles[1][1] == "Once upon a time, there was a fox."
    assert roles[0][1].startswith("Tell a gentle story for a young child about a fox.")
    fields = {"prompt": prompt, "max_tokens": 50, "special": True, "temperature": 0.5}
    rest = continue_request(fields, " The fox ran.", 4)
    assert rest["prompt"] == "Once upon a time, there was a fox. The fox ran."
    assert rest["max_tokens"] == 46 and not rest["special"] and rest["temperature"] == 0.5
    assert continue_request(fields, "x", 50) is None
    long = continue_request({**fields, "max_tokens": 500}, " The fox ran on and on." * 100, 10)
    assert long["prompt"].startswith("Once upon a time, there was a fox. ")
    assert long["prompt"].endswith("The fox ran on and on.")
    assert len(long["prompt"]) <= len("Once upon a time, there was a fox. ") + FAILOVER_TAIL_CHARS


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_request_bodies_for_both_apis(api):
    client = RemoteClient(RemoteSettings("http://127.0.0.1:1", model="m", api=api))
    from engines import protocol as p

    prompt = chat_prefix(ROLE_TEMPLATE, build_prompt("a fox")) + "Once upon a time."
    path, body = client._body(p.Generate(id=1, prompt=prompt, max_tokens=9, seed=4, stop=("<", "http")))
    json.dumps(body)
    assert body["stream"] is True and body["max_tokens"] == 9 and body["seed"] == 4 and body["model"] == "m"
    assert body["stop"] == ["<", "http"]
    if api == "completions":
        assert path == "/completions" and body["prompt"] == "Once upon a time."
    else:
        assert path == "/chat/completions" and body["messages"][0]["role"] == "user"
        content = body["messages"][0]["content"]
        assert "Tell a gentle story for a young child about a fox." in content and "Once upon a time." in content


def test_dataclass_requests_are_read_like_dicts():
    from engines.remote import request_fields

    @dataclasses.dataclass
    class Request:
        prompt: str
        max_tokens: int

    assert request_fields(Request("x", 3)) == request_fields({"prompt": "x", "max_tokens": 3})


def test_doctor_shows_the_server_its_latency_and_the_next_stories_engine():
    from robot.doctor import build_report, format_report
    from tests.remote_servers import FakeServer, free_port

    with FakeServer("tokens:1") as server:
        report, _ = build_report(config(f"engine.remote_url={server.url}", "engine.remote_model=smollm2"))
    remote = report["remote"]
    assert remote["is_up"] and remote["latency_ms"] > 0 and remote["next_engine"] == f"remote ({server.url})"
    text = format_report(report)
    assert f"remote engine: {server.url} (chat API, model smollm2): answers in" in text
    assert not any("remote engine" in d for d in report["degraded"])

    down = f"http://127.0.0.1:{free_port()}"
    report, _ = build_report(config(f"engine.remote_url={down}", "engine.remote_fallback=none"))
    assert not report["remote"]["is_up"] and report["remote"]["latency_ms"] is None
    assert any(d.startswith(f"remote engine: cannot connect to {down}") and "a canned story" in d
               for d in report["degraded"]), report["degraded"]  # fmt: skip
    assert "DOWN: cannot connect" in format_report(report)
