"""Keeps the configured engine process available: checks the model before any spawn, starts the engine, and
starts it again after it died, with capped exponential backoff; a permanent failure (a bad model, a bad command
line) stops the retries. Which engine, its model check and its command line are its back end's (engines/registry.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace

from engines import registry
from engines.client import EngineClient, EngineError, EngineExited, describe_exit
from engines.protocol import ExitCode
from robot.plumbing.backoff import Backoff
from robot.plumbing.config import EngineConfig

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (5.0, 10.0, 20.0, 40.0, 60.0, 120.0)  # a start costs a model load; systemd's RestartSec is 5 s
HEALTHY_AFTER_S = 60.0  # an engine that lived this long resets the backoff
MAX_WAIT_IN_STORY_S = 3.0  # a story waits this long for a restart; beyond it, a canned story


class EngineUnavailable(RuntimeError):
    """No engine can be had. is_permanent: the model or the arguments are bad; retrying cannot help."""

    def __init__(self, message: str, *, is_permanent: bool) -> None:
        super().__init__(message)
        self.is_permanent = is_permanent


class EngineHost:
    def __init__(
        self,
        config: EngineConfig,
        *,
        on_status: Callable[[str], None] = lambda problem: None,
        smaller_context_tokens: int = 0,
    ) -> None:
        """on_status(problem): called with what keeps the engine from working, "" when it works again.
        smaller_context_tokens: after an out-of-memory death the engine starts again with this, if smaller."""
        self._config = config
        self.on_status = on_status
        self._client: EngineClient | None = None
        self._lock = asyncio.Lock()  # one start at a time: the warm-up, the supervisor and a story may race
        self._backoff = Backoff(RESTART_BACKOFF_S, healthy_after_s=HEALTHY_AFTER_S)
        self._next_start_at = 0.0
        self._started_at = 0.0
        self._permanent: EngineUnavailable | None = None
        self._held: str = ""  # why the memory guard keeps the engine stopped, "" when it does not
        self._is_closing = False
        self._is_restart_pending = False  # the context changed: start the engine again before the next story
        self.model_path: str | None = None
        self._model: registry.CheckedModel | None = None  # the model as its back end checked it
        self.starts = 0  # engine processes spawned, for the logs and tests
        self.smaller_context_tokens = smaller_context_tokens

    @property
    def config(self) -> EngineConfig:
        return self._config

    # --- the model ------------------------------------------------------------------------------------

    def resolve_model(self) -> str:
        """The model file, checked by its back end before any engine is spawned for it. The engine follows the
        file: a file another back end claims (a GGUF: llama.cpp) goes to that one, whatever engine.backend says,
        unless engine.backend is one that checks no model file (command)."""
        if registry.get(self._config.backend).reads_model_files:
            follows = registry.backend_for_file(self._config.model)
            if follows and follows != self._config.backend:
                log.info("engine.model %s is for %s: using that engine", self._config.model, follows)
                self._config = replace(self._config, backend=follows)
        try:
            self._model = registry.get(self._config.backend).check_model(self._config)
        except registry.ModelRejected as e:
            raise EngineUnavailable(str(e), is_permanent=True) from None
        return self._model.path

    def argv(self, model_path: str) -> list[str]:
        if self._model is None or self._model.path != model_path:
            self._model = registry.CheckedModel(model_path)
        return registry.get(self._config.backend).argv(self._config, self._model)

    # --- the process ----------------------------------------------------------------------------------

    @property
    def engine_pid(self) -> int | None:
        return self._client.pid if self._client and self._client.is_running else None

    async def get(self) -> EngineClient:
        """A running engine, started (or started again, after its backoff) when needed."""
        if self._permanent is not None:
            raise self._permanent
        if self._held:
            raise EngineUnavailable(self._held, is_permanent=False)
        async with self._lock:
            if self._client is not None and self._client.is_running and self._is_restart_pending:
                client, self._client = self._client, None
                await client.stop()
            self._is_restart_pending = False
            if self._client is not None and self._client.is_running:
                return self._client
            if self._client is not None:
                await self._reap()
            wait_s = self._next_start_at - time.monotonic()
            if wait_s > MAX_WAIT_IN_STORY_S:
                raise EngineUnavailable(f"the engine is starting again in {wait_s:.0f} s", is_permanent=False)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            return await self._start()

    async def _start(self) -> EngineClient:
        try:
            self.model_path = self.model_path or self.resolve_model()
        except EngineUnavailable as e:
            self._give_up(e)
            raise
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        client = EngineClient(self.argv(self.model_path), name=self._config.backend, env=env)
        self.starts += 1
        try:
            await client.start(self._config.load_timeout_s)
        except EngineExited as e:
            error = EngineUnavailable(str(e), is_permanent=e.is_permanent)
            self._give_up(error) if e.is_permanent else self._failed(str(e))
            raise error from None
        except EngineError as e:
            self._failed(str(e))
            raise EngineUnavailable(str(e), is_permanent=False) from None
        client.chat_template = self.chat_template()
        self._client = client
        self._started_at = time.monotonic()
        self.on_status("")
        return client

    async def _reap(self) -> None:
        """The engine ended by itself: say how, and when it starts again."""
        client, self._client = self._client, None
        assert client is not None  # supervise() reaps the client it watched
        code = await client.stop(0.5)
        self._backoff.ran_for(time.monotonic() - self._started_at)
        is_out_of_memory = code == ExitCode.OUT_OF_MEMORY or (code == -signal.SIGKILL and not client.was_killed_by_us)
        if is_out_of_memory and 0 < self.smaller_context_tokens < self._config.context_tokens:
            log.warning("the engine may have run out of memory: its next start uses the smaller plan")
            self.use_context(self.smaller_context_tokens)
            self._is_restart_pending = False  # it is not running: the next start takes the new context anyway
        self._failed(f"the engine {describe_exit(code)}")

    def _failed(self, why: str) -> None:
        delay_s = self._backoff.failed()
        self._next_start_at = time.monotonic() + delay_s
        log.warning("%s; starting the engine again in %g s (failure %d)", why, delay_s, self._backoff.failures)
        self.on_status(f"engine restarting after: {why}")

    def give_up(self, error: EngineUnavailable) -> None:
        """No engine for good (a bad model, no model that fits): canned stories, no retries."""
        self._give_up(error)

    def _give_up(self, error: EngineUnavailable) -> None:
        self._permanent = error
        log.error("no engine: %s; not retrying (fix the model or the configuration)", error)
        self.on_status(f"no engine ({error}); canned stories")

    async def supervise(self) -> None:
        """Start the engine, and again after it dies (with backoff), so that a story finds it warm. Runs until
        cancelled; stops trying after a permanent failure."""
        while self._permanent is None and not self._is_closing:
            client = self._client if self._client is not None and self._client.is_running else None
            if client is None and not self._held:
                try:
                    client = await self.get()
                except EngineUnavailable:
                    await asyncio.sleep(max(0.5, self._next_start_at - time.monotonic()))
                    continue
            if client is None:
                await asyncio.sleep(1.0)
                continue
            await client.wait_exit()
            if self._is_closing:
                return
            async with self._lock:
                if self._client is client:
                    await self._reap()

    # --- what the memory guard asks -------------------------------------------------------------------

    async def hold(self, why: str) -> None:
        """Stop the engine and keep it stopped (memory pressure) until release()."""
        self._held = why
        self.on_status(f"engine stopped: {why}")
        async with self._lock:
            if self._client is not None:
                await self._client.stop()
                self._client = None

    def release(self) -> None:
        if self._held:
            self._held = ""
            self.on_status("")

    def use_context(self, context_tokens: int) -> None:
        """A shorter (or again the planned) context: the engine is started again with it before the next story."""
        if context_tokens != self._config.context_tokens:
            log.info("engine context %d -> %d tokens from the next story", self._config.context_tokens, context_tokens)
            self._config = replace(self._config, context_tokens=context_tokens)
            self._is_restart_pending = True

    def chat_template(self) -> str:
        """The template to wrap prompts in: the model's own for instruct models, "" for completion."""
        style = self._config.prompt_style
        template = self._model.chat_template if self._model else ""
        if style == "chat" and not template:
            log.warning(
                "engine.prompt_style is chat but %s carries no chat template; using completion", self.model_path
            )
        return template if style in ("auto", "chat") else ""

    def kill_now(self) -> None:
        """SIGKILL the engine's process group, for when a polite stop has stalled."""
        if self._client is not None:
            self._client.kill_now()

    async def close(self) -> None:
        self._is_closing = True
        if self._client is not None:
            await self._client.stop()
            self._client = None
