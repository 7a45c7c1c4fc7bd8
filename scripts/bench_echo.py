#!/usr/bin/env python3
"""Benchmark of the echo canceller (audio/echo.py) in the virtual sound room with a leaky speaker.

A loopback (module-loopback, speaker.monitor -> room, 30 ms) plays everything the robot says back into the room it
listens to. Each run plays a flite story through the real speaker path (SoundDeviceSink at full volume) while the
real microphone path (Microphone on room.monitor) captures, and a child-like "stop" is played into the room 4 s in
(espeak-ng en-us pitch 60, sox pitch +300 cents). It is done with the canceller on and off, and prints:

  echo reduction   the story's level in the capture (1-4 s after the word), off minus on (dB)
  ERLE             the canceller's own figure: what came in over what went out while cancelling, from the story's
                   first sound (the filter still learning) to its end, the child's word included (dB)
  ERLE learnt      the same from 2.0 to 3.5 s of the robot's speech: the echo alone, once the filter has learnt it
  CPU              the canceller's thread time per second of audio it cancelled (% of one core)
  heard            what PocketSphinx (command grammar) makes of the 1.3 s around the word

With --trials N it then runs N spoken-stop trials in the daemon (tests/bargein.py: one daemon, a story per trial
started by a long press on a serial button board, a child-like "stop" 2.5 s after the story is first heard) with
the canceller on, then off (--trials-with on|off: one of them), and prints how many stopped the story, how many of
them within 1 s, and the latency from the word's end (its last loud 10 ms) to the robot going idle with its speaker
silent from then on (median, worst), and how many of the stops the stop-word classifier heard (PocketSphinx heard
the others). --log-dir keeps the trials' daemon logs (at -vv: the listener's decisions).

--set KEY=VALUE gives the trials' daemon a configuration key (e.g. --set asr.stop_word=false, PocketSphinx
alone); --all-child-voices says the trials' "stop" in all six child-like voices of tests/voices.py
(default: the three mild ones).

Usage: .venv/bin/python scripts/bench_echo.py [--runs 3] [--trials 10] [--set KEY=VALUE] [--all-child-voices]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tests.soundroom import SoundRoom  # noqa: E402

STORY = (
    "Once upon a time there was a little dragon who loved tea. Every morning he boiled water in a big pot "
    "and sang a song to all the birds of the forest, and the birds sang back to him."
)

ROOM_SCRIPT = r"""
import asyncio, json, sys, numpy as np
from audio.capture import Microphone
from audio.echo import EchoCanceller, EchoReference
from audio.playback import SoundDeviceSink
from audio.speech import read_wav

async def main(story_wav, stop_wav, is_cancelled, stop_after_s, out_npy):
    audio = read_wav(open(story_wav, "rb").read())
    reference = EchoReference()
    canceller = EchoCanceller(reference) if is_cancelled else None
    learnt = [0.0, 0.0]  # raw and cancelled energy from 2.0 to 3.5 s of the robot's speech
    if canceller is not None:
        cancel = canceller.process
        def process(samples, adc_s):
            out = cancel(samples, adc_s)
            if 2.0 <= canceller.cancelled_s <= 3.5 and len(out):
                learnt[0] += float(np.sum(samples[: len(out)].astype(np.float64) ** 2))
                learnt[1] += float(np.sum(out.astype(np.float64) ** 2))
            return out
        canceller.process = process
    mic = Microphone("", 30, canceller=canceller)
    mic.open()
    sink = SoundDeviceSink("", 22050, 1.0, reference if is_cancelled else None)
    frames = []
    async def read():
        while True:
            frames.append(await mic.read())
    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)
    async def child():
        await asyncio.sleep(stop_after_s)
        said = len(frames)
        player = await asyncio.create_subprocess_exec("paplay", "-d", "room", stop_wav)
        await player.wait()
        return said
    child_task = asyncio.create_task(child())
    await sink.play(audio)
    said = await child_task
    await asyncio.sleep(0.5)
    reader.cancel()
    mic.close()
    await sink.close()
    np.save(out_npy, np.concatenate(frames))
    print(json.dumps({"said": said * 480, "erle_db": canceller.erle_db if canceller else 0.0,
                      "learnt_erle_db": 10 * np.log10((learnt[0] + 1) / (learnt[1] + 1)),
                      "cpu_per_s": canceller.cpu_s / max(canceller.cancelled_s, 1e-9) if canceller else 0.0}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "on", float(sys.argv[4]), sys.argv[5]))
