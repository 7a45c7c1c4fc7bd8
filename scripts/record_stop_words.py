#!/usr/bin/env python3
"""Records training utterances for the stop-word classifier (scripts/train_stop_word.py --room) in the leaky sound
room: what the echo canceller really leaves of a word said over the robot's voice at full volume.

The robot's real speaker path (SoundDeviceSink, with the canceller's reference) plays short stories read by flite,
a new output stream for each, as the daemon opens one per story; everything it plays leaks back into the room
(module-loopback, as tests/bargein.py sets it up). Meanwhile the training voices of scripts/train_stop_word.py
(never the tests' voices) say "stop" and the other words into the room, one every WORD_EVERY_S, from 1 s into each
story. The real microphone path (Microphone with EchoCanceller) captures the room. What the microphone heard and
what SpeexDSP made of it are both kept, before the canceller's gate (audio/echo.py gate), with when each word was
said: the gate is applied when the recording is read (labelled_utterances()), so a recording outlives a change of
the gate. The gated capture is cut into utterances as the listener cuts them while the robot speaks
(robot/listener.py: COMMAND_MIN_LEVEL_DBFS, COMMAND_END_SILENCE_S), and each utterance is labelled with the word
said within it; utterances with no word in them are the robot's own voice left by the canceller (negatives too).

Needs the sound room's tools (PulseAudio, espeak-ng, sox, flite). About 1.3 s of room time per word.

Usage: .venv/bin/python scripts/record_stop_words.py --words 400 --out /tmp/room-words.npz [--seed 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import train_stop_word as training  # noqa: E402

from tests.soundroom import SoundRoom  # noqa: E402

WORD_EVERY_S = 1.3
WORDS_PER_STORY = 4
STORIES = (
    "Once upon a time there was a little dragon who loved tea, and every morning he boiled water in a big pot.",
    "The brave mouse climbed the tall tree to see the moon, and the owl told her a secret about the stars.",
    "A kind giant lived on the hill. He was afraid of the dark, so the fireflies came to light his way home.",
    "The tiny turtle raced the wind across the beach, and all the crabs came out of the sand to cheer for him.",
    "In the garden the friendly robot planted seeds, and when the rain came, flowers grew as tall as the house.",
)

ROOM_SCRIPT = r"""
import asyncio, json, sys, numpy as np
from audio import echo
from audio.capture import Microphone
from audio.echo import EchoCanceller, EchoReference
from audio.playback import SoundDeviceSink
from audio.speech import read_wav

async def main(plan_json, out_npy):
    plan = json.load(open(plan_json))
    reference = EchoReference()
    canceller = EchoCanceller(reference)
    # each block as the microphone heard it and as SpeexDSP left it, before the gate (audio.echo.gate)
    heard, cancelled, seen = [], [], []
    real_gate, cancel = echo.gate, canceller.process
    def keep(frames, out):
        seen.append((frames.copy(), out.copy()))
        return real_gate(frames, out)
    def process(samples, adc_s):
        seen.clear()
        out = cancel(samples, adc_s)
        heard.append(seen[0][0] if seen else out.copy())
        cancelled.append(seen[0][1] if seen else out.copy())
        return out
    echo.gate, canceller.process = keep, process
    mic = Microphone("", 30, canceller=canceller)
    mic.open()
    frames = []
    async def read():
        while True:
            frames.append(await mic.read())
    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)
    said = []
    for story in plan:
        audio = read_wav(open(story["story"], "rb").read())
        sink = SoundDeviceSink("", 22050, 1.0, reference)
        async def child(words):
            await asyncio.sleep(1.0)
            for word in words:
                said.append([word, sum(len(f) for f in heard)])
                player = await asyncio.create_subprocess_exec("paplay", "-d", "room", word)
                await asyncio.gather(player.wait(), asyncio.sleep(WORD_EVERY_S))
        child_task = asyncio.create_task(child(story["words"]))
        await sink.play(audio)
        await child_task
        await sink.close()
        await asyncio.sleep(1.5)  # the canceller's tail, as between two stories
    reader.cancel()
    mic.close()
    np.savez(out_npy, heard=np.concatenate(heard), cancelled=np.concatenate(cancelled))
    json.dump(said, open(out_npy + ".json", "w"))

