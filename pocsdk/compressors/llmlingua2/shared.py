"""Helpers shared by the token-level compressors (``llmlingua2`` and ``selfinfo``): whitespace and
marker handling, word texts as they cost tokens in running text, span overlaps, score summaries."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from pocsdk.text.protect import KEEP_CLOSE, KEEP_OPEN, blank_markers, strip_markers
from pocsdk.text.tokens import TokenCounter


def in_context(text: str, start: np.ndarray, end: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Word texts as they cost tokens in running text, with the whitespace or line break before them,
    plus per word the number of line breaks before its start and before its end.

    " word" is one cl100k token where "word" alone may be two, and a kept word that opens a line
    brings its line break along (joins keep breaks), so budgets match the rendered text."""
    lead = np.full(len(start), "", dtype=object)
    nl_start = np.zeros(len(start), dtype=np.int64)
    nl_end = np.zeros(len(start), dtype=np.int64)
    if text and len(start):
        prev_end = np.r_[0, end[:-1]]
        has_gap = start > prev_end
        spaced = np.flatnonzero(has_gap & _space_mask(text)[np.maximum(start - 1, 0)])
        # the whitespace the joined output writes before the word: a tab or a no-break space costs other tokens
        lead[spaced] = [text[i - 1] for i in start[spaced].tolist()]
        nl = np.array([m.start() for m in re.finditer("\n", text)], dtype=np.int64)
        if len(nl):
            nl_start = np.searchsorted(nl, start)
            nl_end = np.searchsorted(nl, end)
            lead[nl_start > np.searchsorted(nl, prev_end)] = "\n"
    clean = strip_markers if KEEP_OPEN in text or KEEP_CLOSE in text else str  # markers only where written
    texts = [ld + clean(text[a:b]) for ld, a, b in zip(lead.tolist(), start.tolist(), end.tolist(), strict=True)]
    return texts, nl_start, nl_end


def _space_mask(text: str) -> np.ndarray:
    """Per character: is it whitespace (``str.isspace``), vectorised over code points."""
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    mask = (cp == 32) | ((cp >= 9) & (cp <= 13)) | ((cp >= 28) & (cp <= 31))
    high = np.flatnonzero(cp > 127)
    if len(high):
        mask[high] = [chr(c).isspace() for c in cp[high].tolist()]
    return mask


def count_words(counter: TokenCounter, texts: list[str]) -> np.ndarray:
    """Token counts of many short texts: each distinct text counted once, one call each.

    Words repeat (a few thousand distinct forms in 32k tokens), and ``count_many`` of
    tiktoken fans out to a thread pool per text, which costs more than the counting."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    uniq = dict.fromkeys(texts)
    counts = {t: counter.count(t) for t in uniq}
    return np.fromiter((counts[t] for t in texts), dtype=np.int64, count=len(texts))


_blank_markers = blank_markers  # the name the token-level compressors import


def overlaps(starts: np.ndarray, ends: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each [start, end), does it overlap any span? Vectorised over merged, sorted spans."""
    out = np.zeros(len(starts), dtype=bool)
    if not spans or not len(starts):
        return out
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    ms = np.array([m[0] for m in merged], dtype=np.int64)
    me = np.array([m[1] for m in merged], dtype=np.int64)
    j = np.searchsorted(me, starts, side="right")  # first span ending after the unit starts
    ok = j < len(ms)
    out[ok] = ms[j[ok]] < ends[ok]
    return out


def force_spans(text: str, force: Sequence[str]) -> list[tuple[int, int]]:
    """Occurrences of force strings, at word boundaries where the string starts/ends with a word char."""
    out: list[tuple[int, int]] = []
    for f in force:
        pat = re.escape(f)
        if f[:1].isalnum() or f[:1] == "_":
            pat = r"(?<!\w)" + pat
        if f[-1:].isalnum() or f[-1:] == "_":
            pat += r"(?!\w)"
        out.extend((m.start(), m.end()) for m in re.finditer(pat, text))
    return out


def score_stats(scores: np.ndarray) -> dict[str, float]:
    """Distribution summary of per-token scores, ready to be predictor features."""
    s = scores[np.isfinite(scores)]
    if not len(s):
        return {"n": 0.0, "mean": 0.0, "std": 0.0, "p10": 0.0, "p25": 0.0, "p50": 0.0, "p75": 0.0, "p90": 0.0}
    q = np.percentile(s, [10, 25, 50, 75, 90])
    return {"n": float(len(s)), "mean": float(s.mean()), "std": float(s.std()), "p10": float(q[0]),
            "p25": float(q[1]), "p50": float(q[2]), "p75": float(q[3]), "p90": float(q[4])}
