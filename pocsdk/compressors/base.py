"""The compressor protocol: score once, select at any rate.

``score`` does the expensive work once per input (segmentation, token counts, relevance)
and returns a :class:`Scored`; ``select`` turns it into a :class:`Selection` at any keep
rate in microseconds. A performance predictor can therefore probe a whole grid of rates
for the price of one scoring pass, and :func:`render` builds the public result only for
the rate finally chosen.

:class:`UnitCompressor` owns the shared mechanics (normalising input, segmentation,
protection, token counting); a text compressor only writes how it ranks units
(``rank``) and how it spends a budget (``select``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from pocsdk.errors import InputTooLargeError
from pocsdk.text.protect import Protection, is_instruction, strip_markers
from pocsdk.text.segment import MAX_UNIT_CHARS, segment
from pocsdk.text.tokens import TokenCounter, get_token_counter
from pocsdk.types import (
    CompressionResult,
    ContextLike,
    Document,
    DocumentResult,
    Span,
    Timings,
    check_keep_rate,
    factor_from_keep_rate,
    normalize_context,
)

DEFAULT_MAX_INPUT_CHARS = 4_000_000
DOC_SEPARATOR = "\n\n"


@dataclass
class Units:
    """Column arrays describing text units across all documents of one input."""

    doc: np.ndarray  # int32, document index
    start: np.ndarray  # int64, char offset in that document
    end: np.ndarray  # int64
    tokens: np.ndarray  # int64, token count of the unit's text
    relevance: np.ndarray  # float64, >= 0
    protected: np.ndarray  # bool
    group: np.ndarray  # int32, paragraph / segment id (global across documents)
    kind: np.ndarray  # int8, see pocsdk.text.segment

    def __len__(self) -> int:
        return int(self.doc.shape[0])

    @classmethod
    def empty(cls) -> Units:
        z = np.zeros(0, dtype=np.int64)
        return cls(z.astype(np.int32), z, z, z, z.astype(np.float64), z.astype(bool), z.astype(np.int32),
                   z.astype(np.int8))


@dataclass
class Scored:
    """Everything ``select`` needs, computed once per input."""

    compressor: str
    parameters: dict[str, Any]
    documents: list[Document]
    query: str | None
    units: Units
    doc_tokens: np.ndarray  # original tokens per document
    tokenizer: TokenCounter
    excerpts: Units | None = None  # optional sub-unit spans (skimming)
    extras: dict[str, Any] = field(default_factory=dict)
    score_ms: float = 0.0
    passthrough_reason: str | None = None

    @property
    def total_tokens(self) -> int:
        return int(self.doc_tokens.sum())


@dataclass
class Selection:
    """Which units are kept verbatim and which excerpts stand in for skimmed segments."""

    keep: np.ndarray  # bool mask over scored.units
    skim: np.ndarray | None = None  # bool mask over scored.excerpts
    keep_rate: float = 1.0  # the requested rate
    passthrough_reason: str | None = None

    def tokens(self, scored: Scored) -> int:
        """Estimated compressed tokens (sum of selected unit counts), without rendering."""
        n = int(scored.units.tokens[self.keep].sum())
        if self.skim is not None and scored.excerpts is not None:
            n += int(scored.excerpts.tokens[self.skim].sum())
        return n


@runtime_checkable
class TextCompressor(Protocol):
    """What every compressor implements. ``name`` is its registry name."""

    name: str

    def score(self, context: ContextLike, query: str | None = None) -> Scored: ...

    def select(self, scored: Scored, keep_rate: float) -> Selection: ...


@dataclass
class UnitCompressor:
    """Base for compressors that keep or drop whole text units.

    Fields are the user-facing parameters; results report them.
    """

    name: ClassVar[str] = "unit"

    tokenizer: str | TokenCounter | None = None
    protect: Protection = field(default_factory=Protection)
    min_tokens: int = 64
    """Inputs with fewer tokens pass through unchanged."""
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS
    max_unit_chars: int = MAX_UNIT_CHARS

    # -- phase 1 -------------------------------------------------------------------------
    def score(self, context: ContextLike, query: str | None = None) -> Scored:
        t0 = time.perf_counter()
        docs = normalize_context(context)
        size = sum(len(d.text) for d in docs)
        if size > self.max_input_chars:
            raise InputTooLargeError(
                f"input has {size} characters, over the limit of {self.max_input_chars} "
                "(raise max_input_chars to allow it)"
            )
        counter = get_token_counter(self.tokenizer)
        doc_tokens = np.array(counter.count_many([strip_markers(d.text) for d in docs]), dtype=np.int64)
        units, unit_texts = self._units(docs, counter)
        scored = Scored(
            compressor=self.name,
            parameters=self.parameters(),
            documents=docs,
            query=query,
            units=units,
            doc_tokens=doc_tokens,
            tokenizer=counter,
        )
        if int(doc_tokens.sum()) < self.min_tokens:
            scored.passthrough_reason = "input_too_short"
        if len(units):
            units.relevance = np.asarray(self.rank(unit_texts, query, scored), dtype=np.float64)
            self.prepare(scored, unit_texts)
        scored.score_ms = (time.perf_counter() - t0) * 1000.0
        return scored

    def rank(self, unit_texts: list[str], query: str | None, scored: Scored) -> np.ndarray:
        """Relevance of each unit; higher is kept first."""
        raise NotImplementedError

    def prepare(self, scored: Scored, unit_texts: list[str]) -> None:
        """Hook for extra per-input work in ``score`` (e.g. skim excerpts)."""

    # -- phase 2 -------------------------------------------------------------------------
    def select(self, scored: Scored, keep_rate: float) -> Selection:
        """Protected units first, then units by descending relevance while they fit."""
        budget = budget_for(scored, keep_rate)
        if scored.passthrough_reason:
            return passthrough_selection(scored, keep_rate, scored.passthrough_reason)
        u = scored.units
        order = np.argsort(-u.relevance, kind="stable")
        return Selection(keep=fill_budget(order, u.tokens, budget, u.protected.copy()), keep_rate=keep_rate)

    def parameters(self) -> dict[str, Any]:
        """JSON-ready parameters reported in results."""
        tok = self.tokenizer if isinstance(self.tokenizer, str) or self.tokenizer is None else self.tokenizer.name
        return {
            "tokenizer": tok or "heuristic",
            "min_tokens": self.min_tokens,
            "protect_patterns": list(self.protect.patterns),
            "protect_instructions": self.protect.instructions,
        }

    # -- shared mechanics ----------------------------------------------------------------
    def _units(self, docs: list[Document], counter: TokenCounter) -> tuple[Units, list[str]]:
        doc_idx: list[int] = []
        starts: list[int] = []
        ends: list[int] = []
        groups: list[int] = []
        kinds: list[int] = []
        texts: list[str] = []
        protected: list[bool] = []
        group_base = 0
        for di, doc in enumerate(docs):
            text = doc.text
            segs = segment(text, self.max_unit_chars)
            prot_spans = self.protect.spans(text)
            prot = _overlaps([u.start for u in segs], [u.end for u in segs], prot_spans)
            for u, p in zip(segs, prot):
                piece = text[u.start:u.end]
                doc_idx.append(di)
                starts.append(u.start)
                ends.append(u.end)
                groups.append(group_base + u.paragraph)
                kinds.append(u.kind)
                texts.append(strip_markers(piece))
                protected.append(p or (self.protect.instructions and is_instruction(piece)))
            if segs:
                group_base += segs[-1].paragraph + 1
        n = len(texts)
        units = Units(
            doc=np.array(doc_idx, dtype=np.int32),
            start=np.array(starts, dtype=np.int64),
            end=np.array(ends, dtype=np.int64),
            tokens=np.array(counter.count_many(texts), dtype=np.int64) if n else np.zeros(0, np.int64),
            relevance=np.zeros(n),
            protected=np.array(protected, dtype=bool),
            group=np.array(groups, dtype=np.int32),
            kind=np.array(kinds, dtype=np.int8),
        )
        return units, texts


def budget_for(scored: Scored, keep_rate: float) -> int:
    return int(round(check_keep_rate(keep_rate) * scored.total_tokens))


def fill_budget(order: np.ndarray, tokens: np.ndarray, budget: int, chosen: np.ndarray) -> np.ndarray:
    """Greedy knapsack fill: walk ``order`` and take each item that still fits.

    ``chosen`` (bool mask, modified in place) may hold items already taken (protected
    units); their tokens count against the budget first.
    """
    used = int(tokens[chosen].sum())
    remaining = budget - used
    if remaining <= 0:
        return chosen
    cand = order[~chosen[order]]
    costs = tokens[cand]
    # Fast path: the longest prefix that fits, vectorised; then a short greedy tail.
    csum = np.cumsum(costs)
    k = int(np.searchsorted(csum, remaining, side="right"))
    chosen[cand[:k]] = True
    remaining -= int(csum[k - 1]) if k else 0
    if remaining > 0:
        for idx in cand[k:]:
            c = int(tokens[idx])
            if c <= remaining:
                chosen[idx] = True
                remaining -= c
                if remaining <= 0:
                    break
    return chosen


def passthrough_selection(scored: Scored, keep_rate: float, reason: str) -> Selection:
    return Selection(keep=np.ones(len(scored.units), dtype=bool), skim=None, keep_rate=keep_rate,
                     passthrough_reason=reason)


def render(
    scored: Scored,
    selection: Selection,
    *,
    select_ms: float = 0.0,
    separator: str = DOC_SEPARATOR,
    requested_keep_rate: float | None = None,
) -> CompressionResult:
    """Build the public result: compressed text per document, spans, counts, timings."""
    t0 = time.perf_counter()
    reason = selection.passthrough_reason or scored.passthrough_reason
    counter = scored.tokenizer
    docs_out: list[DocumentResult] = []
    if reason:
        for doc, n in zip(scored.documents, scored.doc_tokens):
            clean = strip_markers(doc.text)
            span = [Span(start=0, end=len(doc.text), kind="kept")] if doc.text else []
            docs_out.append(DocumentResult(id=doc.id, metadata=doc.metadata, text=clean,
                                           original_tokens=int(n), compressed_tokens=int(n), spans=span))
    else:
        spans_by_doc = _selected_spans(scored, selection)
        texts = [_join(doc.text, spans_by_doc[i]) for i, doc in enumerate(scored.documents)]
        counts = counter.count_many(texts)
        for i, doc in enumerate(scored.documents):
            docs_out.append(DocumentResult(
                id=doc.id, metadata=doc.metadata, text=texts[i],
                original_tokens=int(scored.doc_tokens[i]), compressed_tokens=int(counts[i]),
                spans=[Span(start=s, end=e, kind=k) for s, e, k in spans_by_doc[i]],
            ))
    original = int(sum(d.original_tokens for d in docs_out))
    compressed = int(sum(d.compressed_tokens for d in docs_out))
    keep = compressed / original if original else 1.0
    text = separator.join(d.text for d in docs_out if d.text)
    total = scored.score_ms + select_ms + (time.perf_counter() - t0) * 1000.0
    return CompressionResult(
        text=text,
        documents=docs_out,
        original_tokens=original,
        compressed_tokens=compressed,
        keep_rate=keep,
        compression_factor=factor_from_keep_rate(keep),
        requested_keep_rate=requested_keep_rate,
        compressor=scored.compressor,
        parameters=scored.parameters,
        tokenizer=counter.name,
        passthrough=bool(reason),
        reason=reason,
        timings=Timings(score_ms=scored.score_ms, select_ms=select_ms, total_ms=total),
        separator=separator,
    )


def _selected_spans(scored: Scored, selection: Selection) -> list[list[tuple[int, int, str]]]:
    """Selected spans per document, sorted, overlaps merged ('kept' wins over 'skimmed')."""
    raw: list[list[tuple[int, int, str]]] = [[] for _ in scored.documents]
    u = scored.units
    for i in np.flatnonzero(selection.keep):
        raw[int(u.doc[i])].append((int(u.start[i]), int(u.end[i]), "kept"))
    if selection.skim is not None and scored.excerpts is not None:
        x = scored.excerpts
        for i in np.flatnonzero(selection.skim):
            raw[int(x.doc[i])].append((int(x.start[i]), int(x.end[i]), "skimmed"))
    out: list[list[tuple[int, int, str]]] = []
    for spans in raw:
        spans.sort()
        merged: list[tuple[int, int, str]] = []
        for s, e, k in spans:
            if merged and s < merged[-1][1]:
                ps, pe, pk = merged[-1]
                merged[-1] = (ps, max(pe, e), "kept" if "kept" in (pk, k) else "skimmed")
            else:
                merged.append((s, e, k))
        out.append(merged)
    return out


def _join(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """Join spans; keep the original whitespace between neighbours, else one break or space."""
    parts: list[str] = []
    prev_end = -1
    for s, e, _ in spans:
        if prev_end >= 0:
            gap = text[prev_end:s]
            if not gap.strip():
                parts.append(gap)
            else:
                parts.append("\n" if "\n" in gap else " ")
        parts.append(text[s:e])
        prev_end = e
    return strip_markers("".join(parts))


def _overlaps(starts: list[int], ends: list[int], spans: list[tuple[int, int]]) -> list[bool]:
    """For each unit, does it overlap any protected span? (both sorted; two-pointer walk)"""
    out = [False] * len(starts)
    if not spans:
        return out
    arr_s = np.array(starts, dtype=np.int64)
    arr_e = np.array(ends, dtype=np.int64)
    for ps, pe in spans:
        hit = (arr_s < pe) & (arr_e > ps)
        for i in np.flatnonzero(hit):
            out[int(i)] = True
    return out