asyncio.run(main(sys.argv[1], sys.argv[2]))
""".replace("WORD_EVERY_S", str(WORD_EVERY_S))


def utterances(samples: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) sample indices of what the listener takes for utterances while the robot speaks: its detector
    at the default configuration, frames under COMMAND_MIN_LEVEL_DBFS silent, an utterance over after
    COMMAND_END_SILENCE_S of silence (the pre-roll included, as the listener hands it to the recognizer)."""
    from audio.speech import frame_levels_dbfs
    from audio.vad import EnergyVad, VadEvent, VadSettings
    from robot.listener import COMMAND_END_SILENCE_S, COMMAND_MIN_LEVEL_DBFS
    from robot.plumbing.config import load_config

    config = load_config(None, [], use_system=False)
    v, frame_ms = config.vad, config.audio.block_ms
    vad = EnergyVad(
        VadSettings(frame_ms, v.margin_db, v.min_level_dbfs, v.preroll_ms, v.min_speech_ms, v.end_silence_ms, 3.0)
    )
    frame = frame_ms * 16
    levels = frame_levels_dbfs(samples[: len(samples) // frame * frame].reshape(-1, frame))
    out, start, silent = [], None, 0
    for i, level in enumerate(levels):
        level = -120.0 if level < COMMAND_MIN_LEVEL_DBFS else level
        result = vad.process(samples[i * frame : (i + 1) * frame], level)
        if result.event is VadEvent.STARTED:
            start, silent = i + 1 - len(result.frames), 0
        elif start is not None:
            silent = 0 if vad.is_voiced(level) else silent + 1
            if silent * frame_ms >= COMMAND_END_SILENCE_S * 1000 or result.event is VadEvent.ENDED:
                out.append((start * frame, (i + 1) * frame))
                vad.reset()
                start = None
    return out


ROBOT_ALONE = "(the robot's voice)"
WORD_S = 0.9  # a word said is taken to last this long


def gated(heard: np.ndarray, cancelled: np.ndarray) -> np.ndarray:
    """The capture as the listener gets it: the canceller's gate (audio.echo.gate) applied to the frames SpeexDSP
    worked on (those where cancelled differs from heard; elsewhere the canceller let the microphone through)."""
    from audio.echo import FRAME_SAMPLES, gate

    whole = len(heard) // FRAME_SAMPLES * FRAME_SAMPLES
    heard_frames = heard[:whole].reshape(-1, FRAME_SAMPLES)
    out = cancelled[:whole].reshape(-1, FRAME_SAMPLES).copy()
    worked = (heard_frames != out).any(axis=1)
    done = out[worked]
    gate(heard_frames[worked].ravel(), done.ravel())
    out[worked] = done
    return out.ravel()


def labelled_utterances(path: Path) -> tuple[list[np.ndarray], list[bool], list[str]]:
    """A recording's utterances as the listener would cut them from the gated capture, with whether each is a stop
    and the text said in it (ROBOT_ALONE: none); an utterance with two words said in it is left out."""
    with np.load(path) as f:
        capture = gated(f["heard"], f["cancelled"])
        said = list(zip(f["said_at"].tolist(), f["texts"].tolist(), f["labels"].tolist(), strict=True))
    pieces, labels, texts = [], [], []
    for start, end in utterances(capture):
        words = [(text, is_stop) for at, text, is_stop in said if at < end and start < at + int(WORD_S * 16000)]
        if len(words) > 1:
            continue  # two words in one utterance: neither is a clean example
        pieces.append(capture[start:end])
        labels.append(bool(words and words[0][1]))
        texts.append(words[0][0] if words else ROBOT_ALONE)
    return pieces, labels, texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=400, help="words said into the room")
    parser.add_argument("--seed", type=int, default=2, help="picks the training voices (not the tests')")
    parser.add_argument("--out", type=Path, required=True, help="the recording (.npz)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    room = SoundRoom.start()
    from tests.bargein import leaky_loopback

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        stories = []
        for i, text in enumerate(STORIES):
            path = tmp / f"story-{i}.wav"
            subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True)
            stories.append(path)
        voices = training.random_voices(max(8, args.words // 10), rng)
        choices = [(t, True) for t in training.POSITIVES] * (len(training.NEGATIVES) // 4) + [
            (t, False) for t in training.NEGATIVES
        ]
        said_words: list[tuple[str, bool, str, Path]] = []
        for i in range(args.words):
            text, is_stop = choices[rng.integers(len(choices))]
            voice = voices[rng.integers(len(voices))]
            samples = training.render(text, voice, tmp)
            path = tmp / f"word-{i}.wav"
            subprocess.run(
                ["sox", "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", "-", str(path),
                 "gain", f"{rng.uniform(-8, 0):.1f}"],
                input=samples.tobytes(), check=True,
            )  # fmt: skip
            said_words.append((text, is_stop, voice.describe(), path))
        plan = [
            {"story": str(stories[k % len(stories)]), "words": [str(w[3]) for w in said_words[i : i + WORDS_PER_STORY]]}
            for k, i in enumerate(range(0, len(said_words), WORDS_PER_STORY))
        ]
        (tmp / "plan.json").write_text(json.dumps(plan))
        out = tmp / "heard.npz"
        print(f"{len(said_words)} words over {len(plan)} stories in the leaky room ...", flush=True)
        with leaky_loopback():
            subprocess.run(
                [sys.executable, "-c", ROOM_SCRIPT, str(tmp / "plan.json"), str(out)],
                env=room.env(), cwd=str(ROOT), check=True, timeout=60 + 12 * len(plan),
            )  # fmt: skip
        with np.load(out) as f:
            heard, cancelled = f["heard"], f["cancelled"]
        said_at = {path: at for path, at in json.loads(Path(str(out) + ".json").read_text())}
    np.savez_compressed(
        args.out,
        heard=heard,
        cancelled=cancelled,
        said_at=np.array([said_at[str(w[3])] for w in said_words]),
        texts=np.array([w[0] for w in said_words]),
        labels=np.array([w[1] for w in said_words]),
        voices=np.array([w[2] for w in said_words]),
    )
    pieces, labels, texts = labelled_utterances(args.out)
    robot_alone = texts.count(ROBOT_ALONE)
    print(
        f"wrote {args.out}: {len(heard) / 16000:.0f} s; {len(pieces)} utterances: {len(pieces) - robot_alone} of "
        f"the {len(said_words)} words said ({sum(labels)} of them stop), {robot_alone} of the robot's voice alone"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
