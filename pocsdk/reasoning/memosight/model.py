"""Mask, position and KV-cache plumbing for Hugging Face causal LMs (Llama, Qwen2 families).

transformers 5.x returns a 4D ``attention_mask`` as given (``masking_utils._preprocess_mask_arguments``),
so a custom mask reaches every attention implementation unchanged. Eager attention *adds* the mask to
the scores, so masks are passed as float additive masks (0 = attend, dtype minimum = blocked), which
sdpa accepts too. Position ids are always explicit. The cache is transformers' ``DynamicCache``; evicting
entries slices every layer's keys and values along the sequence dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pocsdk.compressors._torch import import_torch, import_transformers, split_gguf
from pocsdk.errors import ConfigError, PocError
from pocsdk.reasoning.memosight.data import FORESIGHT, Layout

FEATURE = "MemoSight"


def visibility(
    base: Any,
    q_ncont: Any,
    k_raw_step: Any,
    k_foresight: Any,
    q_self: Any,
    window: int,
) -> Any:
    """Boolean ``[q, k]`` visibility: ``base`` minus foresight keys (except a query's own) minus closed steps.

    Raw tokens of step ``g`` are hidden from a query that has seen more than ``g + window`` continue
    tokens. Shared by the training mask and the incremental passes, so both see the same thing.
    """
    torch = import_torch(FEATURE)
    cols = torch.arange(base.shape[1], device=base.device)
    own = cols[None, :] == q_self[:, None]
    allowed = base & (~k_foresight[None, :] | own)
    closed = (k_raw_step[None, :] >= 0) & (k_raw_step[None, :] + window < q_ncont[:, None])
    return allowed & ~closed


def layout_mask(layout: Layout, device: Any = None) -> Any:
    """The ``[L, L]`` boolean training mask of one layout."""
    torch = import_torch(FEATURE)
    n = len(layout)
    base = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    fore = torch.tensor([k == FORESIGHT for k in layout.kinds], dtype=torch.bool, device=device)
    raw = torch.tensor(layout.raw_step, dtype=torch.long, device=device)
    ncont = torch.tensor(layout.ncont, dtype=torch.long, device=device)
    return visibility(base, ncont, raw, fore, torch.arange(n, device=device), layout.window)


def additive(allowed: Any, dtype: Any) -> Any:
    """Boolean ``[..., q, k]`` mask to the float additive ``[B, 1, q, k]`` form every backend accepts."""
    torch = import_torch(FEATURE)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask


def model_dtype(model: Any) -> Any:
    """The floating dtype of the model's parameters."""
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def model_device(model: Any) -> Any:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def collate(layouts: Sequence[Layout], device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """Right-padded batch: input_ids, position_ids, additive 4D mask, targets, foresight flags."""
    torch = import_torch(FEATURE)
    dtype = dtype or torch.float32
    width = max(len(x) for x in layouts)
    bsz = len(layouts)
    ids = torch.zeros(bsz, width, dtype=torch.long)
    pos = torch.zeros(bsz, width, dtype=torch.long)
    tgt = torch.full((bsz, width), -100, dtype=torch.long)
    fore = torch.zeros(bsz, width, dtype=torch.bool)
    allowed = torch.zeros(bsz, width, width, dtype=torch.bool)
    for b, lay in enumerate(layouts):
        n = len(lay)
        ids[b, :n] = torch.tensor(lay.input_ids)
        pos[b, :n] = torch.tensor(lay.position_ids)
        tgt[b, :n] = torch.tensor(lay.targets)
        fore[b, :n] = torch.tensor([k == FORESIGHT for k in lay.kinds])
        allowed[b, :n, :n] = layout_mask(lay)
        allowed[b, n:, :] = torch.eye(width, dtype=torch.bool)[n:]  # padding rows see themselves only
    return {"input_ids": ids.to(device), "position_ids": pos.to(device),
            "attention_mask": additive(allowed.unsqueeze(1), dtype).to(device),
            "targets": tgt.to(device), "foresight": fore.to(device)}


def forward_layout(model: Any, layout: Layout) -> Any:
    """Logits ``[L, V]`` of one layout in a single forward with the training mask and EPL positions."""
    torch = import_torch(FEATURE)
    device = model_device(model)
    batch = collate([layout], device=device, dtype=model_dtype(model))
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                    attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits[0]


# --- cache -----------------------------------------------------------------------------------------------


def cache_length(cache: Any) -> int:
    """Entries currently held (the same in every layer)."""
    return int(cache.get_seq_length()) if cache is not None else 0


def cache_keep(cache: Any, keep: Any) -> None:
    """Keep only the sequence entries at indices ``keep`` (a 1D long tensor) in every layer."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            idx = keep.to(layer.keys.device)
            layer.keys = layer.keys.index_select(-2, idx)
            layer.values = layer.values.index_select(-2, idx)
        return
    for i in range(len(cache.key_cache)):  # transformers 4.x
        idx = keep.to(cache.key_cache[i].device)
        cache.key_cache[i] = cache.key_cache[i].index_select(-2, idx)
        cache.value_cache[i] = cache.value_cache[i].index_select(-2, idx)


def cache_truncate(cache: Any, length: int) -> None:
    """Drop every entry from ``length`` on (a view, no copy: the next update concatenates anyway)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys[..., :length, :]
                layer.values = layer.values[..., :length, :]
        return
    for i in range(len(cache.key_cache)):  # transformers 4.x
        cache.key_cache[i] = cache.key_cache[i][..., :length, :]
        cache.value_cache[i] = cache.value_cache[i][..., :length, :]


def cache_bytes(cache: Any) -> int:
    """Bytes held by keys and values over all layers."""
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total
    for t in [*cache.key_cache, *cache.value_cache]:
        total += t.numel() * t.element_size()
    return total


def new_cache(model: Any) -> Any:
    """An empty DynamicCache for ``model``."""
    transformers = import_transformers(FEATURE)
    try:
        return transformers.DynamicCache(config=model.config)
    except TypeError:  # transformers 4.x
        return transformers.DynamicCache()


# --- loading ---------------------------------------------------------------------------------------------


def load_model(
    base: str,
    *,
    gguf_file: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[Any, Any]:
    """(model, tokenizer) of a local or cached causal LM, never running remote code."""
    transformers = import_transformers(FEATURE)
    from pocsdk.compressors._torch import check_device_available, check_local_model, resolve_dtype

    check_device_available(device, FEATURE)  # before loading: torch would assert only at .to(device)
    path, gguf = split_gguf(base, gguf_file)
    check_local_model(path)
    kw: dict[str, Any] = {"trust_remote_code": False}
    if gguf:
        kw["gguf_file"] = gguf
    torch_dtype = resolve_dtype(dtype or ("bfloat16" if device.startswith("cuda") else "float32"), device, FEATURE)
    try:  # a missing folder, an empty one, no network for a hub name: the user's setting, not a crash
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kw)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, attn_implementation=attn_implementation, **kw)
    except (OSError, ValueError) as exc:
        if isinstance(exc, PocError):
            raise
        raise ConfigError(f"cannot load model {base!r}: {exc}") from exc
    if gguf:
        drop_gguf_quantizer(model)
    model.to(device)
    return model, tokenizer


def drop_gguf_quantizer(model: Any) -> None:
    """GGUF weights are dequantised on load, but transformers keeps a GGUF quantizer that refuses to save.

    Forget it, so a fine-tuned model saves as ordinary safetensors.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")
    if quantizer is not None and "gguf" in str(getattr(method, "value", method)).lower():
        model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
