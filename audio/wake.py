"""A wake word heard in the microphone's frames: a small keyword model (microWakeWord, through pymicro-wakeword).

asr.wake_word names one of the models pymicro-wakeword's wheel carries. In `storybot run` the robot then takes a
request only after the wake word (or a press): radio talk and grown-ups talking start nothing, whatever they say.
The wake word is a spoken press: idle, the robot chimes and listens for the request; thinking or speaking, it stops
the story.

The models were trained on many synthetic voices; scripts/bench_wake_word.py measures which of our synthetic voices
they hear. The wheels exist for x86-64, aarch64 and armv7l (not riscv64): elsewhere asr.wake_word is refused at
start-up with that reason.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MODELS = {"alexa": "Alexa", "hey_jarvis": "Hey Jarvis", "hey_mycroft": "Hey Mycroft", "okay_nabu": "Okay Nabu"}
RATE_HZ = 16000
# A model's averaged probability stays above its cutoff for several steps of one saying of the word: once heard,
# the word is not heard again for this long.
REFRACTORY_S = 1.5
# A rise of the averaged probability over this that falls back without passing the cutoff is logged (DEBUG): how
# near a word said over the robot's voice came, for a missed stop's post-mortem.
NEAR_MISS = 0.05
# The model's features come through a front end that keeps a running estimate of each band's noise (and scales
# the band by it). While the robot speaks, what the echo canceller leaves of its voice raises that estimate, and a
# word said after it is heard as if through noise: in the leaky sound room a child-like "okay nabu" the model gave
# 0.27 in the stream gave 0.63 to a front end started afresh 0.3 s before it (and talk a moment before the word does
# the same in a quiet room). So each utterance is also heard by a second front end and model started afresh at its
# pre-roll (hear_afresh()), for this long.
AFRESH_S = 3.0
# The audio kept for hear_afresh(): a pre-roll and a block, and then some.
BACKLOG_S = 1.0

log = logging.getLogger(__name__)


class WakeWordError(RuntimeError):
    """The wake word cannot be listened for here; the message says why and what to do."""


class WakeWord:
    """Feed it the microphone's 16 kHz int16 frames with hear(); it answers True once per saying of the word."""

    def __init__(self, name: str, cutoff: float | None = None, speaking_cutoff: float | None = None) -> None:
        """cutoff: the averaged probability the word must pass (None: the model's own, e.g. 0.85 for okay_nabu);
        speaking_cutoff: the same while the robot speaks (None: cutoff), where what is heard is the echo
        canceller's output and the robot's voice left in it lowers the word's probability."""
        if name not in MODELS:
            raise WakeWordError(f"unknown wake word {name!r} (known: {', '.join(MODELS)})")
        try:
            from pymicro_wakeword import MicroWakeWord, Model
        except ImportError as e:
            raise WakeWordError(
                f"asr.wake_word = {name!r} needs pymicro-wakeword ({e}); install it with "
                "pip install 'storybot[wake]' (wheels for x86-64, aarch64 and armv7l)"
            ) from None
        try:
            models = [MicroWakeWord.from_builtin(Model(name)) for _ in range(2)]
        except (OSError, ValueError) as e:  # its TFLite library or model file cannot be loaded on this machine
            raise WakeWordError(f"wake word {name!r}: its model does not load here ({e})") from None
        self.cutoff = models[0].probability_cutoff if cutoff is None else cutoff
        self.speaking_cutoff = self.cutoff if speaking_cutoff is None else speaking_cutoff
        self.name = name
        self.phrase = MODELS[name]
        self._stream = _Pipeline(models[0], "")  # everything heard
        self._afresh = _Pipeline(models[1], " (heard afresh)")  # one utterance, from its pre-roll
        self._afresh_left = 0  # samples the afresh pipeline still hears
        self._is_pending = False  # it heard the word in what hear_afresh() gave it
        self._backlog = bytearray()  # the last BACKLOG_S heard, for hear_afresh()
        self._quiet_samples = 0  # samples still ignored after a detection
        # measurements, for the benchmark and the log: CPU seconds spent, audio seconds heard
        self.cpu_s = 0.0
        self.heard_s = 0.0

    def hear(self, samples: np.ndarray, is_speaking: bool = False) -> bool:
        """True when the word ends within samples (and was not heard within REFRACTORY_S before); is_speaking: the
        robot is speaking (speaking_cutoff)."""
        began = time.thread_time()
        pcm = samples.astype("<i2", copy=False).tobytes()
        cutoff = self.speaking_cutoff if is_speaking else self.cutoff
        is_heard, self._is_pending = self._stream.hear(pcm, cutoff) or self._is_pending, False
        if self._afresh_left > 0:
            is_heard = self._afresh.hear(pcm, cutoff) or is_heard
            self._afresh_left -= len(samples)
        self._backlog += pcm
        del self._backlog[: max(0, len(self._backlog) - int(BACKLOG_S * RATE_HZ) * 2)]
        is_heard = is_heard and self._quiet_samples <= 0
        if is_heard:
            self._quiet_samples = int(REFRACTORY_S * RATE_HZ)
        self._quiet_samples = max(0, self._quiet_samples - len(samples))
        self.cpu_s += time.thread_time() - began
        self.heard_s += len(samples) / RATE_HZ
        return is_heard

    def hear_afresh(self, back_s: float, is_speaking: bool = True) -> None:
        """An utterance began within the last back_s of what was heard: a second front end and model, started
        afresh, hear it from there, and then everything hear() is given for AFRESH_S (see AFRESH_S)."""
        began = time.thread_time()
        self._afresh.restart()
        back = min(len(self._backlog), int(back_s * RATE_HZ) * 2)
        self._afresh_left = int(AFRESH_S * RATE_HZ) - back // 2
        pcm = bytes(self._backlog[len(self._backlog) - back :])
        # the word cannot end in its own pre-roll, but should it, the next hear() says so
        self._is_pending = self._afresh.hear(pcm, self.speaking_cutoff if is_speaking else self.cutoff)
        self.cpu_s += time.thread_time() - began


class _Pipeline:
    """A front end and a model, streaming."""

    def __init__(self, model, label: str) -> None:
        from pymicro_wakeword import MicroWakeWordFeatures

        self._model = model
        self._label = label
        self._features = MicroWakeWordFeatures()
        self._steps = 0  # feature windows given to the model
        self._rise_peak = 0.0  # the highest averaged probability of the rise now under way (0: none)
        self._is_after_hit = False  # ... which passed the cutoff (the word was heard: no near miss)

    def restart(self) -> None:
        from pymicro_wakeword import MicroWakeWordFeatures

        self._model.reset()
        self._features = MicroWakeWordFeatures()
        self._steps = 0
        self._rise_peak, self._is_after_hit = 0.0, False

    def hear(self, pcm: bytes, cutoff: float) -> bool:
        """True when the averaged probability passes cutoff within pcm (16 kHz int16)."""
        is_heard = False
        for features in self._features.process_streaming(pcm):
            probability = self._model.process_streaming_prob(features)
            self._steps += 1
            if probability is None or self._steps % self._model.stride:
                continue  # the model runs once every stride feature windows, and answers 0 in between
            if probability > cutoff:
                is_heard = self._is_after_hit = True
            elif probability > NEAR_MISS:
                self._rise_peak = max(self._rise_peak, probability)
            else:
                if self._rise_peak and not self._is_after_hit:
                    log.debug("wake word not heard%s: its probability rose to %.2f (cutoff %.2f)", self._label,
                              self._rise_peak, cutoff)  # fmt: skip
                self._rise_peak, self._is_after_hit = 0.0, False
        return is_heard
