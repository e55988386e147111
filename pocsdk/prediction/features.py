"""Features of one input for the performance predictors, computed from a ``Scored`` without re-scoring.

:func:`featurize` returns two things:

* context features (one dict, independent of the factor): sizes, the query and its overlap
  with the context, the shape of the relevance distribution, redundancy and the task type;
* per-factor features (one dict per requested factor): what the compressor's selection at
  keep rate ``1 / f`` actually keeps (relevance mass, top units, achieved rate, protected share,
  and how much of the query's vocabulary the kept units still cover).

Only the compressor's selections are made per factor, all in one pass (cheap, see
:func:`~pocsdk.compressors.grid.select_many`); text statistics look at a bounded prefix of the
context so that the cost stays flat on long inputs.

The names are fixed in :data:`CONTEXT_FEATURES` and :data:`PER_FACTOR_FEATURES`; a predictor's card
records the ones it uses with :data:`FEATURES_VERSION`, and a predictor refuses features of another
version. The version changes when a feature's definition changes, not when one is added: a card lists
its features, so older predictors ignore new ones.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_right
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from pocsdk.compressors.base import Scored, Selection, TextCompressor
from pocsdk.compressors.grid import select_many
from pocsdk.text.relevance import terms

FEATURES_VERSION = 1

TASKS: tuple[str, ...] = (
    "qa",
    "multi_doc_qa",
    "long_qa",
    "summarization",
    "retrieval",
    "reasoning",
    "math",
    "classification",
    "code",
    "multiple_choice",
    "other",
)
"""Known task types; anything else maps to ``other``. The code of a task is its index here."""

TOP_K = 5
TEXT_SAMPLE_CHARS = 4_000
"""Redundancy statistics (zlib ratio, type/token ratio) read at most this many characters, spread over documents."""
OVERLAP_CHARS = 400_000
"""Query overlap looks for query terms in at most this many characters of the context."""

CONTEXT_FEATURES: tuple[str, ...] = (
    "log_original_tokens",
    "log_units",
    "n_documents",
    "mean_unit_tokens",
    "has_query",
    "query_terms",
    "query_overlap",
    "rel_entropy",
    "rel_top1_share",
    "rel_topk_share",
    "rel_top10pct_share",
    "rel_max",
    "rel_gini",
    "protected_token_share",
    "zlib_ratio",
    "type_token_ratio",
    "task_code",
)

FACTOR_FEATURES: tuple[str, ...] = (
    "factor",
    "log_factor",
    "achieved_factor",
    "log_achieved_factor",
    "keep_rate",
    "mass_kept",
    "top1_kept",
    "topk_kept",
    "skim_mass",
    "skim_token_share",
    "protected_share",
)

COVERAGE_FEATURES: tuple[str, ...] = (
    "qcov_kept",
    "best_kept_unit_qcov",
    "best_dropped_unit_qcov",
    "qcov_gap",
)
"""Per-factor query-term coverage: does what is kept still mention what the query asks about?

Each query term weighs its IDF over the units (``log(1 + units / units containing it)``). ``qcov_kept``:
share of that weight covered by the kept units together; ``best_kept_unit_qcov`` /
``best_dropped_unit_qcov``: the best single kept / dropped unit's share; ``qcov_gap``: their
difference. Units that ``select`` reduced to excerpts count as dropped. A term is present in a unit
when it occurs in its lower-cased text. All zero without a query.
"""

PER_FACTOR_FEATURES: tuple[str, ...] = FACTOR_FEATURES + COVERAGE_FEATURES
"""Everything computed at each factor (coverage added after the first shipped predictors; their cards
list the features they use, so they load and predict unchanged)."""

FEATURE_NAMES: tuple[str, ...] = CONTEXT_FEATURES + PER_FACTOR_FEATURES
"""Every feature a predictor may use: context features first, then per-factor features."""

MONOTONE: dict[str, int] = {
    "factor": -1,
    "log_factor": -1,
    "achieved_factor": -1,
    "log_achieved_factor": -1,
    "keep_rate": 1,
    "mass_kept": 1,
    "top1_kept": 1,
    "topk_kept": 1,
    "qcov_kept": 1,
    "best_kept_unit_qcov": 1,
    "best_dropped_unit_qcov": -1,
}
"""Direction in which predicted performance may move with each feature (others: free).

