#!/usr/bin/env python3
"""Controls benchmark: a serial button board on a pseudo-terminal and the daemon in the virtual sound room.

  button -> listening   from the board writing DOWN to the board reading LED LISTENING back
  press -> silence      from DOWN, written while the robot tells a story, to the arrival of the first quiet 50 ms
                        chunk after the last loud one recorded from speaker.monitor (an upper bound: it includes
                        the chunk's length and parec's 20 ms latency)

Usage: .venv/bin/python scripts/bench_button.py [--runs 5]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.buttonboard import ButtonBoard  # noqa: E402
from tests.soundroom import Daemon, Recorder, SoundRoom  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    room = SoundRoom.start()
    to_listening, to_silence = [], []
    with tempfile.TemporaryDirectory() as tmp:
        request = Path(tmp) / "request.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-w", str(request), "tell me a story about a dragon who loves tea"], check=True
        )
        board = ButtonBoard()
        robot = Daemon(room, Path(tmp) / "state", f"button.serial_port='{board.path}'", "engine.max_tokens=300")
        try:
            robot.wait_until(lambda: any("listening on" in line for line in robot.stderr), 60, "listening")
            board.wait_for_led("LED IDLE", 10)
            for i in range(args.runs):
                board.leds.clear()
                pressed = board.press()
                to_listening.append(board.wait_for_led("LED LISTENING", 5) - pressed)
                time.sleep(0.6)
                room.play_into_room(request)
                board.release()
                board.wait_for_led("LED SPEAKING", 60)
                time.sleep(2.0)
                recorder = Recorder()
                time.sleep(1.0)
                recorder.wait_for_sound(5.0)
                pressed = board.press()
                board.release()
                board.wait_for_led("LED IDLE", 5)
                time.sleep(1.0)
                recorder.stop()
                silent = recorder.silent_since()
                to_silence.append((silent - pressed) if silent is not None else float("nan"))
                print(
                    f"run {i + 1}: button -> listening {to_listening[-1] * 1000:.0f} ms, "
                    f"press -> silence {to_silence[-1] * 1000:.0f} ms",
                    flush=True,
                )
                time.sleep(1.0)
            robot.proc.send_signal(signal.SIGTERM)
            robot.proc.wait(10)
        finally:
            robot.proc.kill()
            board.close()
    print(
        f"\nmedian of {args.runs}: button -> listening {statistics.median(to_listening) * 1000:.0f} ms; "
        f"press -> silence {statistics.median(to_silence) * 1000:.0f} ms (max {max(to_silence) * 1000:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
