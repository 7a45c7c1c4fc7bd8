"""The engine back ends, by the name engine.backend gives them. Each back end (engines/backends/) declares what the
rest of storybot needs of it, so that robot/ names none: its configuration (settings_problem), how to check a model
file and find its chat template (check_model), the model's shape and the engine's memory footprint (read_shape,
shape, kv_bytes_per_value, context_block_tokens, overhead_bytes, footprint_defaults), its default model, and how to
launch it (argv). Adding a back end is one module in engines/backends/ and one line in BACKEND_MODULES."""

from __future__ import annotations

import abc
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# in the order the model-file sniffing asks them (the first that claims a file's header gets it)
BACKEND_MODULES = ("llamacpp", "llama2c", "command", "remote")


class EngineSettings(Protocol):
    """The engine.* keys a back end reads (robot's EngineConfig)."""

    @property
    def backend(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def tokenizer(self) -> str: ...
    @property
    def command(self) -> tuple[str, ...]: ...
    @property
    def threads(self) -> int: ...
    @property
    def load(self) -> str: ...  # "auto", "mmap" or "read" (engine.load)
    @property
    def batched_prefill(self) -> bool: ...
    @property
    def context_tokens(self) -> int: ...
    # remote (engines/backends/remote.py)
    @property
    def remote_url(self) -> str: ...
    @property
    def remote_model(self) -> str: ...
    @property
    def remote_api(self) -> str: ...
    @property
    def remote_api_key_file(self) -> str: ...
    @property
    def remote_api_key_env(self) -> str: ...
    @property
    def remote_tls_verify(self) -> bool: ...
    @property
    def remote_ca_file(self) -> str: ...
    @property
    def remote_connect_timeout_s(self) -> float: ...
    @property
    def remote_first_token_timeout_s(self) -> float: ...
    @property
    def remote_token_timeout_s(self) -> float: ...
    @property
    def remote_fallback(self) -> str: ...


class ModelFileError(ValueError):
    """A model file whose header cannot be read as any back end's model."""


class ModelRejected(RuntimeError):
    """The configured model cannot be used (missing, malformed, or its back end is not installed): permanent."""


@dataclass(frozen=True)
class CheckedModel:
    """A model file checked before an engine is spawned for it."""

    path: str
    chat_template: str = ""  # the model's own template (instruct models), "" when it carries none
    extra_args: tuple[str, ...] = ()  # what else the engine's command line needs for this file (a tokenizer)


@dataclass(frozen=True)
class ModelShape:
    """What memory a model needs: its file (mapped, so resident bytes = file bytes) and its KV cache's shape."""

    name: str
    path: str  # "" for a shape computed from published numbers, with no file behind it
    backend: str  # the engine.backend that runs it
    file_bytes: int
    layers: int
    kv_dim: int  # kv_heads x head_dim
    max_context_tokens: int  # what the model was trained for
    vocab_size: int = 0
    is_bpe: bool = False  # a v3 checkpoint: byte-level BPE vocabulary and merges in the engine's heap

    @property
    def kv_bytes_per_value(self) -> int:
        return get(self.backend).kv_bytes_per_value

    def kv_cache_bytes(self, context_tokens: int) -> int:
        """2 (K and V) x layers x context x kv_dim x bytes per value, as the engine allocates it."""
        block = get(self.backend).context_block_tokens
        cells = -(-context_tokens // block) * block
        return 2 * self.layers * cells * self.kv_dim * self.kv_bytes_per_value

    def engine_overhead_bytes(self, footprints: object | None = None, batched_prefill: bool = True) -> int:
        """The engine's heap beyond its weights and KV cache, from footprints' figures (a board profile's) or,
        without them, the back end's own measured defaults; batched_prefill False: engine.batched_prefill off."""
        backend = get(self.backend)
        figures = dict(backend.footprint_defaults)
        if footprints is not None:
            figures.update({k: getattr(footprints, k) for k in figures if hasattr(footprints, k)})
        return backend.overhead_bytes(self, figures, batched_prefill)


class Backend(abc.ABC):
    """A back end's declarations; the defaults are those of an engine storybot knows nothing about."""

    name = ""
    kv_bytes_per_value = 4
    context_block_tokens = 1
    footprint_defaults: Mapping[str, int] = {}  # measured figures (storybot doctor --measure), by footprint key
    is_planned = True  # False: its memory is its own business, no plan is made for it
    reads_model_files = True  # False: it checks no model file, so a model file does not choose another back end
    can_read_weights = False  # True: engine.load "read" copies the weights into private memory (else: mapped)
    # True: the engine is a child process that the daemon talks to over pipes, so the daemon itself needs no
    # TLS (a button-only daemon then leaves out ssl and OpenSSL, ~4 MiB); False keeps ssl (a remote server)
    is_child_process = False

    def settings_problem(self, settings: EngineSettings) -> str:
        """What is wrong with the engine.* keys for this back end, "" when nothing is."""
        return ""

    def claims(self, head: bytes) -> bool:
        """Whether a model file starting with these bytes is this back end's."""
        return False

    def read_shape(self, path: str, head: bytes, size_bytes: int) -> ModelShape:
        raise ModelFileError(f"{path}: engine.backend {self.name!r} reads no model shape")

    def shape(self) -> ModelShape:
        """The shape the memory plan counts for a back end with no model file of its own (a model server); the
        others' shapes come from their files (read_shape)."""
        raise ModelFileError(f"engine.backend {self.name!r} has no shape without a model file")

    def overhead_bytes(self, shape: ModelShape, figures: Mapping[str, int], batched_prefill: bool = True) -> int:
        return 0

    def reference_shapes(self) -> list[ModelShape]:
        """The models the board table is made for."""
        return []

    def default_model(self, *, make: bool) -> Path | None:
        """The model used when engine.model is "": made (fetched, converted) when make; None when there is none."""
        return None

    def smaller_default_model(self, *, make: bool) -> Path | None:
        """A smaller file of the default model, for the plan to take where the default does not fit; None: none."""
        return None

    @abc.abstractmethod
    def check_model(self, settings: EngineSettings) -> CheckedModel:
        """The model file, checked; ModelRejected saying what is wrong."""

    @abc.abstractmethod
    def argv(self, settings: EngineSettings, model: CheckedModel) -> list[str]:
        """The engine's command line (docs/engine-protocol.md, The command line)."""


_BACKENDS: dict[str, Backend] = {}


def _load() -> dict[str, Backend]:
    if not _BACKENDS:
        for module in BACKEND_MODULES:
            backend = importlib.import_module(f"engines.backends.{module}").BACKEND
            _BACKENDS[backend.name] = backend
    return _BACKENDS


def names() -> tuple[str, ...]:
    """Every engine.backend choice."""
    return tuple(_load())


def get(name: str) -> Backend:
    try:
        return _load()[name]
    except KeyError:
        raise KeyError(f"engine.backend {name!r} is none of {list(_load())}") from None


def footprint_defaults() -> dict[str, int]:
    """Every back end's measured footprint figures, by key (the memory plan's defaults)."""
    return {k: v for backend in _load().values() for k, v in backend.footprint_defaults.items()}


def _head(path: str) -> tuple[bytes, int]:
    with open(path, "rb") as f:
        return f.read(256), os.fstat(f.fileno()).st_size


def backend_for_file(path: str) -> str:
    """The back end whose model the file is, "" when there is no file to look at (its own check names why)."""
    if not path:
        return ""
    try:
        head, _ = _head(path)
    except OSError:
        return ""
    return next((b.name for b in _load().values() if b.claims(head)), "")


def read_model_shape(path: str) -> ModelShape:
    """The shape of a model file, from its header, by the back end whose file it is.

    Raises OSError when the file cannot be read, ModelFileError when no back end can read it."""
    head, size = _head(path)
    for backend in _load().values():
        if backend.claims(head):
            return backend.read_shape(path, head, size)
    raise ModelFileError(f"{path}: {size} bytes is too small for a model")


def reference_shapes() -> list[ModelShape]:
    return [shape for backend in _load().values() for shape in backend.reference_shapes()]
