"""An engine that speaks the storybot protocol and answers every generate with scripted token pieces.

For faults and content a real model cannot be made to produce on demand (a blocked word split across tokens).
    python tests/scripted_engine.py PIECES_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines import protocol as p  # noqa: E402


def main() -> int:
    pieces = json.loads(sys.argv[1])
    out = sys.stdout.buffer
    out.write(p.encode(p.Ready(engine="scripted", model="none", context_tokens=1024, load_ms=0.0)))
    out.flush()
    for line in sys.stdin.buffer:
        frame = p.decode(line)
        if isinstance(frame, p.Shutdown):
            return 0
        if not isinstance(frame, p.Generate):
            continue
        for piece in pieces:
            out.write(p.encode(p.Token(id=frame.id, text=piece)))
        out.write(
            p.encode(
                p.Done(
                    id=frame.id,
                    reason=p.StopReason.EOS,
                    tokens=len(pieces),
                    prompt_tokens=5,
                    first_token_ms=1.0,
                    total_ms=2.0,
                )
            )
        )
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
