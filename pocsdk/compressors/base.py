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

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from pocsdk.compressors.topup import top_up
from pocsdk.errors import ConfigError, InputTooLargeError
from pocsdk.text.protect import (
    KEEP_CLOSE,
    KEEP_OPEN,
    Protection,
    blank_markers,
    instruction_flags,
    strip_markers,
)
from pocsdk.text.segment import CODE, MAX_UNIT_CHARS, is_fence_line, segment_arrays
from pocsdk.text.tokens import NO_SPACE_CHAR, HeuristicTokenCounter, TokenCounter, get_token_counter
from pocsdk.types import (
    CompressionResult,
    ContextLike,
    Document,
    DocumentResult,
    Span,
    Timings,
    check_count,
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
    fence: np.ndarray | None = None  # bool: fence lines that follow their code block (see _fences_follow_code)

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
    partial: list[tuple[int, int, int, int]] = field(default_factory=list)
    """Kept prefixes of units that did not fit whole: (document, start, end, tokens); see topup.py."""

    def tokens(self, scored: Scored) -> int:
        """Estimated compressed tokens (sum of selected unit counts), without rendering."""
        n = int(scored.units.tokens[self.keep].sum()) + sum(p[3] for p in self.partial)
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

    def __post_init__(self) -> None:
        """Reject bad parameters when the compressor is built, not deep inside the first call."""
        self.min_tokens = check_count("min_tokens", self.min_tokens)
        self.max_input_chars = check_count("max_input_chars", self.max_input_chars, minimum=1)
        self.max_unit_chars = check_count("max_unit_chars", self.max_unit_chars, minimum=16)
        self.protect = as_protection(self.protect)

    # -- phase 1 -------------------------------------------------------------------------
    def score(self, context: ContextLike, query: str | None = None) -> Scored:
        t0 = time.perf_counter()
        docs = checked_documents(context, self.max_input_chars)
        counter = get_token_counter(self.tokenizer)
        units, unit_texts, doc_tokens = self._units_counted(docs, counter)
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
        early = early_selection(scored, keep_rate)
        if early is not None:
            return early
        u = scored.units
        order = np.argsort(-u.relevance, kind="stable")
        keep = fill_budget(order, u.tokens, budget, u.protected.copy())
        return Selection(keep=keep, keep_rate=keep_rate, partial=top_up(scored, order, keep, budget))

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
        units, texts, _ = self._units_counted(docs, counter)
        return units, texts

    def _units_counted(self, docs: list[Document], counter: TokenCounter) -> tuple[Units, list[str], np.ndarray]:
        """Units of all documents, their texts (markers removed) and each document's token count.

        With the heuristic counter a document is counted once for itself and all its units
        (:meth:`HeuristicTokenCounter.count_spans`); the counts equal counting each text alone.
        """
        cols: list[tuple[np.ndarray, ...]] = []
        texts: list[str] = []
        doc_tokens = np.zeros(len(docs), dtype=np.int64)
        to_count: list[int] = []  # documents whose units and total are counted by count_many
        group_base = 0
        for di, doc in enumerate(docs):
            text = doc.text
            marked = KEEP_OPEN in text or KEEP_CLOSE in text
            # markers read as blanks, so "<keep>A.</keep> B." is two units, not one protected whole
            starts, ends, paras, kinds = segment_arrays(blank_markers(text) if marked and self.protect.markers
                                                        else text, self.max_unit_chars)
            pieces = [text[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
            texts.extend([strip_markers(x) for x in pieces] if marked else pieces)
            protected = _overlaps(starts, ends, self.protect.spans(text))
            if self.protect.instructions:  # code is not addressed to the reader ("return x" is no order)
                protected |= instruction_flags(pieces) & (kinds != CODE)
            fence = np.zeros(len(pieces), dtype=bool)
            if self.protect.code_fences and ("```" in text or "~~~" in text):
                # a cut code block stays fenced: its fence lines are protected, and when rendered they follow
                # their block's code (dropped with a block dropped whole); one the user protected stays regardless
                fence = np.fromiter((k == CODE and is_fence_line(x) for k, x in zip(kinds.tolist(), pieces,
                                                                                     strict=True)),
                                    dtype=bool, count=len(pieces))
                fence &= ~protected
                protected |= fence
            if not marked and isinstance(counter, HeuristicTokenCounter):
                doc_tokens[di], tokens = counter.count_spans(text, starts, ends)
            else:
                tokens = np.zeros(len(starts), dtype=np.int64)
                to_count.append(di)
            cols.append((np.full(len(starts), di, dtype=np.int32), starts, ends, tokens, protected,
                         (group_base + paras).astype(np.int32), kinds.astype(np.int8), fence))
            if len(paras):
                group_base += int(paras[-1]) + 1
        if not cols:
            return Units.empty(), texts, doc_tokens
        doc_idx, start, end, tokens, protected, group, kind, fence_all = (np.concatenate(c)
                                                                          for c in zip(*cols, strict=True))
        if to_count:
            which = np.flatnonzero(np.isin(doc_idx, to_count))
            tokens[which] = counter.count_many([texts[i] for i in which.tolist()])
            doc_tokens[to_count] = counter.count_many([strip_markers(docs[d].text) for d in to_count])
        units = Units(doc=doc_idx, start=start, end=end, tokens=tokens, relevance=np.zeros(len(texts)),
                      protected=protected, group=group, kind=kind, fence=fence_all if fence_all.any() else None)
        return units, texts, doc_tokens



def checked_documents(context: ContextLike, max_input_chars: int) -> list[Document]:
    """Normalised documents of ``context``, rejecting inputs over the size limit before any work."""
    docs = normalize_context(context)
    size = sum(len(d.text) for d in docs)
    if size > max_input_chars:
        raise InputTooLargeError(
            f"input has {size} characters, over the limit of {max_input_chars} (raise max_input_chars to allow it)"
        )
    return docs


def as_protection(value: object) -> Protection:
    """A compressor's ``protect`` parameter: None (the defaults), a Protection, or a list of regexes."""
    if value is None:
        return Protection()
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return Protection(patterns=tuple(value))
    if not isinstance(value, Protection):
        raise ConfigError(f"protect must be a Protection or a list of regexes, got {type(value).__name__}")
    return value

def budget_for(scored: Scored, keep_rate: float) -> int:
    return round(check_keep_rate(keep_rate) * scored.total_tokens)


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


FULL_KEEP_RATE = "full_keep_rate"
"""Passthrough reason when keep_rate is 1.0: the context comes back unchanged."""


def early_selection(scored: Scored, keep_rate: float) -> Selection | None:
    """The selection when nothing is to be compressed (input too short, keep_rate 1.0), else None."""
    if scored.passthrough_reason:
        return passthrough_selection(scored, keep_rate, scored.passthrough_reason)
    if keep_rate >= 1.0:
        return passthrough_selection(scored, keep_rate, FULL_KEEP_RATE)
    return None


def passthrough_selection(scored: Scored, keep_rate: float, reason: str) -> Selection:
    return Selection(keep=np.ones(len(scored.units), dtype=bool), skim=None, keep_rate=keep_rate,
                     passthrough_reason=reason)


def _kept_texts(scored: Scored, selection: Selection) -> tuple[list[list[tuple[int, int, SpanKind]]], list[str]]:
    """Per document, the kept spans and the text they join into (what :func:`render` returns)."""
    spans_by_doc = _selected_spans(scored, selection)
    source = bool(scored.extras.get(SOURCE_WHITESPACE))
    return spans_by_doc, [_join(doc.text, spans_by_doc[i], source) for i, doc in enumerate(scored.documents)]


SOURCE_WHITESPACE = "join_with_source_whitespace"
"""``Scored.extras`` flag of word-level compressors: joins of pieces apart on one line write the whitespace
character before the later piece (a tab, a no-break space), as their word budgets priced it."""


def rendered_tokens(scored: Scored, selection: Selection) -> int:
    """The ``compressed_tokens`` :func:`render` would report, without building the result (no span objects)."""
    if selection.passthrough_reason or scored.passthrough_reason:
        return int(sum(scored.doc_tokens))
    return int(sum(scored.tokenizer.count_many(_kept_texts(scored, selection)[1])))


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
        for doc, n in zip(scored.documents, scored.doc_tokens, strict=True):
            clean = strip_markers(doc.text)
            span = [Span(start=0, end=len(doc.text), kind="kept")] if doc.text else []
            docs_out.append(DocumentResult(id=doc.id, metadata=doc.metadata, text=clean,
                                           original_tokens=int(n), compressed_tokens=int(n), spans=span))
    else:
        spans_by_doc, texts = _kept_texts(scored, selection)
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


SpanKind = Literal["kept", "skimmed"]


def _selected_spans(scored: Scored, selection: Selection) -> list[list[tuple[int, int, SpanKind]]]:
    """Selected spans per document, sorted, overlaps merged ('kept' wins over 'skimmed')."""
    raw: list[list[tuple[int, int, SpanKind]]] = [[] for _ in scored.documents]
    u = scored.units
    keep = _fences_follow_code(scored, selection)
    for i in np.flatnonzero(keep):
        raw[int(u.doc[i])].append((int(u.start[i]), int(u.end[i]), "kept"))
    if selection.skim is not None and scored.excerpts is not None:
        x = scored.excerpts
        for i in np.flatnonzero(selection.skim):
            raw[int(x.doc[i])].append((int(x.start[i]), int(x.end[i]), "skimmed"))
    for d, s, e, _ in selection.partial:
        raw[d].append((s, e, "kept"))
    out: list[list[tuple[int, int, SpanKind]]] = []
    for spans in raw:
        spans.sort()
        merged: list[tuple[int, int, SpanKind]] = []
        for s, e, k in spans:
            if merged and s < merged[-1][1]:
                ps, pe, pk = merged[-1]
                merged[-1] = (ps, max(pe, e), "kept" if "kept" in (pk, k) else "skimmed")
            else:
                merged.append((s, e, k))
        out.append(merged)
    return out


def _fences_follow_code(scored: Scored, selection: Selection) -> np.ndarray:
    """The kept units with each code block's fence lines set to follow its code: kept when any of the block's
    code is kept (a unit, a top-up prefix or a skim excerpt within it), dropped with a block dropped whole.
    Fences go by block (its units share a ``group``), so a kept block is never left half fenced."""
    u = scored.units
    keep = selection.keep
    if u.fence is None or not u.fence.any():
        return keep
    code = keep & ~u.fence
    alive = set(np.unique(u.group[code]).tolist())
    inside: list[tuple[int, int, int]] = [(d, s, e) for d, s, e, _ in selection.partial]
    if selection.skim is not None and scored.excerpts is not None:
        x = scored.excerpts
        inside += [(int(x.doc[i]), int(x.start[i]), int(x.end[i])) for i in np.flatnonzero(selection.skim)]
    out = keep.copy()
    for g in np.unique(u.group[u.fence]).tolist():
        members = np.flatnonzero(u.group == g)
        if g not in alive and inside:
            d, lo, hi = int(u.doc[members[0]]), int(u.start[members].min()), int(u.end[members].max())
            if any(dd == d and s < hi and e > lo for dd, s, e in inside):
                alive.add(g)
        fences = members[u.fence[members]]
        out[fences] = g in alive
    return out


_OTHER_BREAK = re.compile("[\r\u2028\u2029\f]")


def _join(text: str, spans: Sequence[tuple[int, int, str]], source_whitespace: bool = False) -> str:
    """Join spans; keep the original whitespace between neighbours (protection markers between them are
    no gap), else one line break, else nothing between two characters of a script written without spaces
    (Chinese, Japanese, Thai) when the dropped text held no whitespace either, else a space (with
    ``source_whitespace``, the whitespace character before the later span)."""
    parts: list[str] = []
    prev_end = -1
    for s, e, _ in spans:
        if prev_end >= 0:
            gap = text[prev_end:s]
            if not gap.strip() or not strip_markers(gap).strip():
                parts.append(gap)  # markers in it go with the rest, below
            elif "\n" in gap:
                parts.append("\n")
            elif (brk := _OTHER_BREAK.search(gap)) is not None:  # classic Mac "\r", U+2028/2029, page break:
                parts.append(brk.group())  # the text's own line break, as segmentation read it
            elif (prev_end > 0 and NO_SPACE_CHAR.match(text, prev_end - 1) and NO_SPACE_CHAR.match(text, s)
                  and not any(c.isspace() for c in gap)):
                pass  # "天气很好" less "气很" is "天好", not "天 好"
            else:
                parts.append(text[s - 1] if source_whitespace and text[s - 1].isspace() else " ")
        parts.append(text[s:e])
        prev_end = e
    return strip_markers("".join(parts))


def _overlaps(starts: np.ndarray, ends: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """For each unit, does it overlap any protected span? (bool array; vectorised)

    A unit [s, e) overlaps some span iff, among spans starting before e, the furthest end is after s.
    """
    out = np.zeros(len(starts), dtype=bool)
    if not spans or not len(starts):
        return out
    span_arr = np.array(sorted(spans), dtype=np.int64).reshape(-1, 2)
    reach = np.maximum.accumulate(span_arr[:, 1])
    k = np.searchsorted(span_arr[:, 0], ends, side="left")  # spans with start < unit end
    hit = k > 0
    out[hit] = reach[k[hit] - 1] > starts[hit]
    return out


def changed_parameters(recorded: Any, current: dict[str, Any] | None, filled_on_load: Iterable[str] = ()) -> list[str]:
    """Parameter names whose recorded value (from an earlier run's output) differs from the current one.

    ``filled_on_load`` names parameters a model-backed compressor reports as ``None`` until its model loads
    (RAM's ``segment_tokens``, read from its checkpoint): ``None`` there is no difference. Any other ``None`` is
    the user's choice and compared. Nothing differs when either side is missing."""
    if not isinstance(recorded, dict) or current is None:
        return []
    pending = set(filled_on_load)
    return sorted(k for k in set(recorded) | set(current)
                  if not (k in pending and current.get(k) is None) and recorded.get(k) != current.get(k))
