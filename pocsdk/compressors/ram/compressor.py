"""RAM behind the two-phase protocol: ``score`` runs the encoder once, ``select`` is a top-k at any rate.

Units are the fixed-width token segments (character spans from the tokenizer's offset mapping);
``units.relevance`` is the segment relevance rescaled to [0, 1], so the generic featurizer and
floor search work unchanged. ``keep_rate`` means what it means for text compressors, decoder
input tokens / original tokens: ``select`` turns it into the close-reading fraction
``rho = (keep_rate - 1/w) / (1 - 1/w)`` and keeps the top ``floor(rho * S)`` segments (the
official rounding). Below ``1/w`` everything is skimmed, the most RAM can compress.

Each skimmed segment has one excerpt: its highest-weighted token, a one-token stand-in for its
one vector. The rendered text is therefore close-read text plus one word per skimmed segment, and
its token count is close to the decoder's input length; :meth:`RAMCompressor.decoder_inputs` builds
the real decoder input and :meth:`RAMCompressor.plan` reports exact counts and the effective factor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from pocsdk.compressors._torch import cached_model, import_transformers
from pocsdk.compressors.base import (
    DEFAULT_MAX_INPUT_CHARS,
    Scored,
    Selection,
    Units,
    checked_documents,
    early_selection,
    render,
)
from pocsdk.compressors.ram.config import RAMConfig, effective_factor
from pocsdk.errors import ConfigError
from pocsdk.types import CompressionResult, ContextLike, check_count, check_keep_rate

FEATURE = "the RAM compressor"


class RAMPlan(BaseModel):
    """What the decoder reads for one selection."""

    segments: int
    kept_segments: int
    skimmed_segments: int
    original_tokens: int
    memory_tokens: int
    """Decoder positions for the context: kept tokens, one per skimmed segment, and the separators between
    documents."""
    prompt_tokens: int
    """Decoder text tokens around the memory (BOS, context prefix and query prompt)."""
    decoder_tokens: int
    """memory_tokens + prompt_tokens: the prefill length."""
    rho: float
    """Close-reading fraction of segments actually kept."""
    keep_rate: float
    """memory_tokens / original_tokens."""
    effective_factor: float
    """original_tokens / memory_tokens (about 1 / (rho + (1 - rho) / w))."""
    formula_factor: float
    """1 / (rho + (1 - rho) / w) for the achieved rho."""
    segment_tokens: int


class _TokenizerCounter:
    """The backbone tokenizer as a pocsdk TokenCounter, so results count the decoder's tokens."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self._tok = tokenizer
        self.name = name

    def count(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=False)["input_ids"]) if text else 0

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [self.count(t) for t in texts]


