"""storybot's exit statuses, defined once (sysexits.h values). systemd/storybot.service lists the permanent ones in
RestartPreventExitStatus; the CLI's --help epilog is made from this table."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    OK = 0
    FAIL = 1  # python -m robot.memory.swap: the swap set-up failed
    USAGE = 64  # EX_USAGE: a bad command line
    BAD_MODEL = 65  # EX_DATAERR: the model is bad (no engine can run it)
    UNAVAILABLE = 69  # EX_UNAVAILABLE: no microphone, no speech, no engine, or no model fits this machine
    CONFIG = 78  # EX_CONFIG: a configuration error


# what `storybot --help` says of them
MEANINGS = {Exit.OK: "done", Exit.BAD_MODEL: "bad model", Exit.UNAVAILABLE: "no microphone or engine",
            Exit.CONFIG: "configuration error"}  # fmt: skip


def epilog_line() -> str:
    return "exit status: " + ", ".join(f"{int(code)} {words}" for code, words in MEANINGS.items()) + "."
