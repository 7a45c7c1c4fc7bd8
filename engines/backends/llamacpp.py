"""llama.cpp through llama-cpp-python (engines/llamacpp_worker.py, the `llama` extra): GGUF models."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path

from engines.registry import Backend, CheckedModel, EngineSettings, ModelFileError, ModelRejected, ModelShape

# Gemma 3 270M Q4_K_M as its GGUF header says (engines.gguf.check_gguf on the default model): 253,113,024 bytes,
# 18 layers, 1 KV head of 256, trained context 32768, vocabulary 262,144. Used when the file is not on this machine.
GEMMA3_270M = ModelShape(
    name="gemma-3-270m-q4_k_m.gguf",
    path="",
    backend="llama.cpp",
    file_bytes=253_113_024,
    layers=18,
    kv_dim=256,
    max_context_tokens=32768,
    vocab_size=262_144,
)


class LlamaCpp(Backend):
    name = "llama.cpp"
    is_child_process = True
    kv_bytes_per_value = 2  # f16 K and V
    context_block_tokens = 256  # llama.cpp allocates its KV cache in whole blocks (its context is rounded up)
    # llama-cpp-python 0.3.36 with Gemma 3 270M Q4_K_M, context 1024, a 64-token story, one thread: peak RSS
    # 362.4 MiB - file 241.4 MiB - f16 KV 18 MiB = 103.1 MiB (Python, llama.cpp's 262k-token vocabulary, a repacked
    # weight buffer, the compute buffer). The daemon's worker adds its protocol code: counted as 117 MiB, the
    # worker's RSS measured after a 340-token prompt (RssAnon 115.6 MiB less the KV cache, plus 16.8 MiB of
    # shared libraries). (x86-64 dev host, 2026-12-01)
    footprint_defaults = {"llamacpp_overhead_bytes": 117 << 20}

    def claims(self, head: bytes) -> bool:
        return head[:4] == b"GGUF"

    def read_shape(self, path: str, head: bytes, size_bytes: int) -> ModelShape:
        from engines.gguf import GgufError, check_gguf

        try:
            info = check_gguf(path)
        except GgufError as e:
            raise ModelFileError(str(e)) from None
        if info.layers <= 0 or info.kv_heads <= 0 or info.head_dim <= 0:
            raise ModelFileError(f"{path}: the GGUF header gives no layer count or attention shape")
        return ModelShape(
            name=Path(path).name,
            path=path,
            backend=self.name,
            file_bytes=info.size_bytes,
            layers=info.layers,
            kv_dim=info.kv_heads * info.head_dim,
            max_context_tokens=info.context_tokens or 32768,
        )

    def overhead_bytes(self, shape: ModelShape, figures: Mapping[str, int], batched_prefill: bool = True) -> int:
        return figures["llamacpp_overhead_bytes"]

    def default_model(self, *, make: bool) -> Path | None:
        from engines.models import default_model_path, ensure_default_model

        return ensure_default_model("llama.cpp") if make else default_model_path("llama.cpp")

    def check_model(self, settings: EngineSettings) -> CheckedModel:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelRejected(
                'engine.backend is "llama.cpp" but llama-cpp-python is not installed (it is the llama extra: '
                "scripts/setup.sh --llama)"
            )
        from engines.gguf import GgufError, check_gguf
        from engines.models import ModelError  # here: it imports urllib, ssl and tqdm

        try:
            path = settings.model or str(self.default_model(make=True))
            info = check_gguf(path)
        except ModelError as e:
            raise ModelRejected(str(e)) from None
        except OSError as e:
            raise ModelRejected(f"model {e.filename}: {e.strerror}") from None
        except GgufError as e:
            raise ModelRejected(f"model rejected: {e}") from None
        return CheckedModel(path, chat_template=info.chat_template)

    def argv(self, settings: EngineSettings, model: CheckedModel) -> list[str]:
        return [sys.executable, "-m", "engines.llamacpp_worker", "--model", model.path,
                "--threads", str(settings.threads), "--context", str(settings.context_tokens)]  # fmt: skip


BACKEND = LlamaCpp()
