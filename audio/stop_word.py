"""The word "stop" told apart from other short utterances by a small classifier of our own (asr.stop_word).

While the robot tells a story the listener cuts the microphone's sound into utterances (robot/listener.py) and
decodes each with PocketSphinx's command grammar. Over a loud story, what reaches it is the echo canceller's output:
the child's word with the robot's own voice left under it, 9-14 dB below it. PocketSphinx's adult model decodes few
child-like "stop"s there (5 of 24 measured in the leaky sound room). This classifier is trained for exactly that
case: one short utterance, in voices from a child's to an adult's, clean, with a synthetic voice underneath, and as
recorded through the leaky sound room's canceller (scripts/record_stop_words.py). In the daemon's trials there
(scripts/bench_echo.py --trials 10 --all-child-voices, tests/test_barge_in.py: six child-like voices held out of
training) a "stop" over a story at full volume stopped it within 1 s of the word in 6 to 10 of 10 in eight runs,
the listener asking it 0.5 s after the word's peak (robot/listener.py STOP_WORD_AFTER_PEAK_S). On by default
(asr.stop_word): in 80 stories told in the leaky room it took none of the robot's own words for "stop".

Features: the utterance's log-mel spectrogram (25 ms windows every 10 ms, BANDS bands), trimmed to its loud part,
averaged into STEPS equal slices of time and shifted so its loudest value is 0 dB, plus its length; and the 0.6 s
around its loudest 200 ms, which bursts of the robot's voice around the word do not move. The classifier is
a one-hidden-layer perceptron. Its weights, input scaling and cutoff come from scripts/train_stop_word.py (trained
with scikit-learn there; here it is two matrix products in NumPy: with the features, 1.2-1.4 ms of CPU per second of
utterance), which says which voices it was trained on and which were held out to measure it.

The mel filter bank is written here rather than taken from a library: the one library that does it well (librosa)
brings numba and LLVM, hundreds of megabytes a 256 MB board does not have, for twenty lines of NumPy.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE_HZ = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
FFT = 512
BANDS = 32
LOW_HZ, HIGH_HZ = 100.0, 7000.0
STEPS = 8  # slices of time the utterance is averaged into
TRIM_DB = 25.0  # frames this far below the loudest are the utterance's surroundings, not its word
PEAK_WIDTH = 20  # frames: the loudest 200 ms
PEAK_BEFORE, PEAK_AFTER = 21, 39  # frames around its middle (multiples of 3)
SIZE = STEPS * BANDS + 1 + (PEAK_BEFORE + PEAK_AFTER) // 3 * BANDS // 2
MIN_FRAMES = 8  # 80 ms: shorter is a click, not a word
MAX_S = 1.5  # longer is not the one word

MODEL_NAME = "stop-word.npz"  # in the assets' asr directory (the daemon finds them with engines.assets.assets_dir)
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "asr" / MODEL_NAME  # ... of the source tree


class StopWordError(RuntimeError):
    """The classifier's file is missing or not one of ours; the message names the file and what is wrong."""