@dataclass
class RAMCompressor:
    """Neural close reading and skimming (RAM, arXiv 2602.01840) for an open-weights decoder.

    Give ``backbone`` (a local folder, cached hub id, or ``.gguf`` file) and optionally
    ``checkpoint`` (a pocsdk RAM checkpoint folder, or the official release's ``.safetensors``),
    or pass a ready :class:`~pocsdk.compressors.ram.model.RAMModel` as ``model``.
    """

    name: ClassVar[str] = "ram"

    backbone: str | None = None
    checkpoint: str | None = None
    gguf_file: str | None = None
    encoder_layers: int | None = None
    """Default: the checkpoint's, else 8 (the official setting)."""
    segment_tokens: int | None = None
    """Default: the checkpoint's, else 32."""
    query_template: str | None = None
    """Decoder prompt after the memory, with ``{query}`` (default: the official ``Question:{query}\nAnswer:``)."""
    context_prefix: str | None = None
    """Decoder text before the memory (default: none, as the official setup); e.g. a chat template's user turn."""
    device: str | None = "auto"
    dtype: str | None = "auto"
    min_tokens: int = 64
    """Inputs with fewer tokens pass through unchanged."""
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS
    trust_remote_code: bool = False
    model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.min_tokens = check_count("min_tokens", self.min_tokens)
        self.max_input_chars = check_count("max_input_chars", self.max_input_chars, minimum=1)
        if self.model is None and self.backbone is None and self.checkpoint is None:
            raise ConfigError("RAMCompressor needs backbone=<model path>, checkpoint=<dir> or model=<RAMModel>")
        for name in ("encoder_layers", "segment_tokens"):
            value = getattr(self, name)
            if value is not None:
                check_count(name, value, minimum=2 if name == "segment_tokens" else 1)

    # -- model ---------------------------------------------------------------------------
    def load(self) -> Any:
        """The RAMModel (loaded once per process and settings)."""
        if self.model is not None:
            return self.model
        import_transformers(FEATURE)
        key = ("ram", self.backbone, self.checkpoint, self.gguf_file, self.encoder_layers, self.segment_tokens,
               self.query_template, self.context_prefix, self.device, self.dtype, self.trust_remote_code)

        def _load() -> tuple[Any, Any]:
            from pocsdk.compressors.ram.checkpoint import load_ram

            m = load_ram(checkpoint=self.checkpoint, backbone=self.backbone, gguf_file=self.gguf_file,
                         encoder_layers=self.encoder_layers, segment_tokens=self.segment_tokens,
                         device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                         query_template=self.query_template, context_prefix=self.context_prefix)
            return m, m.tokenizer

        self.model = cached_model(key, _load)[0]
        return self.model

    # -- phase 1 -------------------------------------------------------------------------
    def score(self, context: ContextLike, query: str | None = None) -> Scored:
        """Tokenize, cut segments, run the encoder once; keep relevance and skim vectors in extras."""
        t0 = time.perf_counter()
        docs = checked_documents(context, self.max_input_chars)
        model = self.load()
        w = model.segment_tokens
        seg_ids, seg_offsets, seg_doc, doc_tokens = cut_segments(model.tokenizer, [d.text for d in docs], w)
        cols = {
            "doc": seg_doc,
            "start": [offs[0][0] for offs in seg_offsets],
            "end": [offs[-1][1] for offs in seg_offsets],
            "tokens": [len(ids) for ids in seg_ids],
        }
        n = len(seg_ids)
        units = Units(
            doc=np.asarray(cols["doc"], dtype=np.int32), start=np.asarray(cols["start"], dtype=np.int64),
            end=np.asarray(cols["end"], dtype=np.int64), tokens=np.asarray(cols["tokens"], dtype=np.int64),
            relevance=np.zeros(n), protected=np.zeros(n, dtype=bool), group=np.arange(n, dtype=np.int32),
            kind=np.zeros(n, dtype=np.int8),
        )
        name = model.source.get("backbone") or type(model.decoder).__name__
        scored = Scored(compressor=self.name, parameters=self.parameters(), documents=docs, query=query,
                        units=units, doc_tokens=doc_tokens, tokenizer=_TokenizerCounter(model.tokenizer, f"hf:{name}"))
        scored.extras.update(ram_segments=seg_ids, ram_segment_tokens=w, ram_prompt=model.prompt_ids(query),
                            ram_prefix=model.prefix_ids(), ram_separator=model.separator_ids())
        if int(doc_tokens.sum()) < self.min_tokens or n == 0:
            scored.passthrough_reason = "input_too_short"
        else:
            self._encode(model, scored, seg_offsets)
        scored.score_ms = (time.perf_counter() - t0) * 1000.0
        return scored

    def _encode(self, model: Any, scored: Scored, seg_offsets: list[list[tuple[int, int]]]) -> None:
        import torch

        t0 = time.perf_counter()
        q_ids = list(model.tokenizer(scored.query, add_special_tokens=False)["input_ids"]) if scored.query else []
        with torch.inference_mode():
            enc = model.encode(scored.extras["ram_segments"], q_ids)
            skim = model.aligned(enc.skim)
        cos = enc.relevance.double().cpu().numpy()
        u = scored.units
        u.relevance = (cos + 1.0) / 2.0
        top = enc.top_token.cpu().numpy()
        starts = np.array([seg_offsets[i][int(t)][0] for i, t in enumerate(top)], dtype=np.int64)
        ends = np.array([seg_offsets[i][int(t)][1] for i, t in enumerate(top)], dtype=np.int64)
        n = len(u)
        scored.excerpts = Units(doc=u.doc.copy(), start=starts, end=ends, tokens=np.ones(n, dtype=np.int64),
                                relevance=u.relevance.copy(), protected=np.zeros(n, dtype=bool),
                                group=np.arange(n, dtype=np.int32), kind=u.kind.copy())
        scored.extras.update(ram_cosine=cos, ram_skim=skim, ram_encode_ms=(time.perf_counter() - t0) * 1000.0)

    # -- phase 2 -------------------------------------------------------------------------
    def select(self, scored: Scored, keep_rate: float) -> Selection:
        """Top ``floor(rho * S)`` segments by relevance read closely, the rest skimmed."""
        keep_rate = check_keep_rate(keep_rate)
        early = early_selection(scored, keep_rate)
        if early is not None:
            return early
        # the most segments read closely (by relevance) whose decoder memory stays within the budget: each kept
        # segment costs its tokens instead of one skim vector, and the separators between documents count too
        n = len(scored.units)
        order = np.argsort(-scored.units.relevance, kind="stable")
        extra = np.concatenate([[0], np.cumsum(scored.units.tokens[order] - 1)])  # cost of reading k closely
        memory = n + _separator_tokens(scored) + extra
        fits = np.nonzero(memory <= keep_rate * scored.total_tokens + 1e-9)[0]
        k = int(fits[-1]) if fits.size else 0
        return self.select_segments(scored, k, keep_rate=keep_rate)

    def select_ratio(self, scored: Scored, rho: float) -> Selection:
        """Keep the top ``floor(rho * S)`` segments: the official ``top_p`` parameter."""
        if not 0.0 <= float(rho) <= 1.0:
            raise ConfigError(f"keep_ratio must be in [0, 1], got {rho!r}")
        w = int(scored.extras["ram_segment_tokens"])
        rate = min(1.0, max(rho + (1.0 - rho) / w, 1e-9))
        if scored.passthrough_reason:
            return early_selection(scored, rate) or Selection(keep=np.ones(len(scored.units), dtype=bool))
        return self.select_segments(scored, int(float(rho) * len(scored.units) + 1e-9), keep_rate=rate)

    def select_segments(self, scored: Scored, k: int, keep_rate: float = 1.0) -> Selection:
        n = len(scored.units)
        keep = np.zeros(n, dtype=bool)
        order = np.argsort(-scored.units.relevance, kind="stable")
        keep[order[: max(0, min(k, n))]] = True
        return Selection(keep=keep, skim=~keep, keep_rate=keep_rate)

    # -- decoder side --------------------------------------------------------------------
    def plan(self, scored: Scored, selection: Selection) -> RAMPlan:
        """Exact decoder input accounting for one selection."""
        n = len(scored.units)
        keep = np.ones(n, dtype=bool) if _passthrough(scored, selection) else selection.keep
        kept = int(keep.sum())
        memory = int(scored.units.tokens[keep].sum()) + (n - kept) + _separator_tokens(scored)
        total = scored.total_tokens
        prompt = len(scored.extras["ram_prompt"]) + len(scored.extras.get("ram_prefix", ()))
        w = int(scored.extras["ram_segment_tokens"])
        rho = kept / n if n else 1.0
        return RAMPlan(
            segments=n, kept_segments=kept, skimmed_segments=n - kept, original_tokens=total,
            memory_tokens=memory, prompt_tokens=prompt, decoder_tokens=memory + prompt, rho=rho,
            keep_rate=memory / total if total else 1.0,
            effective_factor=total / memory if memory else 1.0,
            formula_factor=effective_factor(rho, w), segment_tokens=w,
        )

    def decoder_inputs(self, scored: Scored, selection: Selection) -> tuple[Any, Any]:
        """``(inputs_embeds [1, L, H], attention_mask [1, L])`` for ``decoder.generate``."""
        import torch

        model = self.load()
        segs = scored.extras["ram_segments"]
        keep = np.ones(len(segs), dtype=bool) if _passthrough(scored, selection) else selection.keep
        with torch.inference_mode():
            return model.assemble(segs, keep.tolist(), scored.extras.get("ram_skim"), scored.extras["ram_prompt"],
                                  prefix=scored.extras.get("ram_prefix", ()), docs=scored.units.doc.tolist(),
                                  separator=scored.extras.get("ram_separator", ()))

    def render(self, scored: Scored, selection: Selection, *, select_ms: float = 0.0) -> CompressionResult:
        """:func:`pocsdk.compressors.render` plus the exact plan under ``parameters['ram']``."""
        result = render(scored, selection, select_ms=select_ms, requested_keep_rate=selection.keep_rate)
        result.parameters = {**result.parameters, "ram": self.plan(scored, selection).model_dump()}
        return result

    filled_on_load = ("backbone", "encoder_layers", "segment_tokens")
    """Parameters read from the checkpoint when the model loads (``None`` before)."""

    def parameters(self) -> dict[str, Any]:
        cfg: RAMConfig | None = getattr(self.model, "ram_config", None)
        return {
            "backbone": self.backbone or (self.model.source.get("backbone") if self.model is not None else None),
            "checkpoint": self.checkpoint,
            "encoder_layers": cfg.encoder_layers if cfg else self.encoder_layers,
            "segment_tokens": cfg.segment_tokens if cfg else self.segment_tokens,
            "min_tokens": self.min_tokens,
            "keep_rate_formula": "keep_rate = rho + (1 - rho) / segment_tokens; factor = 1 / keep_rate",
        }