"""


def level_db(x: np.ndarray) -> float:
    return 10 * float(np.log10(np.mean(x.astype(np.float64) ** 2) + 1.0))


def command_heard(samples: np.ndarray) -> str:
    from audio.asr import PocketSphinxRecognizer
    from robot.controls.commands import CommandPhrases

    recognizer = PocketSphinxRecognizer(
        jsgf_file=str(ROOT / "assets" / "asr" / "story-requests.jsgf"), commands=CommandPhrases.load("en").grammar()
    )
    recognizer.use_commands(True)
    recognizer.accept(samples.astype("<i2").tobytes())
    return recognizer.finish()


def one_run(room: SoundRoom, tmp: Path, mode: str) -> dict:
    out = tmp / f"heard-{mode}.npy"
    proc = subprocess.run(
        [sys.executable, "-c", ROOM_SCRIPT, str(tmp / "story.wav"), str(tmp / "stop.wav"), mode, "4.0", str(out)],
        env=room.env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(ROOT),
    )
    if proc.returncode != 0:
        raise SystemExit(f"the room run failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    heard = np.load(out)
    said = result["said"]
    result["heard"] = command_heard(heard[max(0, said - 4800) : said + 16000])
    result["story_level_db"] = level_db(heard[said + 16000 : said + 4 * 16000])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=0, help="spoken-stop trials in the daemon (0: none)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for the trials' daemon")
    parser.add_argument("--all-child-voices", action="store_true", help="the trials in all six child-like voices")
    parser.add_argument(
        "--trials-with",
        choices=("both", "on", "off"),
        default="both",
        help="the trials with the canceller on, off or both",
    )
    parser.add_argument(
        "--log-dir", type=Path, help="keep the trials' daemon logs here (trials-on.log, trials-off.log)"
    )
    args = parser.parse_args()
    room = SoundRoom.start()
    loopback = subprocess.run(
        ["pactl", "load-module", "module-loopback", "source=speaker.monitor", "sink=room", "latency_msec=30"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()
    reductions, erles, learnt, cpus, heard_on, heard_off = [], [], [], [], 0, 0
    try:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            subprocess.run(["flite", "-voice", "slt", "-t", STORY, "-o", str(tmp / "story.wav")], check=True)
            raw = tmp / "stop-raw.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-p", "60", "-w", str(raw), "stop"], check=True)
            subprocess.run(["sox", str(raw), "-r", "16000", str(tmp / "stop.wav"), "pitch", "300"], check=True)
            for i in range(args.runs):
                on, off = one_run(room, tmp, "on"), one_run(room, tmp, "off")
                reductions.append(off["story_level_db"] - on["story_level_db"])
                erles.append(on["erle_db"])
                learnt.append(on["learnt_erle_db"])
                cpus.append(on["cpu_per_s"])
                heard_on += on["heard"].split() == ["stop"]
                heard_off += off["heard"].split() == ["stop"]
                print(
                    f"run {i + 1}: echo reduction {reductions[-1]:.1f} dB, ERLE {on['erle_db']:.1f} dB "
                    f"(learnt {on['learnt_erle_db']:.1f} dB), "
                    f"CPU {100 * on['cpu_per_s']:.1f}% of a core; heard {on['heard']!r} (off: {off['heard']!r})",
                    flush=True,
                )
    finally:
        subprocess.run(["pactl", "unload-module", loopback], timeout=10)
    if args.runs:
        print(
            f"\nmedian of {args.runs}: echo reduction {statistics.median(reductions):.1f} dB, "
            f"ERLE {statistics.median(erles):.1f} dB (learnt {statistics.median(learnt):.1f} dB), "
            f"CPU {100 * statistics.median(cpus):.1f}% of a core per second "
            f"of audio; 'stop' heard {heard_on}/{args.runs} with the canceller, {heard_off}/{args.runs} without"
        )
    for echo_cancel in ("on", "off") if args.trials else ():
        if args.trials_with in ("both", echo_cancel):
            spoken_stop_trials(room, args.trials, echo_cancel, args.set, args.all_child_voices, args.log_dir)
    return 0


def spoken_stop_trials(
    room: SoundRoom, count: int, echo_cancel: str, settings: list[str], all_voices: bool, log_dir: Path | None
) -> None:
    from tests.bargein import leaky_loopback, run_trials, stop_words
    from tests.voices import CHILD_VOICES, MILD_CHILD_VOICES

    extra = [f"{key}={value if value in ('true', 'false') or value.replace('.', '').isdigit() else repr(value)}"
             for key, _, value in (s.partition("=") for s in settings)]  # fmt: skip
    with tempfile.TemporaryDirectory() as name, leaky_loopback():
        voices = (*MILD_CHILD_VOICES, *CHILD_VOICES) if all_voices else MILD_CHILD_VOICES
        words = stop_words(Path(name), "stop", voices)
        trials, log = run_trials(room, Path(name) / "state", count, echo_cancel, *extra, words=words)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"trials-{echo_cancel}.log").write_text(log)
    latencies = [t.latency_s for t in trials if t.latency_s is not None]
    for i, t in enumerate(trials):
        print(f"trial {i + 1} ({t.voice}): " + ("not heard" if t.latency_s is None else f"{t.latency_s:.2f} s"))
    within = sum(s <= 1.0 for s in latencies)
    summary = f"spoken stop, canceller {echo_cancel}: {len(latencies)}/{count} stopped the story, {within} within 1 s"
    if latencies:
        summary += f"; word's end to silence median {statistics.median(latencies):.2f} s, worst {max(latencies):.2f} s"
        summary += f"; the stop-word classifier heard {log.count('stop word heard')}, PocketSphinx the others"
    print(summary)


if __name__ == "__main__":
    sys.exit(main())
