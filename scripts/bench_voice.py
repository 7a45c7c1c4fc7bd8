#!/usr/bin/env python3
"""Benchmark of the voice loop in the virtual sound room.

Speaks "tell me a story about a dragon who loves tea" (espeak-ng, en-us) into the `room` sink N times, each
time to a fresh `storybot listen`, and measures from outside:

  end of speech -> first audio   the last loud 50 ms chunk recorded from room.monitor to the first loud chunk
                                 recorded from speaker.monitor (both recorders share their latency, so it cancels)
  the breakdown                  from the same end of speech to the daemon's own moments (CLOCK_MONOTONIC is one
                                 clock for all processes): the utterance final (the story asked for), the first
                                 piece of the opening's speech synthesized, and the first sample at the speaker as
                                 PortAudio timed it. The recorder's end of speech arrives up to one 50 ms chunk
                                 late, so these stages read up to 50 ms short.
  tokens/s                       the engine's own count (Done frame)
  peak RSS                       VmHWM of the engine process and ru_maxrss of the daemon

Usage: .venv/bin/python scripts/bench_voice.py [--runs 5] [--max-tokens 60] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.soundroom import Recorder, SoundRoom  # noqa: E402

REQUEST = "tell me a story about a dragon who loves tea"


def one_run(
    room: SoundRoom, request_wav: Path, state_dir: Path, max_tokens: int, seed: int, overrides: list[str]
) -> dict:
    storybot = str(Path(sys.executable).with_name("storybot"))
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.json"
        heard, spoken = Recorder("room.monitor"), Recorder("speaker.monitor")
        robot = subprocess.Popen(
            [
                storybot,
                "listen",
                "-v",
                "--timings-json",
                str(timings),
                "--set",
                f"engine.max_tokens={max_tokens}",
                "--set",
                f"engine.seed={seed}",
                *(a for o in overrides for a in ("--set", o)),
            ],
            env={**room.env(), "STORYBOT_STATE_DIR": str(state_dir)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "listening on" not in robot.stderr.readline():
                pass
            time.sleep(0.5)
            room.play_into_room(request_wav)
            stdout, stderr = robot.communicate(timeout=300)
        finally:
            robot.kill()
            time.sleep(0.2)
            heard.stop()
            spoken.stop()
        if robot.returncode != 0:
            raise SystemExit(f"storybot listen failed ({robot.returncode}):\n{stderr[-2000:]}")
        record = json.loads(timings.read_text())
    result = record["results"][0]
    end_of_speech, first_audio = heard.last_speech_arrival(), spoken.first_speech_arrival()
    transcript = next((line[7:] for line in stderr.splitlines() if line.startswith("heard: ")), "?")
    ending = next((_ending(line) for line in stderr.splitlines() if _ending(line)), "?")
    since = lambda key: None if result.get(key) is None else result[key] - end_of_speech  # noqa: E731
    return {
        "transcript": transcript,
        "ending": ending,
        "latency_s": first_audio - end_of_speech,
        "final_s": since("started_at"),
        "synthesized_s": since("first_speech_at"),
        "device_s": since("first_audio_at"),
        "tokens_per_s": result["tokens_per_s"],
        "tokens": result["tokens"],
        "first_token_s": result["first_token_s"],
        "daemon_peak_rss_mb": record["daemon_peak_rss_kb"] / 1024,
        "engine_peak_rss_mb": (record["engine_peak_rss_kb"] or 0) / 1024,
        "sentences": len(stdout.splitlines()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a storybot --set")
    args = parser.parse_args()
    room = SoundRoom.start()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        request = Path(tmp) / "request.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(request), REQUEST], check=True)
        state_dir = Path(tmp) / "state"  # shared by the runs, as on a device: the first one starts cold
        for i in range(args.runs):
            run = one_run(room, request, state_dir, args.max_tokens, seed=100 + i, overrides=args.set)
            runs.append(run)
            print(
                f"run {i + 1}: end of speech -> first audio {run['latency_s']:.3f} s "
                f"(final {_s(run['final_s'])}, synthesized {_s(run['synthesized_s'])}, "
                f"at the device {_s(run['device_s'])}), "
                f"{run['tokens']} tokens at {run['tokens_per_s']:.1f} tok/s, first token {run['first_token_s']:.2f} s, "
                f"daemon {run['daemon_peak_rss_mb']:.0f} MB, engine {run['engine_peak_rss_mb']:.0f} MB, "
                f"heard {run['transcript']}, {run['ending']}",
                flush=True,
            )
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    print(
        f"\nmedian of {len(runs)}: end of speech -> first audio {med('latency_s'):.3f} s "
        f"(min {min(r['latency_s'] for r in runs):.3f}, worst {max(r['latency_s'] for r in runs):.3f}); "
        f"{med('tokens_per_s'):.1f} tok/s; peak RSS daemon {med('daemon_peak_rss_mb'):.0f} MB, "
        f"engine {med('engine_peak_rss_mb'):.0f} MB"
    )
    print("end of speech ->  median  worst")
    for key, label in (
        ("final_s", "utterance final"),
        ("synthesized_s", "opening synthesized (first piece)"),
        ("device_s", "first sample at the speaker (PortAudio's time)"),
        ("latency_s", "first sound recorded"),
    ):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            print(f"  {statistics.median(values):6.3f} {max(values):6.3f} s  {label}")
    return 0


def _ending(log_line: str) -> str:
    """How the listener ended the request, from its log line: early on a whole request, or after the full silence."""
    for marker in ("a whole request: final after", "request final after the full"):
        if marker in log_line:
            return log_line[log_line.index(marker) :]
    return ""


def _s(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.3f} s"


if __name__ == "__main__":
    sys.exit(main())
