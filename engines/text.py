"""Text helpers shared by engine back ends: incremental UTF-8 decoding and stop-string matching."""

from __future__ import annotations

import codecs


class StopMatcher:
    """Finds stop strings in a stream of text pieces without ever emitting a stop string or part of one.

    feed() returns the text that is safe to emit now; text that could be the start of a stop string is held
    back until the next piece shows whether it is.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.is_stopped = False

    def feed(self, piece: str) -> str:
        if self.is_stopped:
            return ""
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.is_stopped = True
            self._held = ""
            return text[:cut]
        keep = self._longest_partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of generation."""
        held, self._held = self._held, ""
        return "" if self.is_stopped else held

    def _longest_partial_suffix(self, text: str) -> int:
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


class Utf8Pieces:
    """Turns byte pieces into text, holding back an incomplete multi-byte character until it is whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
