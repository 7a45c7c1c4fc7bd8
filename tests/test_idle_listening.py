"""Listening to a quiet room cheaply: block-wise VAD levels, quiet blocks taken at once, quiet audio held in the
capture thread until there is sound. The CPU figure itself is measured by scripts/bench_idle.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audio.speech import frame_levels_dbfs, rms_dbfs
from audio.vad import EnergyVad, VadEvent
from tests.test_audio import SETTINGS  # the detector's settings of the voice-activity tests


def test_block_levels_are_the_frame_levels():
    rng = np.random.default_rng(3)
    block = rng.normal(0, 2000, (5, 480)).astype(np.int16)
    block[1] = 0
    block[2] = 32767
    block[3] = rng.normal(0, 3, 480).astype(np.int16)
    assert frame_levels_dbfs(block) == pytest.approx([rms_dbfs(frame) for frame in block], abs=1e-3)


def _events(vad: EnergyVad, samples: np.ndarray, is_blockwise: bool) -> list[tuple[int, VadEvent, int]]:
    frames = samples[: len(samples) // 1440 * 1440].reshape(-1, 3, 480)
    events = []
    for b, block in enumerate(frames):
        levels = frame_levels_dbfs(block)
        if is_blockwise and vad.take_quiet(block, levels):
            continue
        for i, (frame, level) in enumerate(zip(block, levels, strict=True)):
            result = vad.process(frame, level)
            if result.event is not VadEvent.NONE:
                events.append((3 * b + i, result.event, len(result.frames)))
    return events


def test_taking_quiet_blocks_at_once_finds_the_same_utterances_as_frame_by_frame(espeak):
    rng = np.random.default_rng(0)
    room = lambda s, sd: rng.normal(0, sd, int(16000 * s)).astype(np.int16)  # noqa: E731
    speech = espeak("tell me a story about a dragon who loves tea")
    audio = np.concatenate(
        [room(1.5, 10), speech + room(len(speech) / 16000, 10), room(2.0, 10), room(1.0, 200), speech, room(1.5, 10)]
    )
    frame_by_frame = _events(EnergyVad(SETTINGS), audio, is_blockwise=False)
    blockwise_vad = EnergyVad(SETTINGS)
    blockwise = _events(blockwise_vad, audio, is_blockwise=True)
    assert [e[1] for e in frame_by_frame].count(VadEvent.STARTED) == 2
    assert blockwise == frame_by_frame
    quiet = np.zeros((3, 480), dtype=np.int16)
    assert blockwise_vad.take_quiet(quiet, frame_levels_dbfs(quiet))
    loud = (quiet + 3000).astype(np.int16)
    assert not blockwise_vad.take_quiet(loud, frame_levels_dbfs(loud))  # nothing taken: it goes frame by frame


CAPTURE_SCRIPT = """
import asyncio, json, time
import numpy as np
from audio.capture import Microphone
async def main():
    mic = Microphone("", 30)
    mic.hold_quiet_below(-50.0)
    mic.open()
    await mic.read_block()  # audio flows (a stream can take a second or two to start)
    started = time.monotonic()
    blocks = []
    player = None
    while time.monotonic() - started < 5.0:
        block = await mic.read_block()
        now = time.monotonic() - started
        blocks.append([now, len(block), float(np.abs(block).max())])
        if player is None and now > 2.5:
            player = await asyncio.create_subprocess_exec("paplay", "-d", "room", TONE)
    await player.wait()
    mic.close()
    print(json.dumps(blocks))
asyncio.run(main())
"""


@pytest.mark.soundroom
def test_a_quiet_room_is_handed_over_twice_a_second_and_sound_at_once(sound_room, tmp_path):
    tone = tmp_path / "tone.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(tone), "synth", "1.0", "sine", "440", "vol", "0.5"],
        check=True,
    )
    proc = subprocess.run(
        [sys.executable, "-c", CAPTURE_SCRIPT.replace("TONE", repr(str(tone)))],
        env=sound_room.env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks = json.loads(proc.stdout.strip().splitlines()[-1])
    quiet = [b for b in blocks if b[0] < 2.5]
    loud = [b for b in blocks if b[2] > 5000]
    assert quiet and all(b[2] < 10 for b in quiet)
    # silence: about 0.5 s of frames per hand-over, not a block per 90 ms
    assert sum(b[1] for b in quiet) / len(quiet) >= 12, quiet
    assert len(quiet) <= 2.5 / 0.5 + 2
    # sound: every 90 ms block at once
    assert len(loud) >= 8 and all(b[1] <= 3 + 18 for b in loud[:1]) and all(b[1] == 3 for b in loud[1:-1]), loud
    # nothing lost: the frames handed over cover the time listened
    frames_s = sum(b[1] for b in blocks) * 0.03
    assert abs(frames_s - blocks[-1][0]) < 1.0, (frames_s, blocks[-1][0])
