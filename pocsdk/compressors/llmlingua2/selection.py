"""Choosing words: pocsdk's token-weighted threshold over the whole input (with the line breaks joins
add), and llmlingua 0.2.2's per-window cl100k percentile for ``llmlingua_compatible`` mode."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pocsdk.compressors.llmlingua2.shared import count_words
from pocsdk.text.tokens import get_token_counter


@dataclass
class Layout:
    """Where line breaks sit between units, so a selection's cost includes the breaks joins add."""

    doc: np.ndarray
    nl_start: np.ndarray  # line breaks in the document before the unit starts
    nl_end: np.ndarray  # ... before it ends
    own_break: np.ndarray  # the unit's token count already includes the break before it
    break_tokens: int  # what one inserted line break costs in the target tokenizer

    def extra_tokens(self, keep: np.ndarray) -> int:
        """Tokens of line breaks that joining the kept units inserts beyond their own counts."""
        if self.break_tokens <= 0:
            return 0
        idx = np.flatnonzero(keep)
        if len(idx) < 2:
            return 0
        a, b = idx[:-1], idx[1:]
        inserted = (self.doc[a] == self.doc[b]) & (self.nl_start[b] > self.nl_end[a]) & ~self.own_break[b]
        return int(inserted.sum()) * self.break_tokens


def fit_threshold(order: np.ndarray, tokens: np.ndarray, budget: int, keep: np.ndarray,
                  layout: Layout | None = None) -> np.ndarray:
    """Keep the longest prefix of ``order`` (a score threshold) whose cost fits ``budget``.

    ``keep`` (modified in place) holds units kept anyway; their cost counts first. With a
    layout, the cost includes the line breaks joins insert: a binary search over the prefix
    length, each step vectorised (the cost never falls as the prefix grows)."""
    cand = order[~keep[order]]
    csum = np.cumsum(tokens[cand])
    used = int(tokens[keep].sum())
    hi = int(np.searchsorted(csum, budget - used, side="right"))
    if layout is None or layout.break_tokens <= 0:
        keep[cand[:hi]] = True
        return _fill_tail(cand[hi:], tokens, budget, keep, None)

    def cost(k: int) -> int:
        trial = keep.copy()
        trial[cand[:k]] = True
        return used + (int(csum[k - 1]) if k else 0) + layout.extra_tokens(trial)

    lo = 0
    while lo < hi:  # largest k in [0, hi] with cost(k) <= budget
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    keep[cand[:lo]] = True
    return _fill_tail(cand[lo:], tokens, budget, keep, layout)


def _fill_tail(rest: np.ndarray, tokens: np.ndarray, budget: int, keep: np.ndarray,
               layout: Layout | None) -> np.ndarray:
    """When the next word by score is too long for what the budget has left (a CJK line that a subword
    tokenizer reads as one word) and more than a tenth of the budget is unspent, take the following words
    that still fit, in score order, rather than stop short (or return nothing). Line breaks the joins
    insert count: those already spent, and for each added word one more at most."""
    per_break = layout.break_tokens if layout is not None and layout.break_tokens > 0 else 0
    left = budget - int(tokens[keep].sum()) - (layout.extra_tokens(keep) if per_break and layout else 0)
    if left <= 0.1 * budget or not len(rest):
        return keep
    for i in rest.tolist():
        t = int(tokens[i]) + per_break
        if t <= left:
            keep[i] = True
            left -= t
            if left <= 0:
                break
    return keep


def fit_to_count(order: np.ndarray, tokens: np.ndarray, budget: int, base: np.ndarray, layout: Layout | None,
                 measure: Callable[[np.ndarray], int]) -> np.ndarray:
    """:func:`fit_threshold` with the word budget rescaled until ``measure`` (the joined text's real count) is
    within 5% of ``budget``: secant steps, then bisection, at most six measurements.

    Words are costed one by one, and the joined text can count differently (a document's first kept word
    loses its space, a subword tokenizer merges across words). Returns the largest measured selection within
    the budget if it reaches 90% of it, else the largest within 5% over it, else the smallest measured.
    """
    keep = fit_threshold(order, tokens, budget, base.copy(), layout)
    trial, under, over = budget, 0, 0  # word budgets known to land under / over (0: none yet)
    tried: list[tuple[int, np.ndarray]] = []
    for _ in range(6):
        got = measure(keep)
        tried.append((got, keep))
        if got <= 0 or budget <= 0 or abs(got / budget - 1) <= 0.05:
            break
        if got > budget:
            over = trial if not over else min(over, trial)
        else:
            under = max(under, trial)
        nxt = (under + over) // 2 if under and over else max(1, round(trial * budget / got))
        if nxt in (trial, under, over):
            break
        trial = nxt
        keep = fit_threshold(order, tokens, trial, base.copy(), layout)
    within = [t for t in tried if t[0] <= budget]
    near = [t for t in tried if t[0] <= budget * 1.05]
    if within and max(t[0] for t in within) >= 0.9 * budget:
        return max(within, key=lambda t: t[0])[1]
    return (max(near, key=lambda t: t[0]) if near else min(tried, key=lambda t: t[0]))[1]


def _compatible_keep(x: dict[str, Any], keep_rate: float) -> np.ndarray:
    """Per window, words above the percentile ``int(100 * (1 - rate) + 1)`` of their probabilities
    repeated by cl100k token counts; a threshold of exactly 1.0 keeps words at 1.0 (llmlingua 0.2.2)."""
    prob, chunk, n_oai = x["word_prob"], x["word_chunk"], x["word_oai_tokens"]
    reduce_rate = max(0, 1 - keep_rate)
    keep_word = np.ones(len(prob), dtype=bool)
    if reduce_rate > 0 and len(prob):
        q = int(100 * reduce_rate + 1)
        bounds = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1], True])
        for a, b in itertools.pairwise(bounds.tolist()):
            p = prob[a:b]
            thr = np.percentile(np.repeat(p, n_oai[a:b]), q)
            keep_word[a:b] = (p > thr) | ((thr == 1.0) & (p == thr))
    return keep_word


def _oai_counts(words: list[str]) -> np.ndarray:
    """cl100k token counts of llmlingua's word strings (what its percentile is weighted by)."""
    if not words:
        return np.zeros(0, dtype=np.int64)
    return count_words(get_token_counter("tiktoken:cl100k_base"), words)
