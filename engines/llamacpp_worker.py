"""The llama.cpp engine: a child process that speaks the engine protocol (engines/protocol.py).

    python -m engines.llamacpp_worker --model MODEL.gguf [--threads N] [--context N]

stdout carries only protocol frames; stderr carries diagnostics. Exit codes are protocol.ExitCode.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from engines import protocol as p
from engines.gguf import GgufError, check_gguf
from engines.text import StopMatcher, Utf8Pieces

log = logging.getLogger("engines.llamacpp")


class FrameWriter:
    """Writes frames to stdout; both the reader thread and the generator write, so it holds a lock."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, frame: p.Frame) -> None:
        data = p.encode(frame)
        with self._lock:
            try:
                self._stream.write(data)
                self._stream.flush()
            except BrokenPipeError:
                os._exit(p.ExitCode.OK)  # the parent is gone; nobody is left to answer


def read_frames(stream: BinaryIO) -> Iterator[p.Frame | p.ProtocolError]:
    """Frames from a byte stream; an oversized or malformed line yields a ProtocolError and is skipped."""
    while True:
        line = stream.readline(p.MAX_FRAME_BYTES + 1)
        if not line:
            return
        if len(line) > p.MAX_FRAME_BYTES or not line.endswith(b"\n"):
            if not line.endswith(b"\n"):
                _skip_to_newline(stream)
            yield p.ProtocolError(f"frame longer than {p.MAX_FRAME_BYTES} bytes (or unterminated); skipped")
            continue
        if not line.strip():
            continue
        try:
            yield p.decode(line)
        except p.ProtocolError as e:
            yield e


def _skip_to_newline(stream: BinaryIO) -> None:
    while True:
        chunk = stream.readline(p.MAX_FRAME_BYTES)
        if not chunk or chunk.endswith(b"\n"):
            return


class Worker:
    """Owns one loaded model. The main thread generates; a reader thread takes frames from stdin."""

    def __init__(self, llm, context_tokens: int, writer: FrameWriter) -> None:
        self._llm = llm
        self.context_tokens = context_tokens
        self._out = writer
        self._requests: queue.Queue[p.Generate | None] = queue.Queue(maxsize=4)
        self._cancel_id: int | None = None
        self._busy_id: int | None = None
        self._lock = threading.Lock()
        self._abort_callback: object = None  # kept referenced: llama.cpp calls it while it computes

    def abort_on_cancel(self) -> None:
        """Let llama.cpp give up a token half computed when a cancel arrives. Checking only between tokens, a
        cancel waited for the token in flight: over 2.5 s on a loaded 2-core machine, where the bound is 200 ms.
        llama.cpp asks between two steps of its graph (456 per token of Gemma 3 270M, a microsecond or so each)."""
        import llama_cpp

        self._abort_callback = llama_cpp.ggml_abort_callback(lambda _data: self._is_cancelling())
        llama_cpp.llama_set_abort_callback(self._llm._ctx.ctx, self._abort_callback, None)

    def _is_cancelling(self) -> bool:
        with self._lock:
            return self._cancel_id is not None and self._cancel_id == self._busy_id

    def reader(self, stream: BinaryIO) -> None:
        for item in read_frames(stream):
            if isinstance(item, p.ProtocolError):
                self._out.send(p.Error(code=p.ErrorCode.PROTOCOL, message=str(item)))
            elif isinstance(item, p.Generate):
                self._accept(item)
            elif isinstance(item, p.Cancel):
                with self._lock:
                    if self._busy_id == item.id:
                        self._cancel_id = item.id
            elif isinstance(item, p.Shutdown):
                break
            else:
                self._out.send(p.Error(code=p.ErrorCode.PROTOCOL, message=f"{item.TYPE} is not a request frame"))
        with self._lock:
            self._cancel_id = self._busy_id  # stdin closed or shutdown: stop what is running
        self._requests.put(None)

    def _accept(self, request: p.Generate) -> None:
        with self._lock:
            busy = self._busy_id is not None or self._requests.full()
            if not busy:
                self._busy_id = request.id
        if busy:
            self._out.send(p.Error(code=p.ErrorCode.BUSY, message="a generation is already running", id=request.id))
        else:
            self._requests.put(request)

    def serve(self) -> None:
        while (request := self._requests.get()) is not None:
            try:
                reply = self._generate(request)
            except Exception as e:  # a failure of one request must not end the engine
                log.exception("generation %d failed", request.id)
                reply = p.Error(code=p.ErrorCode.INTERNAL, message=f"{type(e).__name__}: {e}", id=request.id)
            with self._lock:  # free before replying: the parent may send its next request at once
                self._busy_id = None
                self._cancel_id = None
            self._out.send(reply)

    def _is_cancelled(self, request_id: int) -> bool:
        with self._lock:
            return self._cancel_id == request_id

    def _generate(self, request: p.Generate) -> p.Done | p.Error:
        started = time.monotonic()
        llm = self._llm
        prompt_tokens = llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=request.special)
        room = self.context_tokens - len(prompt_tokens)
        if room < 1:
            return p.Error(
                code=p.ErrorCode.BAD_REQUEST,
                message=f"prompt is {len(prompt_tokens)} tokens; the context holds {self.context_tokens}",
                id=request.id,
            )
        max_tokens = min(request.max_tokens, room)
        llm.set_seed(request.seed if request.seed >= 0 else random.randrange(1 << 31))
        # Forget the previous request's cache: llama-cpp-python would reuse the part of it that matches this
        # prompt and evaluate only the rest, in batches of another shape, whose logits differ in the last bits
        # (llama.cpp's batched and single-row kernels sum in different orders); sampling then picks another
        # token now and then, and the same seed tells another story. The whole prompt is evaluated the same way
        # every time (a few milliseconds for a story prompt).
        llm.reset()
        stops = StopMatcher(request.stop)
        pieces = Utf8Pieces()
        count = 0
        first_token_ms = 0.0
        reason = p.StopReason.LENGTH
        generator = llm.generate(
            prompt_tokens,
            top_k=request.top_k,
            top_p=request.top_p,
            temp=request.temperature,
            repeat_penalty=request.repeat_penalty,
            reset=True,
        )
        try:
            for token in generator:
                if self._is_cancelled(request.id):
                    reason = p.StopReason.CANCELLED
                    break
                if count == 0:
                    first_token_ms = (time.monotonic() - started) * 1000.0
                if llm.token_is_eog(token):
                    reason = p.StopReason.EOS
                    break
                count += 1
                text = stops.feed(pieces.feed(llm.detokenize([token])))
                if text:
                    self._out.send(p.Token(id=request.id, text=text))
                if stops.is_stopped:
                    reason = p.StopReason.STOP
                    break
                if count >= max_tokens:
                    break
        except RuntimeError:  # llama_decode returned 2: aborted by abort_on_cancel (the next request resets)
            if not self._is_cancelled(request.id):
                raise
            reason = p.StopReason.CANCELLED
        generator.close()
        if reason is not p.StopReason.CANCELLED:
            tail = stops.feed(pieces.flush()) + stops.flush()
            if tail:
                self._out.send(p.Token(id=request.id, text=tail))
        return p.Done(
            id=request.id,
            reason=reason,
            tokens=count,
            prompt_tokens=len(prompt_tokens),
            first_token_ms=first_token_ms,
            total_ms=(time.monotonic() - started) * 1000.0,
        )


