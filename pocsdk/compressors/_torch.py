"""Lazy torch / transformers helpers shared by the neural compressors.

Importing pocsdk never imports torch: these functions do, on first use, and turn a missing
install into :class:`~pocsdk.errors.MissingDependencyError`. Loaded models are cached per
process (keyed by everything that changes the weights or where they live), so building a
compressor twice, or probing many rates, never loads a checkpoint twice.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable, Collection
from typing import Any, Literal

from pocsdk.errors import ConfigError, MissingDependencyError, PocError
from pocsdk.text.tokens import without_surrogates

_CACHE: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_LOCK = threading.Lock()

Quantize = Literal["none", "int8"]
QUANTIZE_MODES: tuple[str, ...] = ("none", "int8")


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
    """'auto' (or None) means CUDA when available, else CPU; otherwise a cpu, cuda[:N] or mps device
    (availability is checked by :func:`check_device_available`)."""
    torch = import_torch(feature)
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(str(device)).type
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r} is not supported: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return str(device)


def check_device_available(device: str, feature: str) -> None:
    """A CUDA device asked for on a machine without one: a clear error instead of torch's assertion."""
    torch = import_torch(feature)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this torch has no CUDA device: use 'cpu' or 'auto'")
    index = torch.device(device).index
    if device.startswith("cuda") and index is not None and index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} asked for, but MPS is not available here: use 'cpu' or 'auto'")


def resolve_dtype(dtype: str | None, device: str, feature: str) -> Any:
    """'auto': float16 on CUDA, float32 elsewhere (CPU half precision is slow and lossy)."""
    torch = import_torch(feature)
    if dtype in (None, "", "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'float16' or 'bfloat16'")
    return value


def dtype_kwarg(transformers: Any, dtype: Any) -> dict[str, Any]:
    """transformers >= 4.56 calls it ``dtype``; older releases ``torch_dtype``."""
    parts = str(transformers.__version__).split(".")
    major, minor = int(parts[0]), int(re.sub(r"\D.*", "", parts[1]) or 0)
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """The KV cache as a forward() argument: ``cache`` from transformers 5.2x on (``past_key_values`` is
    deprecated there, warns on every call, and goes in 5.40), ``past_key_values`` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    params = inspect.signature(type(base).forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def output_cache(out: Any) -> Any:
    """The KV cache a forward() returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def check_quantize(value: str | None) -> str:
    """'none' (or None) or 'int8'; anything else is a ConfigError."""
    mode = "none" if value in (None, "", "none") else str(value)
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"quantize must be one of {', '.join(map(repr, QUANTIZE_MODES))}, got {value!r}")
    return mode


def check_quantizable(mode: str, device: str, dtype: Any, feature: str) -> None:
    """int8 is torch's dynamic quantization: CPU kernels only, float32 weights in."""
    if mode == "none":
        return
    torch = import_torch(feature)
    if not device.startswith("cpu"):
        raise ConfigError(f"quantize={mode!r} runs on the CPU only (torch dynamic quantization); "
                          f"pass device='cpu', or quantize='none' on {device!r}")
    if dtype != torch.float32:
        raise ConfigError(f"quantize={mode!r} needs float32 weights (dtype 'auto' or 'float32'), got {dtype}")


def quantize_model(model: Any, mode: str, feature: str, keep: Collection[str] = ()) -> Any:
    """``model`` with every ``nn.Linear`` (except the modules named in ``keep``) replaced by its
    dynamically quantized int8 version (weights int8 per output channel, activations quantized per
    batch on the fly); a new model, ``model`` is left as it is. 'none' returns ``model``."""
    if mode == "none":
        return model
    torch = import_torch(feature)
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:  # torch may drop eager-mode quantization one day
        raise ConfigError(f"quantize={mode!r} needs torch.ao.quantization.quantize_dynamic, "
                          f"which torch {torch.__version__} lacks; use quantize='none'") from exc
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in keep}
    with warnings.catch_warnings():  # torch >= 2.10 warns that eager-mode quantization is deprecated
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, dict.fromkeys(names, per_channel_dynamic_qconfig), dtype=torch.qint8)


def split_gguf(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """A path to a ``.gguf`` file becomes (its directory, its file name) as transformers wants."""
    if gguf_file is None and model.endswith(".gguf") and os.path.isfile(model):
        return os.path.dirname(os.path.abspath(model)), os.path.basename(model)
    return model, gguf_file


def check_local_model(model: str) -> None:
    """A path (``/x``, ``./x``, ``~/x``) that does not exist: say so, instead of the hub client's "Repo id must
    use alphanumeric chars"."""
    if _looks_local(model) and not os.path.exists(os.path.expanduser(model)):
        raise ConfigError(f"cannot load model {model!r}: no such file or directory")


def cached_model(key: tuple[Any, ...], load: Callable[[], tuple[Any, Any]], name: str = "") -> tuple[Any, Any]:
    """(model, tokenizer) from the process cache, loading once under a lock.

    A checkpoint that cannot be found or read (no network, wrong path) becomes a ConfigError
    naming it, instead of a deep ``OSError`` from the hub client."""
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            model = name or str(key[1])
            if _looks_local(model) and not os.path.exists(os.path.expanduser(model)):
                raise ConfigError(f"cannot load model {model!r}: no such file or directory")
            try:
                hit = load()
            except (OSError, ValueError) as exc:
                if isinstance(exc, PocError):  # a ConfigError or an ArtifactError names its own culprit
                    raise
                raise ConfigError(f"cannot load model {model!r}: {exc}") from exc
            _CACHE[key] = hit
        return hit


def _looks_local(model: str) -> bool:
    """A path, not a hub name ("org/name"): absolute, home- or dot-relative, or with more than one slash."""
    return model.startswith(("/", "~", "./", "../", "\\")) or model.count("/") > 1 or (
        os.sep != "/" and os.sep in model)


def clear_model_cache() -> None:
    """Drop every cached model (frees memory; the next ``score`` loads again)."""
    with _LOCK:
        _CACHE.clear()


def check_tokenizer_fits(tokenizer: Any, model: Any, name: str) -> None:
    """The tokenizer and the weights belong together: no token id past the embedding table (an IndexError
    deep in the forward pass otherwise), and not a tokenizer far smaller than the vocabulary (a folder
    without its tokenizer files gets a stub that reads every word as unknown)."""
    rows = None
    try:
        rows = int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, TypeError, ValueError):
        rows = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(rows, int) or rows <= 0:
        return
    base = getattr(tokenizer, "vocab_size", None)  # without added special tokens, which plain text never yields
    base = base if isinstance(base, int) and base > 0 else len(tokenizer)
    if base > rows or len(tokenizer) < rows // 2:
        raise ConfigError(f"the tokenizer of {name!r} has {len(tokenizer)} entries and the model {rows} embedding "
                          "rows: they do not belong together (are the tokenizer files missing or from another "
                          "model?)")


def require_fast_tokenizer(tokenizer: Any, model: str) -> None:
    """Character offsets come from fast (Rust) tokenizers only; say so instead of failing later."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"the tokenizer of {model!r} is not a fast tokenizer; pocsdk needs offset mappings")


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` without special tokens, any length, no warnings (lone
    surrogates read as U+FFFD, one character for one, so the offsets still index ``text``)."""
    text = without_surrogates(text)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None:
        enc = backend.encode(text, add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]