Along a factor grid every one of these moves the "less kept" way, so a model constrained
this way predicts a non-increasing curve over the grid.
"""


def task_code(task: str | None) -> int:
    """Index of ``task`` in :data:`TASKS` (``other`` for unknown or missing tasks)."""
    t = (task or "other").strip().lower()
    return TASKS.index(t) if t in TASKS else TASKS.index("other")


def featurize(
    compressor: TextCompressor,
    scored: Scored,
    factors: Sequence[float],
    task: str | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Context features and per-factor features of one scored input.

    ``factors`` are requested compression factors (>= 1); the selection at each is
    ``compressor.select(scored, 1 / factor)`` (made for all factors at once, see :mod:`pocsdk.compressors.grid`).
    """
    ctx = context_features(scored, task)
    selections = select_many(compressor, scored, [1.0 / max(float(f), 1.0) for f in factors])
    return ctx, factor_features(scored, factors, selections)


TEXT_FEATURES = frozenset({"zlib_ratio", "type_token_ratio"})


def context_features(scored: Scored, task: str | None = None,
                     names: Collection[str] | None = None) -> dict[str, float]:
    """Factor-independent features of one input (see :data:`CONTEXT_FEATURES`).

    ``names`` (optional) lists the features the caller needs; the text statistics
    (:data:`TEXT_FEATURES`) are then skipped, and reported as NaN, when none of them is needed.
    """
    u = scored.units
    n = len(u)
    total = max(scored.total_tokens, 0)
    unit_tokens = u.tokens.astype(np.float64)
    rel = _weights(u.relevance)
    sorted_rel = np.sort(rel)[::-1]
    k10 = max(1, math.ceil(0.1 * n)) if n else 1

    text_stats = names is None or bool(TEXT_FEATURES & set(names))
    sample = _sample_text(scored) if text_stats else ""
    ctx_words = sample.lower().split()
    q_terms = terms(scored.query) if scored.query else []
    q_types = set(q_terms)
    raw = sample.encode("utf-8", "surrogatepass")  # lone surrogates are accepted everywhere else

    return {
        "log_original_tokens": math.log1p(total),
        "log_units": math.log1p(n),
        "n_documents": float(len(scored.documents)),
        "mean_unit_tokens": float(unit_tokens.mean()) if n else 0.0,
        "has_query": 1.0 if scored.query and scored.query.strip() else 0.0,
        "query_terms": float(len(q_terms)),
        "query_overlap": _query_overlap(scored, q_types) if q_types else 0.0,
        "rel_entropy": _entropy(rel),
        "rel_top1_share": float(sorted_rel[0]) if n else 1.0,
        "rel_topk_share": float(sorted_rel[:TOP_K].sum()) if n else 1.0,
        "rel_top10pct_share": float(sorted_rel[:k10].sum()) if n else 1.0,
        "rel_max": float(u.relevance.max()) if n else 0.0,
        "rel_gini": _gini(sorted_rel),
        "protected_token_share": float(unit_tokens[u.protected].sum() / unit_tokens.sum())
        if n and unit_tokens.sum() > 0 else 0.0,
        "zlib_ratio": (len(zlib.compress(raw, 1)) / len(raw) if raw else 1.0) if text_stats else math.nan,
        "type_token_ratio": (len(set(ctx_words)) / len(ctx_words) if ctx_words else 1.0) if text_stats else math.nan,
        "task_code": float(task_code(task)),
    }


def factor_features(
    scored: Scored, factors: Sequence[float], selections: Sequence[Selection]
) -> list[dict[str, float]]:
    """Per-factor features from selections already made (one per factor, same order); vectorised."""
    return factor_rows(factor_columns(scored, factors, selections))


