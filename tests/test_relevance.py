"""Query relevance: BM25 built in, MiniLM embeddings offline."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocsdk.errors import ConfigError
from pocsdk.text.relevance import BM25Relevance, EmbeddingRelevance, Relevance, _group, get_relevance, terms

UNITS = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Bananas are rich in potassium and easy to digest.",
    "Stock markets in Asia closed lower on Monday.",
    "The tower is made of wrought iron and is 330 metres tall.",
    "Many people enjoy hiking in the mountains during summer.",
]


def test_terms_drop_stopwords_and_split_cjk() -> None:
    assert terms("The Tower of PARIS is tall") == ["tower", "paris", "tall"]
    assert terms("東京タワー") == ["東", "京", "タ", "ワ", "ー"]


def test_bm25_ranks_the_matching_unit_first() -> None:
    scores = BM25Relevance().score(UNITS, "When was the Eiffel Tower completed?")
    assert scores.shape == (len(UNITS),)
    assert int(np.argmax(scores)) == 0
    assert (scores >= 0).all()
    # the other tower sentence beats the unrelated ones
    assert scores[3] > max(scores[1], scores[2], scores[4])


def test_bm25_without_query_is_centrality() -> None:
    units = [*UNITS, "The tower in Paris attracts millions; the tower is iconic."]
    for query in (None, "", "the of and"):  # no content terms: centrality
        scores = BM25Relevance().score(units, query)
        assert int(np.argmax(scores)) in (0, 3, 5)
        assert scores[1] < scores[5]


def test_bm25_edge_cases() -> None:
    bm = BM25Relevance()
    assert bm.score([], "x").shape == (0,)
    out = bm.score(["", "   ", "!!!"], "anything")
    assert out.shape == (3,) and np.isfinite(out).all()


def test_get_relevance_specs() -> None:
    assert isinstance(get_relevance(None), BM25Relevance)
    assert isinstance(get_relevance("bm25"), BM25Relevance)
    assert isinstance(get_relevance("minilm"), EmbeddingRelevance)
    assert get_relevance("minilm:/some/path").model_path == "/some/path"  # type: ignore[attr-defined]
    custom = BM25Relevance(k1=2.0)
    assert get_relevance(custom) is custom
    assert isinstance(custom, Relevance)
    with pytest.raises(ConfigError):
        get_relevance("tfidf")
    with pytest.raises(ConfigError):
        get_relevance(3)  # type: ignore[arg-type]


@pytest.mark.slow
def test_minilm_ranks_a_paraphrase_above_unrelated_sentences() -> None:
    units = [
        "The feline spent the afternoon asleep on the living-room rug.",
        "Quarterly earnings beat analysts' expectations.",
        "Add two eggs and a cup of flour to the bowl.",
        "The train to Berlin departs at nine.",
    ]
    # no content word in common with the relevant sentence: BM25 cannot see it, MiniLM can
    query = "Where did the cat nap?"
    assert not set(terms(query)) & set(terms(units[0]))
    scores = get_relevance("minilm").score(units, query)
    assert scores.shape == (4,)
    assert int(np.argmax(scores)) == 0
    assert scores[0] > 2 * max(scores[1:].max(), 0.05)
    central = get_relevance("minilm").score(units, None)
    assert central.shape == (4,) and (central >= 0).all()
    # a unit over the model's 256 word pieces is read in windows: an answer at its end counts (it was cut off)
    filler = " ".join(f"The committee reviewed budget item number {i} and approved it." for i in range(40))
    answer = "The cat napped on the warm windowsill all afternoon."
    long_scores = get_relevance("minilm").score([filler, filler + " " + answer, units[1]], query)
    assert long_scores[1] > long_scores[0] + 0.2
    assert get_relevance("minilm").score(units, query).tolist() == scores.tolist()  # short units: as before


# -- the vectorised BM25 is the per-term formula, bit for bit ---------------------------------------------
def reference_bm25(units: list[str], query: str | None, k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """BM25 with centrality written term by term over Python strings (what BM25Relevance vectorises)."""
    toks = [terms(u) for u in units]
    n = len(units)
    order: dict[str, int] = {}  # first occurrence
    for t in toks:
        for w in t:
            order.setdefault(w, len(order))
    tf = [Counter(t) for t in toks]
    df = Counter(w for t in toks for w in set(t))
    total = Counter(w for t in toks for w in t)
    lengths = np.array([len(t) for t in toks], dtype=np.float64)
    norm = k1 * (1.0 - b + b * lengths / (float(lengths.mean()) or 1.0))

    def idf(d: int) -> float:
        return math.log(1.0 + (n - d + 0.5) / (d + 0.5))

    def bm25(weights: list[tuple[str, float]]) -> np.ndarray:
        scores = np.zeros(n)
        for term, w in weights:
            col = np.array([c[term] for c in tf], dtype=np.float64)
            scores += w * idf(df[term]) * col * (k1 + 1.0) / (col + norm)
        return scores

    cand = [w for w in order if df[w] > 1]
    weight = {w: total[w] * idf(df[w]) for w in cand} if cand else {w: float(total[w]) for w in order}
    top = sorted(weight, key=lambda w: -weight[w])[:24]
    central = bm25([(w, weight[w] / weight[top[0]]) for w in top])
    q = Counter(terms(query)) if query else Counter()
    if not q:
        return central
    rel = bm25([(w, c) for w, c in q.items() if w in order])

    def unit_max(x: np.ndarray) -> np.ndarray:
        return x / x.max() if x.size and x.max() > 0 else x

    return unit_max(rel) + 0.1 * unit_max(central)


WORDS = st.sampled_from(["tower", "Tower", "paris", "iron", "the", "of", "1889", "x2", "東", "京", "banana", "ſun",
                         "İstanbul", "river", "river's", "a_b", "é", ".", ",", "\n", "  "])


@settings(max_examples=150, deadline=None)
@given(units=st.lists(st.lists(WORDS, max_size=12).map(" ".join), min_size=1, max_size=12),
       query=st.none() | st.lists(WORDS, max_size=5).map(" ".join))
def test_bm25_equals_the_per_term_formula(units: list[str], query: str | None) -> None:
    assert np.array_equal(BM25Relevance().score(units, query), reference_bm25(units, query))


def test_bm25_on_the_fixture_equals_the_per_term_formula() -> None:
    for query in (None, "When was the Eiffel Tower completed?", "tower tower iron"):
        assert np.array_equal(BM25Relevance().score(UNITS, query), reference_bm25(UNITS, query))


@pytest.mark.parametrize("kind", ["random", "low_bits_only", "shared_high_bits", "few_values"])
def test_group_is_np_unique(kind: str) -> None:
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 3, 50, 1000):
        if kind == "random":
            values = rng.integers(0, 2**64, n, dtype=np.uint64)
        elif kind == "low_bits_only":  # every value in one group of high bits: np.unique decides
            values = rng.integers(0, 20, n).astype(np.uint64)
        elif kind == "shared_high_bits":
            high = rng.integers(0, 5, n).astype(np.uint64) << np.uint64(40)
            values = high | rng.integers(0, 3, n).astype(np.uint64)
        else:
            values = rng.choice(rng.integers(0, 2**64, 7, dtype=np.uint64), n)
        uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        got = _group(values)
        for a, b in zip(got, (uniq, inverse.reshape(-1), first), strict=True):
            assert np.array_equal(a, b)
