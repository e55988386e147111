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
    fill_budget,
)
from pocsdk.compressors.topup import top_up
from pocsdk.errors import ConfigError
from pocsdk.text.protect import NEGATION, strip_markers
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
        cand_texts: list[str] = []
        cand_owner: list[int] = []
        cand_spans: list[tuple[int, int]] = []
        for j, i in enumerate(best_unit):
            if u.tokens[i] <= self.clause_min_tokens or u.kind[i] in (CODE, TABLE_ROW) or u.protected[i]:
                continue
            text = docs[int(u.doc[i])].text
            if NEGATION.search(unit_texts[i]):
                continue
            parts = clauses(text, int(u.start[i]), int(u.end[i]))
            if len(parts) < 2:
                continue
            for s, e in parts:
                cand_texts.append(strip_markers(text[s:e]))
                cand_owner.append(j)
                cand_spans.append((s, e))
        if cand_texts:
            rel = get_relevance(self.relevance).score(cand_texts, scored.query)
            best: dict[int, int] = {}
            for k, owner in enumerate(cand_owner):
                if owner not in best or rel[k] > rel[best[owner]]:
                    best[owner] = k
            picked = list(best.items())
            counts = scored.tokenizer.count_many([cand_texts[k] for _, k in picked])
            for (owner, k), n in zip(picked, counts, strict=True):
                starts[owner], ends[owner] = cand_spans[k]
                tokens[owner] = n
        return Units(
            doc=u.doc[best_unit], start=starts, end=ends, tokens=tokens,
            relevance=u.relevance[best_unit], protected=np.zeros(len(best_unit), dtype=bool),
            group=np.arange(len(best_unit), dtype=np.int32), kind=u.kind[best_unit],
        )

    def select(self, scored: Scored, keep_rate: float) -> Selection:
        budget = budget_for(scored, keep_rate)
        early = early_selection(scored, keep_rate)
        if early is not None:
            return early
        u = scored.units
        x = scored.excerpts
        assert x is not None  # set by prepare for any non-empty input
        seg = scored.extras["segment"]
        seg_rel = scored.extras["segment_relevance"]
        n_seg = len(seg_rel)
        keep = u.protected.copy()
        # protected tokens are spent already; what remains is shared by close reading and skims
        protected_by_seg = np.bincount(seg[keep], weights=u.tokens[keep], minlength=n_seg)
        full_cost = scored.extras["segment_tokens"] - protected_by_seg.astype(np.int64)
        skim_cost = x.tokens.copy()
        skim_cost[protected_by_seg > 0] = 0  # a segment with protected text is represented by it
        remaining = budget - int(u.tokens[keep].sum())
        by_rel = np.argsort(-seg_rel, kind="stable")

        # 1. close reading, leaving room for a share of skims
        reserve = min(int(self.skim_share * max(remaining, 0)), int(skim_cost.sum()))
        full = fill_budget(by_rel, full_cost, remaining - reserve, np.zeros(n_seg, dtype=bool))
        remaining -= int(full_cost[full].sum())
        # 2. skims for the other segments, most relevant first
        skim = fill_budget(by_rel, np.where(full, 0, skim_cost), remaining, full.copy()) & ~full
        remaining -= int(skim_cost[skim].sum())
        # 3. budget left over: upgrade skimmed segments to close reading
        if remaining > 0:
            delta = np.where(skim, full_cost - skim_cost, full_cost)
            delta[full] = 0
            upgrade = fill_budget(by_rel, np.maximum(delta, 0), remaining, full.copy()) & ~full
            full |= upgrade
            skim &= ~upgrade
        keep |= full[seg]
        skim &= skim_cost > 0
        # 4. segments are coarse: spend what is left on single sentences of segments not yet read
        # (a skimmed segment keeps its excerpt), then on one sentence prefix
        best_unit = scored.extras["best_unit"]
        used = int(u.tokens[keep].sum()) + int(x.tokens[skim].sum())
        blocked = keep.copy()
        blocked[best_unit[skim]] = True
        by_unit = np.argsort(-u.relevance, kind="stable")
        cand = by_unit[~blocked[by_unit]]
        extra = fill_budget(cand, u.tokens, budget - used, np.zeros(len(u), dtype=bool))
        keep |= extra
        used += int(u.tokens[extra].sum())
        cand = by_unit[~keep[by_unit]]
        credit = {int(best_unit[j]): int(x.tokens[j]) for j in np.flatnonzero(skim)}
        partial = top_up(scored, cand, keep, budget, used=used, credit=credit)
        for d, start, _, _ in partial:  # a prefix of a skimmed segment's best unit replaces its excerpt
            skim &= ~((x.doc == d) & (u.start[best_unit] == start))
        return Selection(keep=keep, skim=skim, keep_rate=keep_rate, partial=partial)

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
    seg = np.empty(len(group), dtype=np.int64)
    current = -1
    size = 0
    prev_group = None
    for i in range(len(group)):
        g = int(group[i])
        t = int(tokens[i])
        if g != prev_group or size + t > max_tokens:
            current += 1
            size = 0
            prev_group = g
        seg[i] = current
        size += t
    return seg