def factor_rows(columns: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
    """One dict per factor out of :func:`factor_columns`."""
    lists = {k: columns[k].tolist() for k in PER_FACTOR_FEATURES}
    return [{k: lists[k][i] for k in PER_FACTOR_FEATURES} for i in range(len(lists["factor"]))]


def factor_columns(
    scored: Scored, factors: Sequence[float], selections: Sequence[Selection]
) -> dict[str, np.ndarray]:
    """:func:`factor_features` as one array per feature over the factors (the floor search's fast path)."""
    u = scored.units
    n = len(u)
    m = len(factors)
    total = scored.total_tokens
    f = np.maximum(np.asarray(factors, dtype=np.float64), 1.0)
    passthrough = np.array([bool(sel.passthrough_reason or scored.passthrough_reason) or n == 0
                            for sel in selections], dtype=bool)
    everything = np.ones(n, dtype=bool)
    keep = np.array([everything if p else sel.keep for p, sel in zip(passthrough.tolist(), selections, strict=True)],
                    dtype=bool).reshape(m, n)
    unit_tokens = u.tokens.astype(np.float64)
    keep_f = keep.astype(np.float64)  # once for the products below (keep @ x would cast it each time)
    kept = keep_f @ unit_tokens if n else np.full(m, float(total))
    kept += np.array([0.0 if passthrough[i] else float(sum(p[3] for p in sel.partial))  # prefixes (topup.py)
                      for i, sel in enumerate(selections)])
    skim_tokens, skim_mass = _skim_kept(scored, selections, passthrough)
    kept = np.where(passthrough, float(total), kept + skim_tokens)
    keep_rate = kept / total if total > 0 else np.ones(m)
    achieved = np.where(keep_rate > 0, 1.0 / np.maximum(keep_rate, 1e-12), float(total or 1))
    safe_kept = np.maximum(kept, 1e-12)
    if n:
        rel = _weights(u.relevance)
        top = np.argsort(-u.relevance, kind="stable")[: min(TOP_K, n)]
        mass_kept = keep_f @ rel
        top1 = keep_f[:, top[0]]
        topk = keep[:, top].mean(axis=1)
        prot = keep_f @ (unit_tokens * u.protected)
    else:
        mass_kept = top1 = topk = np.ones(m)
        prot = np.zeros(m)
    coverage = _coverage_columns(query_presence(scored), keep)
    return {
        "factor": f,
        "log_factor": np.log(f),
        "achieved_factor": achieved,
        "log_achieved_factor": np.log(np.maximum(achieved, 1e-9)),
        "keep_rate": keep_rate,
        "mass_kept": mass_kept,
        "top1_kept": top1,
        "topk_kept": topk,
        "skim_mass": skim_mass,
        "skim_token_share": np.where(kept > 0, skim_tokens / safe_kept, 0.0),
        "protected_share": np.where(kept > 0, prot / safe_kept, 0.0),
        **coverage,
    }


def query_presence(scored: Scored) -> np.ndarray:
    """``(units, distinct query terms)`` bool: the term occurs in the unit's lower-cased text.

    ``find`` over the lower-cased documents (joined), skipping to the end of a unit once the term is found
    in it, so the cost follows the units that contain a term rather than units x terms or every occurrence.
    """
    u = scored.units
    q = sorted(set(terms(scored.query))) if scored.query else []
    out = np.zeros((len(u), len(q)), dtype=bool)
    if not q or not len(u):
        return out
    texts = [d.text for d in scored.documents]
    base = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])  # documents joined by NUL, which no term holds
    gstart = base[u.doc] + u.start
    rows = np.argsort(gstart, kind="stable")
    starts = gstart[rows]
    ends = base[u.doc[rows]] + u.end[rows]
    disjoint = bool(np.all(ends > starts)) and bool(np.all(starts[1:] >= np.maximum.accumulate(ends)[:-1]))
    found = _lowered_spans("\0".join(texts), starts, ends, all(t.isascii() for t in q)) if disjoint else None
    if found is None:  # overlapping or empty units, or lower-casing moves offsets: go unit by unit
        for r, d, a, b in zip(rows.tolist(), u.doc[rows].tolist(), u.start[rows].tolist(), u.end[rows].tolist(),
                              strict=True):
            piece = texts[d][a:b].lower()
            out[r] = [t in piece for t in q]
        return out
    hay, lo, hi = found
    needles = [t.encode("ascii") for t in q] if isinstance(hay, bytes) else q
    row_list = rows.tolist()
    top = max(hi)
    for j, t in enumerate(needles):
        n = len(t)
        i = hay.find(t, lo[0], top)  # type: ignore[arg-type]
        while i >= 0:
            k = bisect_right(lo, i) - 1
            if i + n <= hi[k]:  # inside unit k: mark it, and nothing before its end can count again
                out[row_list[k], j] = True
                i = hay.find(t, hi[k], top)  # type: ignore[arg-type]
            else:  # across a unit boundary or in the gap between units
                i = hay.find(t, i + 1, top)  # type: ignore[arg-type]
    return out