def load_model(path: str, threads: int, context: int, batch: int):
    """Load a GGUF model, or exit with the code that names why not."""
    try:
        check_gguf(path)
    except FileNotFoundError as e:
        _die(p.ExitCode.MODEL_MISSING, f"{path}: {e.strerror}")
    except PermissionError as e:
        _die(p.ExitCode.MODEL_MISSING, f"{path}: {e.strerror}")
    except GgufError as e:
        _die(p.ExitCode.BAD_MODEL, str(e))
    import llama_cpp  # late: importing loads the shared library

    try:
        llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=context,
            n_batch=min(batch, context),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    except MemoryError:
        _die(p.ExitCode.OUT_OF_MEMORY, f"{path}: out of memory while loading (context {context})")
    except (ValueError, RuntimeError) as e:
        _die(p.ExitCode.BAD_MODEL, f"{path}: llama.cpp could not load it ({e})")
    # our own attribute on llama.cpp's object, read by the sampler loop
    llm.token_is_eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))  # type: ignore[attr-defined]
    return llm


def _die(code: p.ExitCode, message: str) -> None:
    print(f"storybot-llamacpp: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m engines.llamacpp_worker",
        description="llama.cpp engine speaking the storybot engine protocol on stdin/stdout.",
    )
    parser.add_argument("--model", required=True, help="GGUF model file")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--context", type=int, default=1024, help="context window in tokens (default 1024)")
    parser.add_argument("--batch", type=int, default=256, help="prompt batch size in tokens (default 256)")
    args = parser.parse_args(argv)
    if not 1 <= args.threads <= 256:
        parser.error(f"--threads is {args.threads}, expected 1..256")
    if not 16 <= args.context <= 1 << 20:
        parser.error(f"--context is {args.context}, expected 16..{1 << 20}")
    if not 1 <= args.batch <= 1 << 16:
        parser.error(f"--batch is {args.batch}, expected 1..65536")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return p.ExitCode.USAGE if e.code else p.ExitCode.OK
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints from libraries must not corrupt frames
    writer = FrameWriter(stdout)
    started = time.monotonic()
    llm = load_model(args.model, args.threads, args.context, args.batch)
    # llama.cpp rounds its context up (to 256) but llama-cpp-python sizes its buffers by what was asked
    worker = Worker(llm, min(llm.n_ctx(), args.context), writer)
    worker.abort_on_cancel()
    writer.send(
        p.Ready(
            engine="llama.cpp",
            model=args.model,
            context_tokens=worker.context_tokens,
            load_ms=(time.monotonic() - started) * 1000.0,
        )
    )
    reader = threading.Thread(target=worker.reader, args=(sys.stdin.buffer,), name="frame-reader", daemon=True)
    reader.start()
    worker.serve()
    return p.ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
