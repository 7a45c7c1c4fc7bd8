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

    def use_commands(self, is_command: bool) -> None:
        """Between utterances: listen for the command phrases only (while the robot speaks), or for requests."""
        ...


class VoskRecognizer:
    name = "vosk"

    def __init__(self, model_dir: str, grammar: tuple[str, ...] = (), commands: tuple[str, ...] = ()) -> None:
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
        # [unk] catches speech outside the command phrases, where the model has it
        self._commands = json.dumps([*commands, "[unk]"], ensure_ascii=False) if commands else None
        self._is_command = False
        self._new_recognizer()

    def use_commands(self, is_command: bool) -> None:
        is_command = is_command and self._commands is not None
        if is_command != self._is_command:
            self._is_command = is_command
            self._new_recognizer()

    def _new_recognizer(self) -> None:
        import vosk

        grammar = self._commands if self._is_command else self._grammar
        if grammar:
            self._rec = vosk.KaldiRecognizer(self._model, SAMPLE_RATE_HZ, grammar)
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

    def __init__(
        self,
        grammar: tuple[str, ...] = (),
        jsgf_file: str | None = None,
        cmn_file: str | None = None,
        commands: tuple[str, ...] = (),
    ) -> None:
        """grammar: phrases to choose from; jsgf_file: a JSGF grammar; neither: the general English model.

        cmn_file keeps the adapted cepstral mean across restarts, so only a new device's first request needs
        a second pass.
        """
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise AsrError(f"pocketsphinx is not installed ({e})") from None
        try:
            # bestpath (a lattice pass at the end of each utterance) costs 0.5-1.7 s after the child stops
            # speaking and made no transcript better in our tests
            self._decoder = Decoder(samprate=SAMPLE_RATE_HZ, loglevel="FATAL", bestpath=False)
        except Exception as e:
            raise AsrError(f"pocketsphinx: cannot load its model ({e})") from None
        try:
            if grammar:
                self._use_jsgf(_phrase_grammar(grammar))
            elif jsgf_file:
                self._use_jsgf(Path(jsgf_file).read_text(encoding="utf-8"))
        except (OSError, RuntimeError, ValueError) as e:
            raise AsrError(f"pocketsphinx: cannot use grammar {jsgf_file or list(grammar)} ({e})") from None
        self._request_search = self._decoder.current_search()
        self._command_words: frozenset[str] = frozenset()
        if commands:
            try:
                self._decoder.add_jsgf_string("commands", _command_grammar(commands))
            except (RuntimeError, ValueError) as e:
                raise AsrError(f"pocketsphinx: cannot use the command phrases {list(commands)} ({e})") from None
            self._command_words = frozenset(w for p in commands for w in p.lower().split())
        self._is_command = False
        self._is_started = False
        self._partial = ""
        self._utterance: list[bytes] = []  # kept for a second pass while the cepstral mean is cold
        self._cmn_file = Path(cmn_file) if cmn_file else None
        self._is_cmn_warm = self._restore_cmn()

    def _restore_cmn(self) -> bool:
        if self._cmn_file is None:
            return False
        try:
            values = self._cmn_file.read_text().strip()
            if len(values.split(",")) != 13:
                raise ValueError(f"expected 13 comma-separated numbers, got {values[:80]!r}")
            [float(v) for v in values.split(",")]
            self._decoder.set_cmn(values)
        except FileNotFoundError:
            return False
        except (OSError, ValueError, RuntimeError) as e:
            log.warning("ignoring the saved cepstral mean in %s: %s", self._cmn_file, e)
            return False
        return True

    def _save_cmn(self) -> None:
        if self._cmn_file is None:
            return
        try:
            self._cmn_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._cmn_file.with_name(self._cmn_file.name + ".tmp")
            tmp.write_text(self._decoder.get_cmn(False))
            tmp.replace(self._cmn_file)
        except OSError as e:
            log.warning("cannot save the cepstral mean to %s: %s", self._cmn_file, e)

    def _use_jsgf(self, text: str) -> None:
        self._decoder.add_jsgf_string("grammar", text)
        self._decoder.activate_search("grammar")

    def use_commands(self, is_command: bool) -> None:
        is_command = is_command and bool(self._command_words)
        if is_command != self._is_command and not self._is_started:
            self._is_command = is_command
            self._decoder.activate_search("commands" if is_command else self._request_search)

    def accept(self, pcm: bytes) -> str | None:
        if not self._is_started:
            self._decoder.start_utt()
            self._is_started = True
        self._decoder.process_raw(pcm, False, False)
        if not self._is_cmn_warm:
            self._utterance.append(pcm)
        hyp = self._decoder.hyp()
        partial = self._words(hyp.hypstr) if hyp is not None else ""
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
        if not self._is_cmn_warm:
            # Live cepstral-mean normalisation starts from a generic mean, which garbles a fresh decoder's
            # first utterance; having heard it once, the decoder hears it again with the mean adapted.
            self._is_cmn_warm = True
            self._decoder.start_utt()
            self._decoder.process_raw(b"".join(self._utterance), False, True)
            self._decoder.end_utt()
            self._utterance = []
        self._save_cmn()
        hyp = self._decoder.hyp()
        return self._words(hyp.hypstr).strip() if hyp is not None else ""

    def _words(self, hypothesis: str) -> str:
        """In command mode the filler words of the grammar are reported as [unk], as Vosk does."""
        if not self._is_command:
            return hypothesis
        return " ".join(w if w in self._command_words else "[unk]" for w in hypothesis.split())


# Common words of stories and of children talking over them: in command mode anything that is not a command
# is decoded as these, instead of being forced onto the nearest command.
_FILLER_WORDS = (
    "the a and was he she it they to of in on with said little once upon time there day very happy his her "
    "but so then one had saw went big friend play wanted loved dragon cat dog girl boy mom dad yes no what "
    "why how look come go we you i me my is are be can do like want see fun tree house sun moon water tea "
    "cake bird fish home night sleep good"
).split()


def _command_grammar(commands: tuple[str, ...]) -> str:
    alternatives = " | ".join(" ".join(p.lower().split()) for p in commands if p.strip())
    fillers = " | ".join(w for w in _FILLER_WORDS if w not in {x for p in commands for x in p.lower().split()})
    return (
        "#JSGF V1.0;\ngrammar commands;\n"
        f"public <utterance> = <command> | <filler>+;\n<command> = {alternatives};\n<filler> = {fillers};\n"
    )


def _phrase_grammar(phrases: tuple[str, ...]) -> str:
    alternatives = " | ".join(" ".join(p.lower().split()) for p in phrases if p.strip())
    return f"#JSGF V1.0;\ngrammar phrases;\npublic <phrase> = {alternatives};\n"


def build_recognizer(
    backend: str,
    vosk_model: str,
    grammar: tuple[str, ...],
    jsgf_file: str | None = None,
    state_dir: str | None = None,
    commands: tuple[str, ...] = (),
) -> Recognizer:
    """commands: the phrases listened for while the robot speaks (Recognizer.use_commands)."""
    if backend == "vosk":
        return VoskRecognizer(os.path.expanduser(vosk_model), grammar, commands)
    if backend == "pocketsphinx":
        cmn_file = os.path.join(state_dir, "pocketsphinx-cmn") if state_dir else None
        return PocketSphinxRecognizer(grammar, jsgf_file, cmn_file, commands)
    raise AsrError(f"unknown recognizer {backend!r}")
