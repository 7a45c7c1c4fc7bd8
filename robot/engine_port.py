"""The engine port: what the state owner and the supervisor need of an engine host, and what a story needs of the
engine it gets. robot.engine_host.EngineHost (a local engine child) and robot.remote_host.FailoverHost (a model
server, with the local engine as its fallback) are both a Host; engines.client.EngineClient and the failover's
engine are both an Engine. The robot depends on these, not on either class."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from engines import protocol as p
from robot.engine_host import EngineUnavailable
from robot.plumbing.config import EngineConfig


class Engine(Protocol):
    """A running engine, for one story."""

    ready: p.Ready | None  # its handshake: the context it was started with
    chat_template: str  # what prompts for its model are wrapped in; "" for completion

    def generate(
        self, asked: p.Request, *, first_token_timeout_s: float, token_timeout_s: float
    ) -> AsyncIterator[p.Token | p.Done]:
        """The request's tokens, then its Done frame; leaving early cancels the generation."""
        ...


class Host(Protocol):
    """Keeps an engine available for stories."""

    @property
    def config(self) -> EngineConfig:
        """engine.* as the host runs it now (its back end, model, context)."""
        ...

    @property
    def engine_pid(self) -> int | None:
        """The local engine's process while it runs (for its peak memory), else None."""
        ...

    async def get(self) -> Engine:
        """A running engine; EngineUnavailable when none can be had."""
        ...

    async def supervise(self) -> None:
        """Keep the engine warm (restart it, probe a server) until cancelled."""
        ...

    async def hold(self, why: str) -> None:
        """Stop the local engine and keep it stopped (memory pressure) until release()."""
        ...

    def release(self) -> None: ...

    def use_context(self, context_tokens: int) -> None:
        """The context for the next start (the memory guard's shorter one, or the planned one again)."""
        ...

    def give_up(self, error: EngineUnavailable) -> None:
        """No local engine for good: canned stories (or the server alone)."""
        ...

    def kill_now(self) -> None:
        """SIGKILL the local engine's group: a stop that stalled."""
        ...

    async def close(self) -> None: ...
