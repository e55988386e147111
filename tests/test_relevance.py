"""Query relevance: BM25 built in, MiniLM embeddings offline."""

from __future__ import annotations

import numpy as np
import pytest

from pocsdk.errors import ConfigError
from pocsdk.text.relevance import BM25Relevance, EmbeddingRelevance, Relevance, get_relevance, terms

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
