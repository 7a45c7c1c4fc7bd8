"""Keeps the configured engine process available: checks the model, starts the engine, starts it again after it died."""

from __future__ import annotations

import logging
import os
import signal
import sys

from engines.client import EngineClient, EngineError, EngineExited
from engines.gguf import GgufError, GgufInfo, check_gguf
from engines.models import ModelError, ensure_default_model
from robot.config import EngineConfig

log = logging.getLogger(__name__)


class EngineUnavailable(RuntimeError):
    """No engine can be had. is_permanent: the model or the arguments are bad; retrying cannot help."""

    def __init__(self, message: str, *, is_permanent: bool) -> None:
        super().__init__(message)
        self.is_permanent = is_permanent


class EngineHost:
    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._client: EngineClient | None = None
        self.model_path: str | None = None
        self.model_info: GgufInfo | None = None

    def resolve_model(self) -> str:
        """The model file, checked before any engine is spawned for it."""
        try:
            path = self._config.model or str(ensure_default_model())
            self.model_info = check_gguf(path)
        except ModelError as e:
            raise EngineUnavailable(str(e), is_permanent=True) from None
        except OSError as e:
            raise EngineUnavailable(f"model {e.filename}: {e.strerror}", is_permanent=True) from None
        except GgufError as e:
            raise EngineUnavailable(f"model rejected: {e}", is_permanent=True) from None
        return path

    def argv(self, model_path: str) -> list[str]:
        c = self._config
        return [
            sys.executable,
            "-m",
            "engines.llamacpp_worker",
            "--model",
            model_path,
            "--threads",
            str(c.threads),
            "--context",
            str(c.context_tokens),
        ]

    @property
    def engine_pid(self) -> int | None:
        return self._client.pid if self._client and self._client.is_running else None

    async def get(self) -> EngineClient:
        """A running engine, started (or started again) when needed."""
        if self._client is not None and self._client.is_running:
            return self._client
        if self._client is not None:
            await self._client.stop(0.5)
            log.warning("the engine had ended; starting it again")
        self.model_path = self.model_path or self.resolve_model()
        client = EngineClient(self.argv(self.model_path), name="llama.cpp")
        try:
            await client.start(self._config.load_timeout_s)
        except EngineExited as e:
            raise EngineUnavailable(str(e), is_permanent=e.is_permanent) from None
        except EngineError as e:
            raise EngineUnavailable(str(e), is_permanent=False) from None
        client.chat_template = self.chat_template()
        self._client = client
        return client

    def chat_template(self) -> str:
        """The template to wrap prompts in: the model's own for instruct models, "" for completion."""
        style = self._config.prompt_style
        template = self.model_info.chat_template if self.model_info else ""
        if style == "chat" and not template:
            log.warning(
                "engine.prompt_style is chat but %s carries no chat template; using completion", self.model_path
            )
        return template if style in ("auto", "chat") else ""

    def kill_now(self) -> None:
        """SIGKILL the engine's process group, for when a polite stop has stalled."""
        if self._client is not None and self._client.pid is not None:
            try:
                os.killpg(self._client.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    async def close(self) -> None:
        if self._client is not None:
            await self._client.stop()
            self._client = None
