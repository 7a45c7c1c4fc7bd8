"""An OpenAI-compatible model server on the home network (engines/remote.py), with a local engine as its fallback
(engine.remote_fallback). It runs in the daemon: no process, no model file, and no weights of its own; the memory
plan counts the HTTP client and, when there is one, the fallback's model (docs/remote-engine.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from engines.registry import Backend, CheckedModel, EngineSettings, ModelRejected, ModelShape

FALLBACKS = ("none", "llama2c", "llama.cpp")


class Remote(Backend):
    name = "remote"
    reads_model_files = False
    # httpx 0.28 imported and one AsyncClient streaming a story from llama-cpp-python's server: a fresh Python's
    # VmHWM grew from 24.7 to 34.5 MiB, 9.8 MiB over what the daemon has anyway (asyncio, ssl, the engine client,
    # jinja2) (scripts/bench_remote.py --only footprint; x86-64 dev host, 2026-12-01)
    footprint_defaults = {"remote_client_bytes": 10_293_248}

    def settings_problem(self, settings: EngineSettings) -> str:
        url = settings.remote_url
        if not url:
            return (
                'engine.remote_url: required when engine.backend = "remote" (the server, e.g. http://192.168.1.20:8080)'
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"engine.remote_url: {url!r} is not an http:// or https:// URL with a host"
        if settings.remote_fallback not in FALLBACKS:
            return f"engine.remote_fallback is {settings.remote_fallback!r}, expected one of {list(FALLBACKS)}"
        try:
            read_api_key(settings)
        except ModelRejected as e:
            return str(e)
        if settings.remote_ca_file and not os.path.isfile(settings.remote_ca_file):
            return f"engine.remote_ca_file: {settings.remote_ca_file}: no such file"
        return ""

    def check_model(self, settings: EngineSettings) -> CheckedModel:
        from engines.remote import ROLE_TEMPLATE

        problem = self.settings_problem(settings)
        if problem:
            raise ModelRejected(problem)
        return CheckedModel(settings.remote_url, chat_template=ROLE_TEMPLATE)

    def argv(self, settings: EngineSettings, model: CheckedModel) -> list[str]:
        raise ModelRejected("engine.backend remote runs in the daemon (engines/remote.py): it has no command line")

    def overhead_bytes(self, shape: ModelShape, figures: Mapping[str, int], batched_prefill: bool = True) -> int:
        return figures["remote_client_bytes"]

    def shape(self) -> ModelShape:
        """What the memory plan counts when there is no local fallback: no weights, no KV cache, the HTTP client."""
        return ModelShape(
            name="a model on the server (no local weights)",
            path="",
            backend=self.name,
            file_bytes=0,
            layers=0,
            kv_dim=0,
            max_context_tokens=1 << 20,
        )


def read_api_key(settings: EngineSettings) -> str:
    """The API key from engine.remote_api_key_file or the variable engine.remote_api_key_env names ("" for none).
    Errors name the file or the variable, never the key."""
    path, variable = settings.remote_api_key_file, settings.remote_api_key_env
    if path and variable:
        raise ModelRejected("engine.remote_api_key_file and engine.remote_api_key_env are both set: use one")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                key = f.read(4096).strip()
        except OSError as e:
            raise ModelRejected(f"engine.remote_api_key_file: {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ModelRejected(f"engine.remote_api_key_file: {path} is not UTF-8 text") from None
        if not key or any(ch.isspace() for ch in key):
            raise ModelRejected(f"engine.remote_api_key_file: {path} holds no key (or more than one word)")
        return key
    if variable:
        key = os.environ.get(variable, "").strip()
        if not key:
            raise ModelRejected(f"engine.remote_api_key_env: the environment variable {variable} is not set")
        return key
    return ""


def remote_settings(settings: EngineSettings):
    """The remote client's settings from engine.*; ModelRejected for a bad key file or variable."""
    from engines.remote import RemoteSettings, Secret

    return RemoteSettings(
        base_url=settings.remote_url,
        model=settings.remote_model,
        api=settings.remote_api,
        api_key=Secret(read_api_key(settings)),
        tls_verify=settings.remote_tls_verify,
        ca_file=settings.remote_ca_file,
        connect_timeout_s=settings.remote_connect_timeout_s,
        first_token_timeout_s=settings.remote_first_token_timeout_s,
        token_timeout_s=settings.remote_token_timeout_s,
        context_tokens=settings.context_tokens,
    )


BACKEND = Remote()
