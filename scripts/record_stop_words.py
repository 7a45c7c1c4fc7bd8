#!/usr/bin/env python3
"""Records training utterances for the stop-word classifier (scripts/train_stop_word.py --room) in the leaky sound
room: what the echo canceller really leaves of a word said over the robot's voice at full volume.

The robot's real speaker path (SoundDeviceSink, with the canceller's reference) plays short stories read by flite,
a new output stream for each, as the daemon opens one per story; everything it plays leaks back into the room
(module-loopback, as tests/bargein.py sets it up). Meanwhile the training voices of scripts/train_stop_word.py
(never the tests' voices) say "stop" and the other words into the room, one every WORD_EVERY_S, from 1 s into each
story. The real microphone path (Microphone with EchoCanceller) captures the room. Afterwards the capture is cut
into utterances as the listener cuts them while the robot speaks (robot/listener.py: COMMAND_MIN_LEVEL_DBFS,
COMMAND_END_SILENCE_S), and each utterance is labelled with the word said within it; utterances with no word in
them are the robot's own voice left by the canceller (negatives too).

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
from audio.capture import Microphone
from audio.echo import EchoCanceller, EchoReference
from audio.playback import SoundDeviceSink
from audio.speech import read_wav

async def main(plan_json, out_npy):
    plan = json.load(open(plan_json))
    reference = EchoReference()
    mic = Microphone("", 30, canceller=EchoCanceller(reference))
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
                said.append([word, sum(len(f) for f in frames)])
                player = await asyncio.create_subprocess_exec("paplay", "-d", "room", word)
                await asyncio.gather(player.wait(), asyncio.sleep(WORD_EVERY_S))
        child_task = asyncio.create_task(child(story["words"]))
        await sink.play(audio)
        await child_task
        await sink.close()
        await asyncio.sleep(1.5)  # the canceller's tail, as between two stories
    reader.cancel()
    mic.close()
    np.save(out_npy, np.concatenate(frames))
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=400, help="words said into the room")
    parser.add_argument("--seed", type=int, default=2, help="picks the training voices (not the tests')")
    parser.add_argument("--out", type=Path, required=True, help="an .npz of labelled utterances")
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
        out = tmp / "heard.npy"
        print(f"{len(said_words)} words over {len(plan)} stories in the leaky room ...", flush=True)
        with leaky_loopback():
            subprocess.run(
                [sys.executable, "-c", ROOM_SCRIPT, str(tmp / "plan.json"), str(out)],
                env=room.env(), cwd=str(ROOT), check=True, timeout=60 + 12 * len(plan),
            )  # fmt: skip
        heard = np.load(out)
        said_at = {path: at for path, at in json.loads(Path(str(out) + ".json").read_text())}
    spans = []
    for text, is_stop, voice, path in said_words:
        at = said_at[str(path)]
        spans.append((at, at + int(0.9 * 16000), text, is_stop, voice))
    pieces, labels, texts = [], [], []
    for start, end in utterances(heard):
        words = [s for s in spans if s[0] < end and start < s[1]]
        if len(words) > 1:
            continue  # two words in one utterance: neither is a clean example
        pieces.append(heard[start:end])
        labels.append(bool(words and words[0][3]))
        texts.append(words[0][2] if words else "(the robot's voice)")
    offsets = np.cumsum([0] + [len(p) for p in pieces])
    np.savez_compressed(
        args.out, samples=np.concatenate(pieces), offsets=offsets, labels=np.array(labels), texts=np.array(texts)
    )
    robot_alone = texts.count("(the robot's voice)")
    words_found = len(pieces) - robot_alone
    print(
        f"wrote {args.out}: {len(pieces)} utterances: {words_found} of the {len(said_words)} words said "
        f"({sum(labels)} of them stop), {robot_alone} of the robot's voice alone"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
