"""`storybot models`: convert, fetch (against a local HTTP server) and verify, as a user runs them."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import resource
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from engines import llama2c_ref as R
from tests.conftest import PYTHON, ROOT, STORYBOT


def storybot_models(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STORYBOT, "models", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
    )


# ---------------------------------------------------------------------------------------------- a local server


class FileServer:
    """Serves `files` (name -> bytes) over HTTP with Range support; can drop connections or ignore Range."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: int | None = None  # bytes of the body sent before the connection is cut
        self.drops_left = 0  # how many responses are cut
        self.ignore_range = False
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):  # noqa: N802
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                owner.requests.append((name, rng))
                data = owner.files.get(name)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not owner.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.drops_left and owner.drop_after is not None:
                    owner.drops_left -= 1
                    self.wfile.write(body[: owner.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # cut mid-body
                    return
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that went away is part of the test
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def catalogue(tmp_path, monkeypatch):
    """A catalogue whose stories260K is a random-weight checkpoint, served by a local server."""
    w = R.random_weights("stories260K", seed=1)
    model = R.write_checkpoint(tmp_path / "src.bin", w, 0).read_bytes()
    tok = R.write_tokenizer(tmp_path / "srctok.bin", R.small_vocab(512)).read_bytes()
    server = FileServer({"stories260K.bin": model, "tok512.bin": tok})
    assets = tmp_path / "assets"
    assets.mkdir()

    def write(model_sha: str | None = None, with_sha: bool = True) -> None:
        sha_m = model_sha or hashlib.sha256(model).hexdigest()
        sha_t = hashlib.sha256(tok).hexdigest()
        (assets / "models.toml").write_text(
            f"""
[files."stories260K.bin"]
url = "{server.url}/stories260K.bin"
size_bytes = {len(model)}
{f'sha256 = "{sha_m}"' if with_sha else ""}

[files."tok512.bin"]
url = "{server.url}/tok512.bin"
size_bytes = {len(tok)}
sha256 = "{sha_t}"

[models.stories260K]
checkpoint = "stories260K.bin"
tokenizer = "tok512.bin"
"""
        )

    write()
    monkeypatch.setenv("STORYBOT_ASSETS", str(assets))
    server.model, server.tok, server.write_catalogue = model, tok, write
    yield server
    server.close()


# ---------------------------------------------------------------------------------------------- fetch


def test_the_real_catalogue_names_every_model_with_size_and_sha256():
    from engines.models import load_catalogue

    models, files = load_catalogue()
    assert set(models) == {"stories260K", "stories15M", "stories42M", "stories110M"}
    assert models["stories260K"].tokenizer == "tok512.bin" and models["stories15M"].tokenizer == "tokenizer.bin"
    for f in files.values():
        assert f.url.startswith("https://") and f.size_bytes > 0 and re.fullmatch(r"[0-9a-f]{64}", f.sha256)
    # the catalogue's sizes are what the format implies for each shape (shared classifier, v0)
    for name in ("stories260K", "stories15M", "stories42M", "stories110M"):
        assert files[f"{name}.bin"].size_bytes == R.expected_size(R.SHAPES[name], 0, True)


def test_fetch_downloads_verifies_and_renames(tmp_path, catalogue):
    out = tmp_path / "models"
    proc = storybot_models("fetch", "stories260K", "--dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "stories260K.bin").read_bytes() == catalogue.model
    assert (out / "tok512.bin").read_bytes() == catalogue.tok
    assert not list(out.glob("*.part"))
    assert "sha256 verified" in proc.stdout and "-z" in proc.stdout  # tells how to run it with tok512.bin
    # a second fetch finds both files whole and downloads nothing
    n = len(catalogue.requests)
    proc = storybot_models("fetch", "stories260K", "--dir", str(out))
    assert proc.returncode == 0 and len(catalogue.requests) == n and "present" in proc.stdout


def test_fetch_resumes_a_dropped_download_with_a_range_request(tmp_path, catalogue):
    out = tmp_path / "models"
    catalogue.drop_after, catalogue.drops_left = 300_000, 1
    proc = storybot_models("fetch", "stories260K.bin", "--dir", str(out), "--retries", "0")
    assert proc.returncode == 75, proc.stderr  # network trouble: try again
    assert "connection" in proc.stderr and "again to resume" in proc.stderr
    part = out / "stories260K.bin.part"
    assert part.stat().st_size == 300_000 and not (out / "stories260K.bin").exists()
    proc = storybot_models("fetch", "stories260K.bin", "--dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert catalogue.requests[-1] == ("stories260K.bin", "bytes=300000-")
    assert (out / "stories260K.bin").read_bytes() == catalogue.model and not part.exists()


def test_fetch_retries_by_itself_resuming_each_time(tmp_path, catalogue):
    out = tmp_path / "models"
    catalogue.drop_after, catalogue.drops_left = 200_000, 2
    from engines.fetch import Remote, fetch

    digest = fetch(
        Remote(f"{catalogue.url}/stories260K.bin", len(catalogue.model), None), out / "m.bin", backoff_s=0.01
    )
    assert digest == hashlib.sha256(catalogue.model).hexdigest()
    ranges = [r for name, r in catalogue.requests]
    assert ranges == [None, "bytes=200000-", "bytes=400000-"]
    assert (out / "m.bin").read_bytes() == catalogue.model


def test_fetch_starts_over_when_the_server_ignores_range(tmp_path, catalogue):
    out = tmp_path / "models"
    out.mkdir()
    (out / "stories260K.bin.part").write_bytes(b"garbage that must not stay" * 100)
    catalogue.ignore_range = True
    proc = storybot_models("fetch", "stories260K.bin", "--dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "stories260K.bin").read_bytes() == catalogue.model


def test_fetch_refuses_a_sha256_mismatch_and_keeps_nothing(tmp_path, catalogue):
    out = tmp_path / "models"
    catalogue.write_catalogue(model_sha="0" * 64)
    proc = storybot_models("fetch", "stories260K", "--dir", str(out))
    assert proc.returncode == 65
    assert (
        "sha256" in proc.stderr
        and "0" * 64 in proc.stderr
        and hashlib.sha256(catalogue.model).hexdigest() in proc.stderr
    )
    assert not (out / "stories260K.bin").exists() and not (out / "stories260K.bin.part").exists()


def test_fetch_without_a_known_sha256_checks_the_size_and_prints_the_digest(tmp_path, catalogue):
    catalogue.write_catalogue(with_sha=False)
    proc = storybot_models("fetch", "stories260K.bin", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(catalogue.model).hexdigest() in proc.stdout and "catalogue has none" in proc.stdout


def test_fetch_names_http_errors_and_network_errors(tmp_path, catalogue):
    proc = storybot_models("fetch", "stories260K", "--dir", str(tmp_path), "--url-base", catalogue.url + "/missing")
    assert proc.returncode == 69 and "HTTP 404" in proc.stderr
    closed = FileServer({})
    url = closed.url
    closed.close()  # nothing listens there any more
    proc = storybot_models("fetch", "stories260K", "--dir", str(tmp_path), "--url-base", url, "--retries", "0")
    assert proc.returncode == 75 and "cannot connect" in proc.stderr
    proc = storybot_models("fetch", "stories7B")
    assert proc.returncode == 64 and "stories260K" in proc.stderr  # lists what there is


def test_fetch_reports_a_full_disk(tmp_path, catalogue):
    """A file size limit stands in for a full disk: the write fails with EFBIG mid-download."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = storybot_models("fetch", "stories260K.bin", "--dir", str(tmp_path), preexec_fn=limit)
    assert proc.returncode == 74, proc.stderr
    assert "cannot write" in proc.stderr and "stories260K.bin.part" in proc.stderr
    assert not (tmp_path / "stories260K.bin").exists()


def test_fetch_through_a_mirror(tmp_path, catalogue):
    proc = storybot_models("fetch", "stories260K", "--dir", str(tmp_path), "--url-base", catalogue.url)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "stories260K.bin").read_bytes() == catalogue.model


# ---------------------------------------------------------------------------------------------- convert


@pytest.mark.parametrize("version,shared", [(0, True), (0, False), (1, True)])
def test_convert_writes_the_same_v2_as_export(tmp_path, version, shared):
    w = R.random_weights("tiny", seed=4, shared_classifier=shared)
    src = R.write_checkpoint(tmp_path / "in.bin", w, version)
    proc = storybot_models("convert", str(src), str(tmp_path / "out.bin"))
    assert proc.returncode == 0, proc.stderr
    assert "group size 16" in proc.stdout
    want = R.write_checkpoint(tmp_path / "want.bin", w, 2)
    assert (tmp_path / "out.bin").read_bytes() == want.read_bytes()


def test_convert_v1_to_v2_keeps_the_logits(tmp_path):
    w = R.random_weights("stories260K", seed=6)
    src = R.write_checkpoint(tmp_path / "in.bin", w, 1)
    proc = storybot_models("convert", str(src), str(tmp_path / "out.bin"), "--group-size", "32")
    assert proc.returncode == 0, proc.stderr
    ck = R.read_checkpoint(tmp_path / "out.bin")
    assert ck.version == 2 and ck.group_size == 32
    tokens = [1, 40, 300, 7, 90]
    fp32 = R.Transformer(w).forward(tokens)
    int8 = R.Transformer(ck.weights).forward(tokens)
    # int8 noise, not a different model: mean error ~5% of the logits' spread, correlation ~0.998
    assert np.abs(int8 - fp32).mean() < 0.1 * fp32.std()
    assert np.corrcoef(int8.ravel(), fp32.ravel())[0, 1] > 0.99


def test_convert_refuses_what_it_cannot_do(tmp_path):
    w = R.random_weights("tiny", seed=1)
    v2 = R.write_checkpoint(tmp_path / "v2.bin", w, 2)
    assert storybot_models("convert", str(v2), str(tmp_path / "x.bin")).returncode == 64
    v0 = R.write_checkpoint(tmp_path / "v0.bin", w, 0)
    proc = storybot_models("convert", str(v0), str(tmp_path / "x.bin"), "--group-size", "7")
    assert proc.returncode == 64 and "group size 7" in proc.stderr
    proc = storybot_models("convert", str(tmp_path / "nope.bin"), str(tmp_path / "x.bin"))
    assert proc.returncode == 66 and "nope.bin" in proc.stderr
    assert not (tmp_path / "x.bin").exists()


# ---------------------------------------------------------------------------------------------- verify


@pytest.fixture
def good(tmp_path):
    w = R.random_weights("tiny", seed=2)
    ck = R.write_checkpoint(tmp_path / "m.bin", w, 2)
    R.write_tokenizer(tmp_path / "tokenizer.bin", R.small_vocab(384))
    return ck


def test_verify_accepts_a_good_checkpoint_and_finds_its_tokenizer(good):
    proc = storybot_models("verify", str(good))
    assert proc.returncode == 0, proc.stderr
    assert "llama2.c v2" in proc.stdout and "group size 16" in proc.stdout and "384 tokens: ok" in proc.stdout


def _mutated(path: Path, out: Path, fn) -> Path:
    data = bytearray(path.read_bytes())
    out.write_bytes(bytes(fn(data)))
    return out


def _set_int(offset: int, value: int):
    def fn(d):
        struct.pack_into("<i", d, offset, value)
        return d

    return fn


@pytest.mark.parametrize(
    "name,mutate,status,phrase",
    [
        ("truncated", lambda d: d[:-100], 67, "truncated"),
        ("trailing", lambda d: d + b"\0" * 8, 67, "trailing"),
        ("bad magic", lambda d: b"XXXX" + d[4:], 65, "header"),
        ("bad version", _set_int(4, 4), 65, "version 4"),
        ("absurd dim", _set_int(8, 1 << 30), 65, "dim"),
        ("heads not dividing", _set_int(8 + 4 * 3, 5), 65, "n_heads"),
        ("zero group size", _set_int(37, 0), 65, "group_size"),
        ("group size not dividing", _set_int(37, 7), 65, "group_size"),
    ],
)
def test_verify_names_what_is_wrong_with_its_status(tmp_path, good, name, mutate, status, phrase):
    bad = _mutated(good, tmp_path / "bad.bin", mutate)
    proc = storybot_models("verify", str(bad), "--tokenizer", str(tmp_path / "tokenizer.bin"))
    assert proc.returncode == status, (name, proc.stderr)
    assert phrase in proc.stderr and "bad.bin" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_verify_tokenizer_problems(tmp_path, good):
    tok = tmp_path / "tokenizer.bin"
    R.write_tokenizer(tmp_path / "t400.bin", R.small_vocab(400))
    proc = storybot_models("verify", str(good), "--tokenizer", str(tmp_path / "t400.bin"))
    assert proc.returncode == 69 and "vocab_size 384" in proc.stderr
    _mutated(tok, tmp_path / "short.bin", lambda d: d[:-3])
    proc = storybot_models("verify", str(good), "--tokenizer", str(tmp_path / "short.bin"))
    assert proc.returncode == 68 and "truncated" in proc.stderr
    _mutated(tok, tmp_path / "neg.bin", _set_int(8, -5))  # token 0's length
    proc = storybot_models("verify", str(good), "--tokenizer", str(tmp_path / "neg.bin"))
    assert proc.returncode == 68 and "length -5" in proc.stderr
    proc = storybot_models("verify", str(good), "--tokenizer", str(tmp_path / "none.bin"))
    assert proc.returncode == 66 and "No such file" in proc.stderr


def test_verify_missing_and_unreadable(tmp_path, good):
    proc = storybot_models("verify", str(tmp_path / "gone.bin"))
    assert proc.returncode == 66 and "gone.bin" in proc.stderr and "ENOENT" in proc.stderr
    if os.geteuid() != 0:  # root reads anything
        os.chmod(good, 0)
        assert storybot_models("verify", str(good)).returncode == 66


def test_verify_checks_gguf_files(tmp_path, default_model):
    proc = storybot_models("verify", default_model)
    assert proc.returncode == 0, proc.stderr
    assert "GGUF v3" in proc.stdout and "gemma3" in proc.stdout
    head = Path(default_model).open("rb").read(2_000_000)
    (tmp_path / "cut.gguf").write_bytes(head)
    proc = storybot_models("verify", str(tmp_path / "cut.gguf"))
    assert proc.returncode in (65, 67) and "cut.gguf" in proc.stderr


def test_verify_gguf_without_the_default_model(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    proc = storybot_models("verify", str(tmp_path / "junk.gguf"))
    assert proc.returncode == 65 and "no tensors" in proc.stderr


def test_ensure_default_still_works(default_model):
    proc = storybot_models("ensure-default")
    assert proc.returncode == 0 and proc.stdout.startswith("default model: ")


def test_help_lists_every_command_and_exit_status():
    proc = subprocess.run([PYTHON, "-m", "engines.models", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0
    for phrase in ("fetch", "convert", "verify", "ensure-default", "75 network error"):
        assert phrase in proc.stdout
    proc = storybot_models("fetch", "--help")
    assert proc.returncode == 0 and "--url-base" in proc.stdout and ".part" in proc.stdout


def test_storybot_models_help_reaches_the_models_parser():
    """`storybot models --help` is what a user types first (robot/cli.py hands everything after "models" on)."""
    proc = storybot_models("--help")
    assert proc.returncode == 0, proc.stderr
    assert "convert" in proc.stdout and "verify" in proc.stdout


def test_fetch_draws_a_progress_bar_when_asked(tmp_path, catalogue, capsys):
    from engines.fetch import Remote, fetch

    fetch(Remote(f"{catalogue.url}/stories260K.bin", len(catalogue.model), None), tmp_path / "m.bin", progress=True)
    err = capsys.readouterr().err
    assert "m.bin" in err and "1.01M" in err and "%|" in err  # a tqdm bar with the total size
