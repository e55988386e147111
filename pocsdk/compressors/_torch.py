"""Lazy torch / transformers helpers shared by the neural compressors.

Importing pocsdk never imports torch: these functions do, on first use, and turn a missing
install into :class:`~pocsdk.errors.MissingDependencyError`. Loaded models are cached per
process (keyed by everything that changes the weights or where they live), so building a
compressor twice, or probing many rates, never loads a checkpoint twice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from pocsdk.errors import ConfigError, MissingDependencyError

_CACHE: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def import_torch(feature: str) -> Any:
    """``torch``, or MissingDependencyError naming the ``[neural]`` extra."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(feature, "neural", "torch") from exc
    return torch


def import_transformers(feature: str) -> Any:
    """``transformers``, or MissingDependencyError naming the ``[neural]`` extra."""
    import_torch(feature)
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(feature, "neural", "transformers") from exc
    return transformers


def resolve_device(device: str | None, feature: str) -> str:
    """'auto' (or None) means CUDA when available, else CPU; anything else is passed to torch."""
    torch = import_torch(feature)
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def resolve_dtype(dtype: str | None, device: str, feature: str) -> Any:
    """'auto': float16 on CUDA, float32 elsewhere (CPU half precision is slow and lossy)."""
    torch = import_torch(feature)
    if dtype in (None, "", "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'float16' or 'bfloat16'")
    return value


def split_gguf(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """A path to a ``.gguf`` file becomes (its directory, its file name) as transformers wants."""
    if gguf_file is None and model.endswith(".gguf") and os.path.isfile(model):
        return os.path.dirname(os.path.abspath(model)), os.path.basename(model)
    return model, gguf_file


def cached_model(key: tuple[Any, ...], load: Callable[[], tuple[Any, Any]], name: str = "") -> tuple[Any, Any]:
    """(model, tokenizer) from the process cache, loading once under a lock.

    A checkpoint that cannot be found or read (no network, wrong path) becomes a ConfigError
    naming it, instead of a deep ``OSError`` from the hub client."""
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            try:
                hit = load()
            except (OSError, ValueError) as exc:
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"cannot load model {name or key[1]!r}: {exc}") from exc
            _CACHE[key] = hit
        return hit


def clear_model_cache() -> None:
    """Drop every cached model (frees memory; the next ``score`` loads again)."""
    with _LOCK:
        _CACHE.clear()


def require_fast_tokenizer(tokenizer: Any, model: str) -> None:
    """Character offsets come from fast (Rust) tokenizers only; say so instead of failing later."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"the tokenizer of {model!r} is not a fast tokenizer; pocsdk needs offset mappings")


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` without special tokens, any length, no warnings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None:
        enc = backend.encode(text, add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]
