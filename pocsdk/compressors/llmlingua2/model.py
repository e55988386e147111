"""The token classifier: loading (cached per process, optionally int8-quantized), the word-merging
family, and the batched forward pass over windows."""

from __future__ import annotations

from typing import Any

import numpy as np

from pocsdk.compressors._torch import (
    cached_model,
    check_device_available,
    check_quantizable,
    check_tokenizer_fits,
    dtype_kwarg,
    import_torch,
    import_transformers,
    quantize_model,
    require_fast_tokenizer,
    resolve_device,
    resolve_dtype,
)
from pocsdk.compressors.llmlingua2.windows import NEW_TOKENS, _TokenStream
from pocsdk.errors import ConfigError

FEATURE = "the llmlingua2 compressor"
HEAD = "classifier"
"""The 2-label output layer; it stays float32 when the model is quantized (it costs nothing and sets
every probability)."""


def load_classifier(model: str, device: str, dtype: str, quantize: str, trust_remote_code: bool,
                    new_tokens: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer), cached per process. ``new_tokens``: private copies with llmlingua's 100
    ``[NEWi]`` tokens, embedding rows resized under its seed (42)."""
    transformers = import_transformers(FEATURE)
    torch = import_torch(FEATURE)
    dev = resolve_device(device, FEATURE)
    dt = resolve_dtype(dtype, dev, FEATURE)
    check_quantizable(quantize, dev, dt, FEATURE)
    check_device_available(dev, FEATURE)
    kind = "token-classification+llmlingua-new-tokens" if new_tokens else "token-classification"
    key = (kind, model, dev, str(dt), trust_remote_code, quantize)

    def load() -> tuple[Any, Any]:
        tok = transformers.AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        require_fast_tokenizer(tok, model)
        m, info = transformers.AutoModelForTokenClassification.from_pretrained(
            model, trust_remote_code=trust_remote_code, output_loading_info=True, **dtype_kwarg(transformers, dt)
        )
        architectures = list(getattr(m.config, "architectures", None) or [])
        if architectures and not any(a.endswith("ForTokenClassification") for a in architectures):
            raise ConfigError(f"{model!r} holds a {architectures[0]}, not an LLMLingua-2 token classifier")
        check_tokenizer_fits(tok, m, model)
        untrained = [k for k in info.get("missing_keys", ()) if k.startswith((HEAD, "score"))]
        if untrained or getattr(m.config, "num_labels", 2) != 2:  # a fresh random head would "work" silently
            raise ConfigError(f"{model!r} is not an LLMLingua-2 token classifier (a trained 2-label "
                              f"'{HEAD}' layer): {'its head is missing' if untrained else 'it has '}"
                              f"{'' if untrained else str(m.config.num_labels) + ' labels'}")
        m = m.to(dev)
        if new_tokens:
            tok.add_special_tokens({"additional_special_tokens": list(NEW_TOKENS)})
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(42)
                m.resize_token_embeddings(len(tok))
        return quantize_model(m.eval(), quantize, FEATURE, keep=(HEAD,)), tok

    return cached_model(key, load, model)


def detect_family(family: str, name: str, model: Any, tok: Any) -> str:
    """The word-merging rule: as given, else the config's model type, the name (as llmlingua
    does), then the vocabulary's continuation marks."""
    if family != "auto":
        return family
    mt = str(getattr(model.config, "model_type", "")).lower()
    lower = name.lower()
    if "xlm-roberta" in mt or mt == "camembert" or "xlm-roberta-large" in lower:
        return "xlm-roberta"
    if mt in ("bert", "distilbert", "electra", "mobilebert") or "bert-base-multilingual-cased" in lower:
        return "bert"
    vocab = tok.convert_ids_to_tokens(list(range(min(len(tok), 5000))))
    if sum(t.startswith("##") for t in vocab) > sum(t.startswith("▁") for t in vocab):
        return "bert"
    if any(t.startswith("▁") for t in vocab):
        return "xlm-roberta"
    raise ConfigError(f"cannot tell the word-merging rule of {name!r}: pass family='bert' or 'xlm-roberta'")


def forward_windows(model: Any, tok: Any, streams: list[_TokenStream], chunks: list[tuple[int, int, int]],
                    probs: list[np.ndarray], max_seq_len: int, max_batch_size: int) -> None:
    """Batched forward over windows, longest first, padded per batch; fills ``probs``.

    Each window is ``[CLS] body [SEP]`` truncated to ``max_seq_len`` as llmlingua truncates it
    (dropping ``[SEP]`` when the body holds ``max_seq_len - 1`` tokens). Windows sorted by length
    and padded to the longest of their batch, not to ``max_seq_len``: the model sees less padding."""
    torch = import_torch(FEATURE)
    if not chunks:
        return
    cls_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    sep_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    seqs: list[np.ndarray] = []
    for si, a, b in chunks:
        body = streams[si].ids[a:b][: max_seq_len - 1]  # llmlingua truncates [CLS] + body to max_seq_len
        parts = [[cls_id], body]
        if len(body) + 2 <= max_seq_len:  # llmlingua truncates to max_seq_len, dropping [SEP]
            parts.append([sep_id])
        seqs.append(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for k in range(0, len(order), max_batch_size):
            batch = order[k: k + max_batch_size]
            width = len(seqs[batch[0]])
            ids = np.full((len(batch), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for r, i in enumerate(batch):
                ids[r, : len(seqs[i])] = seqs[i]
                mask[r, : len(seqs[i])] = 1
            logits = model(input_ids=torch.from_numpy(ids).to(device),
                           attention_mask=torch.from_numpy(mask).to(device)).logits
            p1 = torch.softmax(logits.float(), dim=-1)[..., 1].cpu().numpy().astype(np.float64)
            for r, i in enumerate(batch):
                si, a, b = chunks[i]
                m = min(b - a, max_seq_len - 1)
                probs[si][a: a + m] = p1[r, 1: 1 + m]