@functools.lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """(BANDS, FFT // 2 + 1) triangular filters, equally spaced on the mel scale from LOW_HZ to HIGH_HZ."""
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(LOW_HZ), mel(HIGH_HZ), BANDS + 2))
    bins = np.fft.rfftfreq(FFT, 1.0 / RATE_HZ)
    rising = (bins[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - bins[None, :]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(samples: np.ndarray) -> np.ndarray:
    """(frames, BANDS) log-mel energies in dB of 16 kHz int16 samples."""
    x = np.asarray(samples, dtype=np.float32) / 32768.0
    if len(x) < WINDOW:
        x = np.pad(x, (0, WINDOW - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::HOP] * np.hanning(WINDOW).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, FFT)) ** 2
    return 10.0 * np.log10(power @ _mel_filters().T + 1e-10)


def features(samples: np.ndarray) -> np.ndarray | None:
    """The classifier's input for one utterance, or None when it is no single word (too short, too long): the loud
    part averaged into STEPS slices of time (_sliced), then the 0.6 s around its loudest 200 ms (_around_peak)."""
    spectrum = log_mel(samples)
    sliced = _sliced(spectrum)
    return None if sliced is None else np.concatenate([sliced, _around_peak(spectrum)]).astype(np.float32)


def _sliced(spectrum: np.ndarray) -> np.ndarray | None:
    energy_db = 10.0 * np.log10(np.sum(10.0 ** (spectrum / 10.0), axis=1))
    loud = np.flatnonzero(energy_db >= energy_db.max() - TRIM_DB)
    word = spectrum[loud[0] : loud[-1] + 1]
    if len(word) < MIN_FRAMES or len(word) * HOP > MAX_S * RATE_HZ:
        return None
    sliced = np.stack([s.mean(axis=0) for s in np.array_split(word, STEPS)])
    sliced -= sliced.max()
    return np.concatenate([sliced.ravel(), [np.log(len(word) * HOP / RATE_HZ)]])


def _around_peak(spectrum: np.ndarray) -> np.ndarray:
    """PEAK_BEFORE and PEAK_AFTER frames around the middle of the loudest 200 ms (the vowel: over a loud story the
    echo canceller's gate, audio/echo.py gate, lowers the low band of a child's quiet "s" with the echo around it,
    and bursts of the robot's voice around the word move where the loud part seems to begin and end), averaged over
    3 frames and 2 bands, its loudest 0 dB, floored at -60 dB."""
    energy = np.sum(10.0 ** (spectrum / 10.0), axis=1)
    width = min(PEAK_WIDTH, len(energy))
    top = int(np.argmax(np.convolve(energy, np.ones(width), "valid"))) + width // 2
    around = spectrum[max(0, top - PEAK_BEFORE) : top + PEAK_AFTER]
    left = max(0, PEAK_BEFORE - top)
    around = np.pad(around, ((left, PEAK_BEFORE + PEAK_AFTER - len(around) - left), (0, 0)), mode="edge")
    around = np.maximum(around - around.max(), -60.0)
    return around.reshape(-1, 3, BANDS // 2, 2).mean(axis=(1, 3)).ravel()


@dataclass(frozen=True)
class StopWord:
    """The trained classifier: probability() of one utterance's samples being the word "stop"."""

    mean: np.ndarray
    scale: np.ndarray
    hidden_weights: np.ndarray
    hidden_bias: np.ndarray
    out_weights: np.ndarray
    out_bias: float
    cutoff: float
    about: dict  # how it was trained and measured (scripts/train_stop_word.py)

    @classmethod
    def load(cls, path: Path | None = None, cutoff: float | None = None) -> StopWord:
        """path: None for the shipped classifier (DEFAULT_MODEL); cutoff: the probability an utterance must pass
        (None: the one chosen when it was trained)."""
        path = DEFAULT_MODEL if path is None else path
        try:
            with np.load(path, allow_pickle=False) as f:
                parts = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise StopWordError(
                f"{path}: the stop-word classifier is missing (scripts/train_stop_word.py makes it)"
            ) from None
        except (OSError, ValueError, EOFError) as e:
            raise StopWordError(f"{path}: not a stop-word classifier ({e})") from None
        wanted = {"mean", "scale", "hidden_weights", "hidden_bias", "out_weights", "out_bias", "cutoff", "about"}
        if missing := wanted - parts.keys():
            raise StopWordError(f"{path}: not a stop-word classifier (no {', '.join(sorted(missing))})")
        if parts["mean"].shape != (SIZE,) or parts["hidden_weights"].shape[0] != SIZE:
            raise StopWordError(
                f"{path}: made for {parts['mean'].shape[0]} features, this code makes {SIZE} "
                "(train it again with scripts/train_stop_word.py)"
            )
        return cls(
            mean=parts["mean"],
            scale=parts["scale"],
            hidden_weights=parts["hidden_weights"],
            hidden_bias=parts["hidden_bias"],
            out_weights=parts["out_weights"],
            out_bias=float(parts["out_bias"]),
            cutoff=float(parts["cutoff"]) if cutoff is None else cutoff,
            about=json.loads(str(parts["about"])),
        )

    def probability(self, samples: np.ndarray | bytes) -> float:
        """samples: 16 kHz int16, as an array or as PCM bytes."""
        if isinstance(samples, bytes):
            samples = np.frombuffer(samples, dtype=np.int16)
        x = features(samples)
        return 0.0 if x is None else self.probability_of(x[None, :])[0]

    def probability_of(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for rows of features() (training and benchmarks)."""
        hidden = np.maximum(0.0, ((x - self.mean) / self.scale) @ self.hidden_weights + self.hidden_bias)
        return 1.0 / (1.0 + np.exp(-(hidden @ self.out_weights + self.out_bias)))

    def is_stop(self, samples: np.ndarray) -> bool:
        return self.probability(samples) >= self.cutoff

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            mean=self.mean,
            scale=self.scale,
            hidden_weights=self.hidden_weights,
            hidden_bias=self.hidden_bias,
            out_weights=self.out_weights,
            out_bias=np.float64(self.out_bias),
            cutoff=np.float64(self.cutoff),
            about=np.array(json.dumps(self.about)),
        )
