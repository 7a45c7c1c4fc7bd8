"""engine.backend = "remote": stories from a model server, with the local engine as the fallback.

FailoverHost is a robot.engine_port.Host, as robot.engine_host.EngineHost is, so that the robot and the supervisor
treat both alike; what get() returns is an Engine, as the engine client is, so that a story cannot tell the server
from a child process.

- While the server is up, a story streams from it; when it fails in mid-story (refused, an HTTP error, garbage, a
  missed deadline), the story goes on with the local engine (kept warm by its own EngineHost), which is given the
  story so far as its prompt: the child hears a pause, not an apology. With no local engine the error reaches the
  story, which ends with the apology and stays resumable.
- While the server is down, stories are told by the local engine, and the server is probed with capped backoff
  (GET /v1/models); the first story after a probe succeeds uses the server again.
- STATUS says "degraded: remote engine: ..." while the server is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

from engines import protocol as p
from engines.backends.remote import remote_settings
from engines.registry import ModelRejected
from engines.remote import RemoteClient, RemoteError, request_fields, split_roles
from robot.engine_host import EngineHost, EngineUnavailable
from robot.engine_port import Engine, Host
from robot.plumbing.backoff import Backoff
from robot.plumbing.config import EngineConfig

log = logging.getLogger(__name__)

PROBE_BACKOFF_S = (2.0, 5.0, 10.0, 20.0, 40.0, 60.0)  # a probe is one small request: sooner than an engine restart
REMOTE = "remote engine"  # the part STATUS names
FAILOVER_TAIL_CHARS = 240  # of the latest story, for the local engine to go on from (about 60 tokens)
OPENING_MAX_CHARS = 240


def build_engine_host(config: EngineConfig, *, on_status: Callable[..., None], smaller_context_tokens: int = 0) -> Host:
    """The engine host for engine.* as planned: a FailoverHost for the remote back end, else an EngineHost."""
    if config.backend == "remote":
        return FailoverHost(config, on_status=on_status, smaller_context_tokens=smaller_context_tokens)
    return EngineHost(config, on_status=on_status, smaller_context_tokens=smaller_context_tokens)


class FailoverHost:
    def __init__(
        self, config: EngineConfig, *, on_status: Callable[..., None], smaller_context_tokens: int = 0
    ) -> None:
        """on_status(problem, what): what keeps the engine ("engine", the local one) or the server ("remote
        engine") from working, "" when it works again."""
        self._config = config
        self.on_status = on_status
        self.remote: RemoteClient | None = None
        self._permanent = ""  # why the server can never be used with this configuration
        try:
            self.remote = RemoteClient(remote_settings(config))
        except ModelRejected as e:
            self._permanent = str(e)
        has_local = config.remote_fallback != "none"
        local_config = dataclasses.replace(config, backend=config.remote_fallback) if has_local else None
        self.local = (
            EngineHost(
                local_config,
                on_status=lambda problem: on_status(problem, "engine"),
                smaller_context_tokens=smaller_context_tokens,
            )
            if local_config is not None
            else None
        )
        self._backoff = Backoff(PROBE_BACKOFF_S)
        self._probing = asyncio.Lock()
        self._failures_seen = 0
        self._has_probed = False
        self._next_probe_at = 0.0
        self._reported = ""  # the problem last logged and shown, so that a failing probe is said once
        self._is_closing = False
        self.failovers = 0  # stories that went on locally after the server failed, for the logs and tests

    @property
    def config(self) -> EngineConfig:
        return self._config

    @property
    def engine_pid(self) -> int | None:
        return self.local.engine_pid if self.local else None

    @property
    def starts(self) -> int:
        return self.local.starts if self.local else 0

    @property
    def next_engine(self) -> str:
        """Which engine the next story uses, in words."""
        if self.remote is not None and self.remote.is_up:
            return f"remote ({self.remote.settings.server})"
        return f"local ({self.local.config.backend})" if self.local else "none (canned stories)"

    # --- what a story asks ----------------------------------------------------------------------------

    async def get(self) -> Engine:
        """The server's engine when it is up, else the local engine. The first call probes the server; after that
        the health watch (supervise) probes it in the background, with backoff, so that a story never waits on a
        stalled server when a local engine can tell it (with none, a due probe is made here)."""
        remote = self.remote
        is_probe_here = remote is not None and (self.local is None or not self._has_probed)
        if remote is not None and is_probe_here and not remote.is_up and time.monotonic() >= self._next_probe_at:
            async with self._probing:  # the warm-up and a story may both ask: one probe answers both
                if not remote.is_up and time.monotonic() >= self._next_probe_at:
                    await self._probe()
        if remote is not None and remote.is_up:
            return FailoverEngine(remote, self)
        if self.local is not None:
            return await self.local.get()
        raise EngineUnavailable(f"the remote engine is down: {self._problem()}", is_permanent=bool(self._permanent))

    def _problem(self) -> str:
        return self._permanent or (self.remote.problem if self.remote else "") or "not probed yet"

    # --- health ---------------------------------------------------------------------------------------

    async def _probe(self) -> bool:
        assert self.remote is not None
        self._has_probed = True
        try:
            latency_ms = await self.remote.probe(self._config.remote_connect_timeout_s + 2.0)
        except RemoteError:
            self._server_down()
            return False
        self._backoff.succeeded()
        if self._reported:
            log.info("remote engine: %s answers again (%.0f ms); stories use it again", self.remote.settings.server,
                     latency_ms)  # fmt: skip
        else:
            log.info("remote engine: %s answers in %.0f ms", self.remote.settings.server, latency_ms)
        self._report("")
        return True

    def _server_down(self) -> None:
        """The server failed (a probe, or a story's request): the next probe after the backoff's delay. Each failure
        counts once, whoever sees it first (the health watch, or the story that met it)."""
        assert self.remote is not None
        if self.remote.failures == self._failures_seen:
            return
        self._failures_seen = self.remote.failures
        delay_s = self._backoff.failed()
        self._next_probe_at = time.monotonic() + delay_s
        then = f"stories on the local {self.local.config.backend} engine" if self.local else "canned stories"
        problem = self.remote.problem
        if not self._reported:  # it was up (or never tried): the one warning of this outage
            log.warning("remote engine: %s; %s; probing it again with backoff (%g s)", problem, then, delay_s)
        elif problem != self._reported:
            log.info("remote engine: still down: %s; probing it again in %g s", problem, delay_s)
        self._report(problem)

    def _report(self, problem: str) -> None:
        if problem != self._reported:
            self._reported = problem
            then = f"; local {self.local.config.backend} engine" if self.local else "; no local engine"
            self.on_status(problem + then if problem else "", REMOTE)

    def failed_in_story(self) -> None:
        """A story's request failed: the server is down from now on (its client marked it), until a probe."""
        self.failovers += 1
        self._server_down()

    async def supervise(self) -> None:
        """Probe the server with backoff while it is down, and keep the local engine warm. Runs until cancelled."""
        tasks = [asyncio.create_task(self._watch_server(), name="remote-health")]
        if self.local is not None:
            tasks.append(asyncio.create_task(self.local.supervise(), name="local-engine"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_server(self) -> None:
        if self.remote is None:
            log.error("remote engine: %s; not retrying (fix the configuration)", self._permanent)
            self.on_status(f"{self._permanent}; not retrying", REMOTE)
            return
        while not self._is_closing:
            if self.remote.is_up:
                await self.remote.wait_exit()  # a story's request found it down
                if not self._is_closing:
                    self._server_down()
                continue
            wait_s = self._next_probe_at - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            async with self._probing:
                if not self.remote.is_up:
                    await self._probe()

    # --- what the memory guard and the supervisor ask: the local engine's business ----------------------

    async def hold(self, why: str) -> None:
        if self.local is not None:
            await self.local.hold(why)

    def release(self) -> None:
        if self.local is not None:
            self.local.release()

    def use_context(self, context_tokens: int) -> None:
        if self.local is not None:
            self.local.use_context(context_tokens)

    def give_up(self, error: EngineUnavailable) -> None:
        """No local engine (its model does not fit): the server alone tells stories."""
        if self.local is not None:
            self.local.give_up(error)

    def kill_now(self) -> None:
        if self.local is not None:
            self.local.kill_now()

    async def close(self) -> None:
        self._is_closing = True
        if self.remote is not None:
            await self.remote.stop()
        if self.local is not None:
            await self.local.close()


class FailoverEngine:
    """The server's engine for one story, which goes on with the local engine when the server fails."""

    def __init__(self, remote: RemoteClient, host: FailoverHost) -> None:
        self._remote = remote
        self._host = host
        self.ready = remote.ready
        # the roles are marked unless completion is asked for: then the story's text alone goes to the server
        self.chat_template = "" if host.config.prompt_style == "completion" else remote.chat_template
        self.engine = "remote"  # which engine told the last part of the story: "remote" or the local back end's

    async def generate(
        self, asked: p.Request, *, first_token_timeout_s: float, token_timeout_s: float
    ) -> AsyncIterator[p.Token | p.Done]:
        fields = request_fields(asked)
        told, tokens = "", 0
        try:
            async for frame in self._remote.generate(fields):
                if isinstance(frame, p.Token):
                    told += frame.text
                    tokens += 1
                yield frame
            return
        except RemoteError as e:
            failed = e
        local_host = self._host.local
        self._host.failed_in_story()
        if local_host is None:
            raise failed
        # the failure itself was logged once, by the host (with its HTTP status, if any)
        log.info("the story goes on with the local engine after %d tokens from the server", tokens)
        try:
            # shielded: a start that outlasts this story goes on for the next one (as the story session does)
            local = await asyncio.wait_for(asyncio.shield(local_host.get()), first_token_timeout_s)
        except (EngineUnavailable, TimeoutError) as e:
            log.error("no local engine to go on with (%s)", e)
            raise failed from None
        self.engine = local_host.config.backend
        rest = continue_request(fields, told, tokens)
        if rest is None:  # the server told all it was asked for
            yield p.Done(0, p.StopReason.LENGTH, tokens, 0, 0.0, 0.0)
            return
        async for frame in local.generate(p.Request(**rest), first_token_timeout_s=first_token_timeout_s,
                                          token_timeout_s=token_timeout_s):  # fmt: skip
            if isinstance(frame, p.Done):
                frame = dataclasses.replace(frame, tokens=frame.tokens + tokens)
            yield frame


def continue_request(fields: dict, told: str, tokens: int) -> dict | None:
    """The request that makes the local engine go on where the server stopped: the story so far as plain text to
    continue (its opening, which names the characters, and its latest FAILOVER_TAIL_CHARS). No chat markup and no
    more of the story than that: the local engine reads its prompt one forward pass per token before the first new
    token, and that is the pause at the failover. None when nothing is left to generate."""
    max_tokens = fields["max_tokens"] - tokens
    if max_tokens < 1:
        return None
    story = split_roles(fields["prompt"])[-1][1] + told
    return {**fields, "prompt": head_and_tail(story, FAILOVER_TAIL_CHARS), "special": False, "max_tokens": max_tokens}


def head_and_tail(story: str, tail_chars: int) -> str:
    """The story's first sentence and its last tail_chars (from a word), or all of it when that is shorter."""
    ends = [i for i in (story.find(". "), story.find("! "), story.find("? ")) if 0 <= i < OPENING_MAX_CHARS]
    head_end = min(ends) + 1 if ends else 0
    if len(story) <= head_end + 1 + tail_chars:
        return story
    tail = story[-tail_chars:]
    tail = tail[tail.find(" ") + 1 :] if " " in tail else tail
    return f"{story[:head_end]} {tail}" if head_end else tail


def doctor_report(config: EngineConfig) -> dict:
    """For `storybot doctor`: the server, whether it answers and how fast (one probe), and which engine the next
    story would use."""
    fallback = config.remote_fallback
    report = {"server": config.remote_url, "model": config.remote_model or "(the server's default)",
              "api": config.remote_api, "fallback": fallback, "is_up": False, "latency_ms": None, "problem": ""}  # fmt: skip
    try:
        client = RemoteClient(remote_settings(config))
    except ModelRejected as e:
        report["problem"] = str(e)
    else:

        async def probe() -> None:
            try:
                report["latency_ms"] = round(await client.probe(config.remote_connect_timeout_s + 2.0), 1)
                report["is_up"] = True
            except RemoteError as e:
                report["problem"] = e.message
            finally:
                await client.stop()

        asyncio.run(probe())
    local = f"the local {fallback} engine" if fallback != "none" else "a canned story (no local engine)"
    report["next_engine"] = f"remote ({config.remote_url})" if report["is_up"] else local
    return report
