"""RAM-style hybrid reading in text form: read the relevant segments closely, skim the rest.

After "Read As Human" (arXiv 2602.01840), without a neural model: the context is cut into
segments (paragraphs, long ones split); the segments most relevant to the query are kept
verbatim (close reading); every other segment is reduced to its most relevant sentence or
clause (skimming) instead of vanishing, so the reader still sees what each part was about.
When even the skims do not fit the budget, the least relevant segments are dropped.

Clauses are never cut out of a sentence that carries a negation, so skimming never turns
"safe, but not for children" into "safe".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pocsdk.compressors.base import (
    Scored,
    Selection,
    UnitCompressor,
    Units,
    budget_for,
    early_selection,
)
from pocsdk.compressors.grid import fill_budgets, fill_walk
from pocsdk.compressors.topup import Partial, top_up, worth_topping_up
from pocsdk.errors import ConfigError
from pocsdk.text.protect import KEEP_CLOSE, KEEP_OPEN, has_negation, strip_markers
from pocsdk.text.relevance import Relevance, get_relevance
from pocsdk.text.segment import CODE, TABLE_ROW, clauses


@dataclass
class SkimCompressor(UnitCompressor):
    """Close reading of the top segments, one-sentence (or one-clause) skims of the others."""

    name: ClassVar[str] = "skim"

    relevance: str | Relevance | None = field(default="bm25")
    segment_tokens: int = 96
    """Segments are paragraphs, split so that none exceeds about this many tokens."""
    skim_share: float = 0.35
    """At most this share of the budget goes to skims before close reading is decided."""
    clause_min_tokens: int = 24
    """Sentences longer than this are skimmed as their most relevant clause."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.skim_share, (int, float)) or not 0.0 <= float(self.skim_share) <= 1.0:
            raise ConfigError(f"skim_share must be a number in [0, 1], got {self.skim_share!r}")
        for name in ("segment_tokens", "clause_min_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    def rank(self, unit_texts: list[str], query: str | None, scored: Scored) -> np.ndarray:
        return get_relevance(self.relevance).score(unit_texts, query)

    def prepare(self, scored: Scored, unit_texts: list[str]) -> None:
        u = scored.units
        seg = _segments(u.group, u.tokens, self.segment_tokens)
        n_seg = int(seg.max()) + 1
        seg_max = np.full(n_seg, -np.inf)
        np.maximum.at(seg_max, seg, u.relevance)
        seg_sum = np.bincount(seg, weights=u.relevance, minlength=n_seg)
        seg_len = np.bincount(seg, minlength=n_seg)
        seg_rel = 0.7 * seg_max + 0.3 * seg_sum / np.maximum(seg_len, 1)
        seg_tokens = np.bincount(seg, weights=u.tokens, minlength=n_seg).astype(np.int64)
        # best unit of each segment: highest relevance, ties to the earliest
        order = np.lexsort((np.arange(len(u)), -u.relevance, seg))
        first = np.r_[True, seg[order][1:] != seg[order][:-1]]
        best_unit = order[first]
        scored.excerpts = self._excerpts(scored, unit_texts, best_unit)
        scored.extras.update(segment=seg, segment_relevance=seg_rel, segment_tokens=seg_tokens, best_unit=best_unit)

    def _excerpts(self, scored: Scored, unit_texts: list[str], best_unit: np.ndarray) -> Units:
        """One excerpt per segment: its best unit, or that unit's best clause."""
        u = scored.units
        docs = scored.documents
        starts = u.start[best_unit].copy()
        ends = u.end[best_unit].copy()
        tokens = u.tokens[best_unit].copy()
        # only long prose may lose clauses: code, table rows and protected text are shown whole
        long_prose = (tokens > self.clause_min_tokens) & ~u.protected[best_unit]
        long_prose &= (u.kind[best_unit] != CODE) & (u.kind[best_unit] != TABLE_ROW)
        which = np.flatnonzero(long_prose)
        unit_of = best_unit[which].tolist()
        doc_of = u.doc[best_unit[which]].tolist()
        start_of = starts[which].tolist()
        end_of = ends[which].tolist()
        marked = [KEEP_OPEN in d.text or KEEP_CLOSE in d.text for d in docs]
        cand_texts: list[str] = []
        cand_owner: list[int] = []
        cand_spans: list[tuple[int, int]] = []
        for j, i, d, a, b in zip(which.tolist(), unit_of, doc_of, start_of, end_of, strict=True):
            if has_negation(unit_texts[i]):
                continue
            text = docs[d].text
            parts = clauses(text, a, b)
            if len(parts) < 2:
                continue
            if marked[d]:
                cand_texts += [strip_markers(text[s:e]) for s, e in parts]
            else:
                cand_texts += [text[s:e] for s, e in parts]
            cand_owner += [j] * len(parts)
            cand_spans += parts
        if cand_texts:
            rel = np.asarray(get_relevance(self.relevance).score(cand_texts, scored.query)).tolist()
            best: dict[int, int] = {}
            for k, owner in enumerate(cand_owner):
                if owner not in best or rel[k] > rel[best[owner]]:
                    best[owner] = k
            owners = list(best)
            picked = list(best.values())
            starts[owners] = [cand_spans[k][0] for k in picked]
            ends[owners] = [cand_spans[k][1] for k in picked]
            tokens[owners] = scored.tokenizer.count_many([cand_texts[k] for k in picked])
        return Units(
            doc=u.doc[best_unit], start=starts, end=ends, tokens=tokens,
            relevance=u.relevance[best_unit], protected=np.zeros(len(best_unit), dtype=bool),
            group=np.arange(len(best_unit), dtype=np.int32), kind=u.kind[best_unit],
        )

    def select(self, scored: Scored, keep_rate: float) -> Selection:
        return self.select_many(scored, [keep_rate])[0]

    def select_many(self, scored: Scored, keep_rates: Sequence[float]) -> list[Selection]:
        """The selection at each rate; the rates share the sorting and walk their budgets together.

        Each one is what selecting at that rate alone gives (see :func:`~pocsdk.compressors.grid.fill_budgets`).
        """
        budgets = [budget_for(scored, r) for r in keep_rates]
        out = [early_selection(scored, r) for r in keep_rates]
        todo = [i for i, sel in enumerate(out) if sel is None]
        if todo:
            b = np.array([budgets[i] for i in todo], dtype=np.int64)
            by_unit = np.argsort(-scored.units.relevance, kind="stable")
            keep, skim = self._read_and_skim(scored, b, by_unit)
            partials = self._top_ups(scored, by_unit, b, keep, skim)
            for row, i in enumerate(todo):
                out[i] = Selection(keep=keep[row], skim=skim[row], keep_rate=keep_rates[i], partial=partials[row])
        return [sel for sel in out if sel is not None]

    def _read_and_skim(self, scored: Scored, budgets: np.ndarray,
                       by_unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kept units and skimmed segments, one row per budget (steps 1-4 of the selection)."""
        u = scored.units
        x = scored.excerpts
        assert x is not None  # set by prepare for any non-empty input
        seg = scored.extras["segment"]
        by_rel = np.argsort(-scored.extras["segment_relevance"], kind="stable")
        # protected tokens are spent already; what remains is shared by close reading and skims
        protected_by_seg = np.bincount(seg[u.protected], weights=u.tokens[u.protected], minlength=len(by_rel))
        skim_cost = x.tokens.copy()
        skim_cost[protected_by_seg > 0] = 0  # a segment with protected text is represented by it
        remaining = budgets - int(u.tokens[u.protected].sum())
        # steps 1-3 walk the segments by relevance: their arrays in that order, back to segment order after
        full_cost = scored.extras["segment_tokens"] - protected_by_seg.astype(np.int64)
        full, skim = self._close_reading(full_cost[by_rel], skim_cost[by_rel], remaining)
        rank = np.empty(len(by_rel), dtype=np.int64)
        rank[by_rel] = np.arange(len(by_rel))
        keep = u.protected | full[:, rank[seg]]
        skim = skim[:, rank] & (skim_cost > 0)
        # 4. segments are coarse: spend what is left on single sentences of segments not yet read
        # (a skimmed segment keeps its excerpt)
        blocked = keep.copy()
        blocked[:, scored.extras["best_unit"]] |= skim
        keep |= fill_budgets(by_unit, u.tokens, budgets - (keep @ u.tokens + skim @ x.tokens),
                             np.zeros(len(u), dtype=bool), blocked=blocked)
        return keep, skim

    def _close_reading(self, full_cost: np.ndarray, skim_cost: np.ndarray,
                       remaining: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segments read in full and segments skimmed, one row per budget, segments by relevance."""
        # 1. close reading, leaving room for a share of skims
        total = int(skim_cost.sum())
        reserve = np.array([min(int(self.skim_share * max(r, 0)), total) for r in remaining.tolist()], dtype=np.int64)
        full = fill_walk(full_cost, remaining - reserve, np.zeros(len(full_cost), dtype=bool))
        remaining = remaining - full @ full_cost
        # 2. skims for the other segments, most relevant first
        skim = fill_walk(np.where(full, 0, skim_cost), remaining, full)
        remaining -= skim @ skim_cost
        # 3. budget left over: upgrade skimmed segments to close reading (nothing left: nothing taken)
        delta = np.where(skim, full_cost - skim_cost, full_cost)
        delta[full] = 0
        upgrade = fill_walk(np.maximum(delta, 0), remaining, full)
        return full | upgrade, skim & ~upgrade

    @staticmethod
    def _top_ups(scored: Scored, by_unit: np.ndarray, budgets: np.ndarray, keep: np.ndarray,
                 skim: np.ndarray) -> list[list[Partial]]:
        """5. per row, one sentence prefix may top the budget up (topup.py); it replaces its segment's skim.

        ``skim`` loses, in place, the excerpt a prefix replaces.
        """
        u = scored.units
        x = scored.excerpts
        assert x is not None
        best_unit = scored.extras["best_unit"]
        used = (keep @ u.tokens + skim @ x.tokens).tolist()
        out: list[list[Partial]] = []
        for i, budget in enumerate(budgets.tolist()):
            if not worth_topping_up(budget, used[i]):  # the usual case: skip building the credit
                out.append([])
                continue
            # what each skimmed segment's excerpt costs; top_up passes over the units already kept
            credit = dict(zip(best_unit[skim[i]].tolist(), x.tokens[skim[i]].tolist(), strict=True))
            partial = top_up(scored, by_unit, keep[i], budget, used=used[i], credit=credit)
            for d, start, _, _ in partial:  # a prefix of a skimmed segment's best unit replaces its excerpt
                skim[i] &= ~((x.doc == d) & (u.start[best_unit] == start))
            out.append(partial)
        return out

    def parameters(self) -> dict[str, Any]:
        rel = self.relevance if isinstance(self.relevance, str) or self.relevance is None else self.relevance.name
        return {
            **super().parameters(),
            "relevance": rel or "bm25",
            "segment_tokens": self.segment_tokens,
            "skim_share": self.skim_share,
            "clause_min_tokens": self.clause_min_tokens,
        }


def _segments(group: np.ndarray, tokens: np.ndarray, max_tokens: int) -> np.ndarray:
    """Segment id per unit: paragraphs, cut so that no segment exceeds ``max_tokens``."""
    seg: list[int] = []
    current = -1
    size = 0
    prev_group = None
    for g, t in zip(group.tolist(), tokens.tolist(), strict=True):  # Python ints: no numpy scalars in the loop
        if g != prev_group or size + t > max_tokens:
            current += 1
            size = 0
            prev_group = g
        seg.append(current)
        size += t
    return np.array(seg, dtype=np.int64)
