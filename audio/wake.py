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

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MODELS = {"alexa": "Alexa", "hey_jarvis": "Hey Jarvis", "hey_mycroft": "Hey Mycroft", "okay_nabu": "Okay Nabu"}
RATE_HZ = 16000
# A model's averaged probability stays above its cutoff for several steps of one saying of the word: once heard,
# the word is not heard again for this long.
REFRACTORY_S = 1.5


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
            from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model
        except ImportError as e:
            raise WakeWordError(
                f"asr.wake_word = {name!r} needs pymicro-wakeword ({e}); install it with "
                "pip install 'storybot[wake]' (wheels for x86-64, aarch64 and armv7l)"
            ) from None
        try:
            self._model = MicroWakeWord.from_builtin(Model(name))
        except (OSError, ValueError) as e:  # its TFLite library or model file cannot be loaded on this machine
            raise WakeWordError(f"wake word {name!r}: its model does not load here ({e})") from None
        if cutoff is not None:
            self._model.probability_cutoff = cutoff
        self.cutoff = self._model.probability_cutoff
        self.speaking_cutoff = self.cutoff if speaking_cutoff is None else speaking_cutoff
        self._features = MicroWakeWordFeatures()
        self.name = name
        self.phrase = MODELS[name]
        self._quiet_samples = 0  # samples still ignored after a detection
        # measurements, for the benchmark and the log: CPU seconds spent, audio seconds heard
        self.cpu_s = 0.0
        self.heard_s = 0.0

    def hear(self, samples: np.ndarray, is_speaking: bool = False) -> bool:
        """True when the word ends within samples (and was not heard within REFRACTORY_S before); is_speaking: the
        robot is speaking (speaking_cutoff)."""
        began = time.thread_time()
        self._model.probability_cutoff = self.speaking_cutoff if is_speaking else self.cutoff
        is_heard = False
        for features in self._features.process_streaming(samples.astype("<i2", copy=False).tobytes()):
            if self._model.process_streaming(features) and self._quiet_samples <= 0:
                is_heard = True
                self._quiet_samples = int(REFRACTORY_S * RATE_HZ)
        self._quiet_samples = max(0, self._quiet_samples - len(samples))
        self.cpu_s += time.thread_time() - began
        self.heard_s += len(samples) / RATE_HZ
        return is_heard
