#!/usr/bin/env python3
"""Remote engine benchmark: the default model (SmolLM2-135M-Instruct) through llama-cpp-python's OpenAI-compatible
server on loopback against the local engine (storybot-llama2c on the same model, converted), and the pause at a
failover.

  stories     `storybot tell` (speech to a WAV file, timings from --timings-json), interleaved remote / local runs:
              request -> first audio, request -> first token, and tok/s as the story session saw them
  failover    one story's stream through FailoverHost, the server SIGKILLed after its 5th token, N times (a new
              server each time): the pause from the kill to the first token from the local engine (median and
              worst), the local engine (llama2c, 2 threads, on the same model) kept warm as the daemon keeps it. The
              pause the child hears is shorter, or none: speech runs behind the story's generation (story.
              queue_sentences ahead), and the test in the sound room measures what is heard
  heard       the same in `storybot run` in the sound room (PulseAudio null sinks, tests/soundroom.py): the longest
              silence the child hears on speaker.monitor from the kill to the story's end
  footprint   what the remote engine adds to the daemon: a fresh Python's VmHWM after importing the daemon's
              engine client alone, and again after importing httpx and streaming a story from the server (the
              figure engines/backends/remote.py declares as remote_client_bytes)

Usage: .venv/bin/python scripts/bench_remote.py [--runs 3] [--failures 10] [--max-tokens 80] [--only NAME]
Needs llama-cpp-python[server] (scripts/setup.sh --test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.remote_servers import API_KEY, LlamaServer  # noqa: E402

STORYBOT = str(Path(sys.executable).with_name("storybot"))


def tell(request: str, overrides: list[str], work: Path, n: int) -> dict:
    timings = work / f"timings-{n}.json"
    argv = [STORYBOT, "tell", request, "--wav", str(work / f"story-{n}.wav"), "--timings-json", str(timings)]
    for o in overrides:
        argv += ["--set", o]
    env = {**os.environ, "STORYBOT_STATE_DIR": str(work / f"state-{n}")}
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    return json.loads(timings.read_text())["results"][0]


def bench_stories(runs: int, max_tokens: int, work: Path) -> None:
    key = work / "key"
    key.write_text(API_KEY)
    server = LlamaServer(log_dir=work).start()
    common = [f"engine.max_tokens={max_tokens}", "engine.seed=11", "engine.threads=1"]
    engines = {
        "remote (server)": common
        + [
            "engine.backend=remote",
            f"engine.remote_url={server.url}",
            "engine.remote_model=smollm2",
            "engine.remote_api=chat",
            f"engine.remote_api_key_file={key}",
            "engine.remote_fallback=none",
        ],  # fmt: skip
        "local llama2c": common + ["engine.backend=llama2c"],
    }
    results: dict[str, list[dict]] = {name: [] for name in engines}
    try:
        n = 0
        for _ in range(runs):
            for name, overrides in engines.items():
                n += 1
                results[name].append(tell("a dragon who loves tea", overrides, work, n))
    finally:
        server.stop()
    print(f"stories: {runs} runs each, max_tokens {max_tokens}, one thread, SmolLM2-135M-Instruct")
    print(f"  {'engine':18} {'first audio s':>14} {'first token s':>14} {'tok/s':>7} {'tokens':>7}  outcome")
    for name, rows in results.items():

        def med(key: str, rows: list[dict] = rows) -> float:
            return statistics.median(r[key] for r in rows if r[key] is not None)

        outcomes = ",".join(sorted({r["outcome"].split(":")[0] for r in rows}))
        print(f"  {name:18} {med('first_audio_s'):14.2f} {med('first_token_s'):14.2f} {med('tokens_per_s'):7.1f} "
              f"{med('tokens'):7.0f}  {outcomes}")  # fmt: skip


def bench_failover(failures: int, work: Path) -> None:
    from engines import protocol as p
    from robot.plumbing.config import load_config
    from robot.remote_host import FailoverHost
    from tests.test_remote import story_request

    key = work / "key"
    key.write_text(API_KEY)
    pauses: list[float] = []
    for i in range(failures):
        server = LlamaServer(log_dir=work).start()
        config = load_config(
            overrides=["engine.backend=remote", f"engine.remote_url={server.url}", "engine.remote_model=smollm2",
                       "engine.remote_api=completions", f"engine.remote_api_key_file={key}",
                       "engine.remote_first_token_timeout_s=120"],
            use_system=False,
        ).engine  # fmt: skip
        host = FailoverHost(config, on_status=lambda *a: None)

        async def one(host: FailoverHost = host, server: LlamaServer = server) -> float:
            await host.local.get()
            engine = await host.get()
            arrivals = []
            killed_at = 0.0
            try:
                async for frame in engine.generate(story_request(40, temperature=0.8), first_token_timeout_s=60,
                                                   token_timeout_s=30):  # fmt: skip
                    if isinstance(frame, p.Token):
                        arrivals.append(time.monotonic())
                        if len(arrivals) == 5:
                            killed_at = time.monotonic()
                            server.signal(signal.SIGKILL)
            finally:
                await host.close()
            if host.failovers != 1 or engine.engine == "remote" or len(arrivals) < 6:
                raise RuntimeError(f"no failover after the kill ({host.failovers} failovers, {len(arrivals)} tokens)")
            return arrivals[5] - killed_at

        try:
            pauses.append(asyncio.run(one()))
        finally:
            server.stop()
        print(f"  failure {i + 1}: pause {pauses[-1] * 1000:.0f} ms", file=sys.stderr)
    print(f"failover: server SIGKILLed mid-stream {failures} times; pause to the local engine's first token: "
          f"median {statistics.median(pauses) * 1000:.0f} ms, worst {max(pauses) * 1000:.0f} ms")  # fmt: skip


def bench_heard(failures: int, work: Path) -> None:
    """What the child hears: `storybot run` in the sound room, a story from the server, the server SIGKILLed
    after the story's second sentence; the longest silence on speaker.monitor from the kill to the story's end."""
    from contextlib import ExitStack

    from tests.soundroom import Recorder, SoundRoom
    from tests.test_remote_daemon import launch, long_press, longest_silence_s, remote_overrides

    key = work / "key"
    key.write_text(API_KEY)
    room = SoundRoom.start()
    silences: list[float] = []
    for i in range(failures):
        run = work / f"heard-{i}"
        run.mkdir()
        server = LlamaServer(log_dir=run).start()
        with ExitStack() as stack:
            stack.callback(server.stop)
            recorder = Recorder()
            stack.callback(recorder.stop)
            overrides = remote_overrides(server.url, key, "engine.max_tokens=160", "engine.remote_api=completions")
            robot, _, board = launch(room, run, stack, *overrides)
            since = long_press(board)
            robot.wait_until(lambda since=since, robot=robot: len(robot.out_lines("", since)) >= 2 or None, 120,
                             "two sentences")  # fmt: skip
            recorder.wait_for_sound(10)
            killed = time.monotonic()
            server.kill()
            robot.wait_err("the story goes on with the local engine", 30, since)
            ended = robot.wait_err("speaking -> idle", 180, since)
            last = recorder.last_speech_arrival() or ended
            silences.append(longest_silence_s(recorder, killed, min(ended, last)))
            robot.stop()
        print(f"  failure {i + 1}: longest silence after the kill {silences[-1] * 1000:.0f} ms", file=sys.stderr)
    print(f"heard: server SIGKILLed mid-story {failures} times (storybot run in the sound room, llama2c fallback); "
          f"longest silence the child heard from the kill to the story's end: median "
          f"{statistics.median(silences) * 1000:.0f} ms, worst {max(silences) * 1000:.0f} ms")  # fmt: skip


FOOTPRINT_CHILD = r"""
import asyncio, sys
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
import engines.client, engines.protocol, jinja2.sandbox  # what every daemon has (asyncio, ssl, chat templates)
before = hwm()
from engines.remote import ROLE_TEMPLATE, RemoteClient, RemoteSettings, Secret
async def main():
    client = RemoteClient(RemoteSettings(sys.argv[1], model="smollm2", api_key=Secret(sys.argv[2])))
    await client.start()
    prompt = "\x1euser\x1fTell a gentle story about a dragon.\x1eassistant\x1fOnce upon a time, there was a dragon."
    async for _ in client.generate({"prompt": prompt, "max_tokens": 40}):
        pass
    await client.stop()
asyncio.run(main())
print(before, hwm())
"""


def bench_footprint(work: Path) -> None:
    server = LlamaServer(log_dir=work).start()
    try:
        out = subprocess.run([sys.executable, "-c", FOOTPRINT_CHILD, server.url, API_KEY], cwd=ROOT, check=True,
                             capture_output=True, text=True, timeout=300).stdout.split()  # fmt: skip
    finally:
        server.stop()
    before, after = int(out[-2]), int(out[-1])
    print(f"footprint: VmHWM {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB after httpx and one streamed "
          f"story: the remote client adds {(after - before) / 2**20:.1f} MiB ({after - before} bytes)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--failures", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--only", choices=("stories", "failover", "heard", "footprint"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        work = Path(tmp)
        if args.only in (None, "footprint"):
            bench_footprint(work)
        if args.only in (None, "stories"):
            bench_stories(args.runs, args.max_tokens, work)
        if args.only in (None, "failover"):
            bench_failover(args.failures, work)
        if args.only in (None, "heard"):
            bench_heard(args.failures, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
