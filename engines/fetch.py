"""Resumable, verified downloads of model files.

The bytes go to NAME.part beside the target; an interrupted download resumes from the part's length with an HTTP
Range request (a server that ignores Range starts it over), the size and sha256 are checked, and only then is the
part renamed onto NAME, so NAME is either absent or whole.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16
USER_AGENT = "storybot-models/1"


class FetchError(RuntimeError):
    """A download that did not produce the file; `kind` is its class, the message says what happened."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "http", "network", "disk", "checksum"


@dataclass(frozen=True)
class Remote:
    url: str
    size_bytes: int | None = None  # None: not known in advance
    sha256: str | None = None  # None: not known; the computed digest is reported instead


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def fetch(
    remote: Remote,
    target: Path,
    *,
    retries: int = 3,
    timeout_s: float = 30.0,
    progress: bool | None = None,
    backoff_s: float = 1.0,
) -> str:
    """Download remote into target (resuming target.part); returns the file's sha256. Raises FetchError.

    retries: further attempts after a dropped connection or network error, each resuming where the last stopped.
    progress: a progress bar on stderr; None = only when stderr is a terminal.
    """
    target = Path(target)
    part = part_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _disk_error(target.parent, e) from None
    show = sys.stderr.isatty() if progress is None else progress
    attempt = 0
    while True:
        try:
            _download(remote, part, timeout_s, show)
            break
        except FetchError as e:
            if e.kind != "network" or attempt >= retries:
                raise
            attempt += 1
            log.warning("%s; resuming (attempt %d of %d)", e, attempt, retries)
            time.sleep(backoff_s * attempt)
    digest = _verify(remote, part)
    try:
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, target)
    except OSError as e:
        raise _disk_error(target, e) from None
    return digest


def _verify(remote: Remote, part: Path) -> str:
    size = part.stat().st_size
    if remote.size_bytes is not None and size != remote.size_bytes:
        part.unlink(missing_ok=True)
        raise FetchError("checksum", f"{remote.url}: got {size} bytes, expected {remote.size_bytes}")
    digest = sha256_of(part)
    if remote.sha256 is not None and digest != remote.sha256.lower():
        part.unlink(missing_ok=True)  # a corrupt download must not be resumed
        raise FetchError("checksum", f"{remote.url}: sha256 {digest}, expected {remote.sha256} (download removed)")
    return digest


def _download(remote: Remote, part: Path, timeout_s: float, show: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if remote.size_bytes is not None:
        if offset == remote.size_bytes:
            return  # complete already; verified by the caller
        if offset > remote.size_bytes:
            part.unlink()
            offset = 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(remote.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset and remote.size_bytes is None:
            return  # the part already holds everything the server has
        if e.code == 416:
            part.unlink(missing_ok=True)
            raise FetchError(
                "network", f"{remote.url}: HTTP 416 for a resume at byte {offset}; starting over"
            ) from None
        raise FetchError("http", f"{remote.url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise FetchError("network", f"{remote.url}: cannot connect: {e.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise FetchError("network", f"{remote.url}: {e or type(e).__name__}") from None
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = remote.size_bytes or (offset + int(length) if length and length.isdigit() else None)
        mode = "ab" if offset else "wb"
        try:
            out = open(part, mode)
        except OSError as e:
            raise _disk_error(part, e) from None
        bar = tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
            disable=not show, file=sys.stderr, leave=False,
        )  # fmt: skip
        with out, bar:
            got = 0
            while True:
                try:
                    block = response.read(CHUNK_BYTES)
                except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
                    _flush(out, part)
                    raise FetchError(
                        "network", f"{remote.url}: connection lost after {offset + got} bytes ({e or type(e).__name__})"
                    ) from None
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as e:
                    raise _disk_error(part, e) from None
                got += len(block)
                bar.update(len(block))
            _flush(out, part)
        if length and length.isdigit() and got < int(length):
            raise FetchError("network", f"{remote.url}: connection closed after {offset + got} bytes")


def _flush(out, part: Path) -> None:
    try:
        out.flush()
    except OSError as e:
        raise _disk_error(part, e) from None


def _disk_error(path: Path, e: OSError) -> FetchError:
    name = errno.errorcode.get(e.errno or 0, "error")
    return FetchError("disk", f"cannot write {path}: {e.strerror or e} ({name})")