def _separator_tokens(scored: Scored) -> int:
    """Decoder tokens of the separators between documents (one where two segments' documents differ)."""
    n = len(scored.units)
    boundaries = int(np.count_nonzero(np.diff(scored.units.doc))) if n else 0
    return boundaries * len(scored.extras.get("ram_separator", ()))


def _passthrough(scored: Scored, selection: Selection) -> bool:
    return bool(selection.passthrough_reason or scored.passthrough_reason)


def cut_segments(
    tokenizer: Any, texts: list[str], width: int
) -> tuple[list[list[int]], list[list[tuple[int, int]]], list[int], np.ndarray]:
    """Fixed-width token windows of each text: (ids, char offsets, text index) per segment, tokens per text.

    Segments never straddle two documents, so each has a character span in one document; the last
    window of a document may be shorter than ``width``.
    """
    from pocsdk.compressors._torch import encode_with_offsets

    seg_ids: list[list[int]] = []
    seg_offsets: list[list[tuple[int, int]]] = []
    seg_doc: list[int] = []
    doc_tokens = np.zeros(len(texts), dtype=np.int64)
    for di, text in enumerate(texts):
        ids, offsets = encode_with_offsets(tokenizer, text)
        doc_tokens[di] = len(ids)
        for s in range(0, len(ids), width):
            seg_ids.append(list(ids[s: s + width]))
            seg_offsets.append([(int(a), int(b)) for a, b in offsets[s: s + width]])
            seg_doc.append(di)
    return seg_ids, seg_offsets, seg_doc, doc_tokens