def _lowered_spans(text: str, starts: np.ndarray, ends: np.ndarray,
                   ascii_terms: bool) -> tuple[str | bytes, list[int], list[int]] | None:
    """The lower-cased text to search and the unit spans in its offsets; None when offsets can't be kept.

    Lower-casing non-ASCII text is slow; for ASCII terms its UTF-8 bytes lower-cased byte-wise find the same
    occurrences (see :func:`_overlap_haystack`), with character offsets turned into byte offsets.
    """
    if text.isascii():
        return text.lower(), starts.tolist(), ends.tolist()
    if ascii_terms and not any(c in text for c in LOWER_NOT_SIMPLE):
        raw = text.encode("utf-8", "surrogatepass")
        lead = np.flatnonzero((np.frombuffer(raw, dtype=np.uint8) & 0xC0) != 0x80)  # first byte of each character
        offset = np.append(lead, len(raw))
        return raw.lower(), offset[starts].tolist(), offset[ends].tolist()
    if "\u03a3" in text:  # capital sigma lower-cases by its neighbours (final sigma): a unit alone may differ
        return None
    low = text.lower()
    if len(low) != len(text):
        return None
    return low, starts.tolist(), ends.tolist()


def _coverage_columns(presence: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`COVERAGE_FEATURES` over the factors from term presence and the ``(factors, units)`` keep masks."""
    m = keep.shape[0]
    df = presence.sum(axis=0)
    if not presence.size or not df.any():
        zero = np.zeros(m)
        return {name: zero for name in COVERAGE_FEATURES}
    idf = np.log1p(presence.shape[0] / np.maximum(df, 1)) * (df > 0)
    total = float(idf.sum())
    unit_cov = presence.astype(np.float64) @ idf / total
    covered = (keep.astype(np.float64) @ presence.astype(np.float64)) > 0
    best_kept = np.where(keep, unit_cov, 0.0).max(axis=1)
    best_dropped = np.where(keep, 0.0, unit_cov).max(axis=1)
    return {
        "qcov_kept": covered.astype(np.float64) @ idf / total,
        "best_kept_unit_qcov": best_kept,
        "best_dropped_unit_qcov": best_dropped,
        "qcov_gap": best_kept - best_dropped,
    }


def _skim_kept(scored: Scored, selections: Sequence[Selection],
               passthrough: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and relevance mass of the skim excerpts each selection keeps."""
    m = len(selections)
    x = scored.excerpts
    if x is None or not len(x) or all(sel.skim is None for sel in selections):
        return np.zeros(m), np.zeros(m)
    nothing = np.zeros(len(x), dtype=bool)
    skim = np.array([nothing if sel.skim is None or p else sel.skim
                     for p, sel in zip(passthrough.tolist(), selections, strict=True)], dtype=bool).reshape(m, len(x))
    return skim @ x.tokens.astype(np.float64), skim @ _weights(x.relevance)


def rows(context: dict[str, float], per_factor: Sequence[dict[str, float]],
         names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """A ``(len(per_factor), len(names))`` float matrix; missing features are NaN."""
    m = np.full((len(per_factor), len(names)), np.nan)
    for i, ff in enumerate(per_factor):
        for j, name in enumerate(names):
            v = ff.get(name, context.get(name))
            if v is not None:
                m[i, j] = v
    return m


# -- helpers -------------------------------------------------------------------------------
def _weights(relevance: np.ndarray) -> np.ndarray:
    """Relevance as a distribution (uniform when there is no relevance mass)."""
    r = relevance.astype(np.float64)
    if not np.isfinite(r).all():  # (nan_to_num is the identity otherwise, and costly)
        r = np.nan_to_num(r)
    r = np.clip(r, 0.0, None)
    s = float(r.sum())
    if r.size == 0:
        return r
    return r / s if s > 0 else np.full(r.size, 1.0 / r.size)


def _entropy(p: np.ndarray) -> float:
    """Normalised Shannon entropy in [0, 1] (1 = flat)."""
    if p.size <= 1:
        return 0.0
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(p.size))


def _gini(sorted_desc: np.ndarray) -> float:
    """Gini coefficient of a distribution given in descending order (0 = flat)."""
    n = sorted_desc.size
    if n <= 1:
        return 0.0
    asc = sorted_desc[::-1]
    idx = np.arange(1, n + 1)
    return float((2.0 * (idx * asc).sum()) / (n * asc.sum()) - (n + 1) / n) if asc.sum() > 0 else 0.0


def _query_overlap(scored: Scored, q_types: Collection[str]) -> float:
    """Share of the query terms that occur (as substrings) in the lower-cased context, bounded."""
    hay = _overlap_haystack(scored, all(t.isascii() for t in q_types))
    if isinstance(hay, bytes):
        return sum(t.encode("ascii") in hay for t in q_types) / len(q_types)
    return sum(t in hay for t in q_types) / len(q_types)


LOWER_NOT_SIMPLE = "\u0130\u212a"
"""The non-ASCII characters whose lower case is ASCII or more than one character (tests check all of Unicode)."""


def _overlap_haystack(scored: Scored, ascii_terms: bool) -> str | bytes:
    """:func:`_overlap_text`, or when it finds the same ASCII terms, its cheaper byte-wise twin.

    Lower-casing non-ASCII text is slow; lower-casing its UTF-8 bytes is not, and an ASCII term occurs
    in one exactly when it occurs in the other (ASCII bytes never occur inside a multi-byte character),
    unless the text has a character of :data:`LOWER_NOT_SIMPLE`.
    """
    out: list[str] = []
    budget = OVERLAP_CHARS
    for d in scored.documents:
        if budget <= 0:
            break
        out.append(d.text[:budget])
        budget -= len(out[-1])
    text = "\n".join(out)
    if text.isascii():
        return text.lower()
    if ascii_terms and not any(c in text for c in LOWER_NOT_SIMPLE):
        return text.encode("utf-8", "surrogatepass").lower()
    return _overlap_text(scored)


def _overlap_text(scored: Scored) -> str:
    """Lower-cased context (bounded) for substring tests of query terms."""
    out: list[str] = []
    budget = OVERLAP_CHARS
    for d in scored.documents:
        if budget <= 0:
            break
        out.append(d.text[:budget].lower())
        budget -= len(out[-1])
    return "\n".join(out)


def _sample_text(scored: Scored) -> str:
    """At most :data:`TEXT_SAMPLE_CHARS` characters, shared evenly across documents."""
    docs = scored.documents
    if not docs:
        return ""
    per_doc = max(100, TEXT_SAMPLE_CHARS // len(docs))
    parts: list[str] = []
    budget = TEXT_SAMPLE_CHARS
    for d in docs:
        if budget <= 0:
            break
        piece = d.text[: min(per_doc, budget)]
        parts.append(piece)
        budget -= len(piece)
    return "\n".join(parts)
