"""Streaming speech recognition behind one interface: Vosk or PocketSphinx, 16 kHz mono int16 in, text out."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000


class AsrError(RuntimeError):
    """A recognizer that cannot be built; the message names the model and why."""


class Recognizer(Protocol):
    name: str

    def accept(self, pcm: bytes) -> str | None:
        """Feed audio; return the partial transcript when it changed, else None."""
        ...

    def finish(self) -> str:
        """The final transcript of the utterance fed so far; the recognizer is then ready for the next."""
        ...


class VoskRecognizer:
    name = "vosk"

    def __init__(self, model_dir: str, grammar: tuple[str, ...] = ()) -> None:
        path = Path(model_dir)
        if not (path / "am").is_dir() and not (path / "final.mdl").exists():
            # Vosk aborts the whole process on some bad model directories: check before handing it over.
            raise AsrError(f"vosk: {model_dir} is not a Vosk model directory (no am/ inside)")
        import vosk

        vosk.SetLogLevel(-1)
        try:
            self._model = vosk.Model(str(path))
        except Exception as e:
            raise AsrError(f"vosk: cannot load the model in {model_dir} ({e})") from None
        self._grammar = json.dumps(list(grammar), ensure_ascii=False) if grammar else None
        self._new_recognizer()

    def _new_recognizer(self) -> None:
        import vosk

        if self._grammar:
            self._rec = vosk.KaldiRecognizer(self._model, SAMPLE_RATE_HZ, self._grammar)
        else:
            self._rec = vosk.KaldiRecognizer(self._model, SAMPLE_RATE_HZ)
        self._partial = ""
        self._finals: list[str] = []

    def accept(self, pcm: bytes) -> str | None:
        if self._rec.AcceptWaveform(pcm):
            text = json.loads(self._rec.Result()).get("text", "")
            if text:
                self._finals.append(text)
            partial = " ".join(self._finals)
        else:
            partial = " ".join(self._finals + [json.loads(self._rec.PartialResult()).get("partial", "")]).strip()
        if partial != self._partial:
            self._partial = partial
            return partial
        return None

    def finish(self) -> str:
        text = json.loads(self._rec.FinalResult()).get("text", "")
        words = " ".join(self._finals + ([text] if text else [])).strip()
        self._new_recognizer()
        return words


class PocketSphinxRecognizer:
    """PocketSphinx 5 with the US-English model its wheel carries."""

    name = "pocketsphinx"

    def __init__(self, grammar: tuple[str, ...] = ()) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise AsrError(f"pocketsphinx is not installed ({e})") from None
        try:
            self._decoder = Decoder(samprate=SAMPLE_RATE_HZ, loglevel="FATAL")
            if grammar:
                self._use_phrase_list(grammar)
        except Exception as e:
            raise AsrError(f"pocketsphinx: cannot load its model ({e})") from None
        self._is_started = False
        self._partial = ""

    def _use_phrase_list(self, grammar: tuple[str, ...]) -> None:
        alternatives = " | ".join(" ".join(p.lower().split()) for p in grammar if p.strip())
        self._decoder.add_jsgf_string("phrases", f"#JSGF V1.0;\ngrammar phrases;\npublic <phrase> = {alternatives};\n")
        self._decoder.activate_search("phrases")

    def accept(self, pcm: bytes) -> str | None:
        if not self._is_started:
            self._decoder.start_utt()
            self._is_started = True
        self._decoder.process_raw(pcm, False, False)
        hyp = self._decoder.hyp()
        partial = hyp.hypstr if hyp is not None else ""
        if partial != self._partial:
            self._partial = partial
            return partial
        return None

    def finish(self) -> str:
        if not self._is_started:
            return ""
        self._decoder.end_utt()
        self._is_started = False
        self._partial = ""
        hyp = self._decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


def build_recognizer(backend: str, vosk_model: str, grammar: tuple[str, ...]) -> Recognizer:
    if backend == "vosk":
        return VoskRecognizer(os.path.expanduser(vosk_model), grammar)
    if backend == "pocketsphinx":
        return PocketSphinxRecognizer(grammar)
    raise AsrError(f"unknown recognizer {backend!r}")
