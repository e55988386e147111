"""Features: names, shapes and values on a small case, and their cost."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocsdk.calibration.labels import DEFAULT_FACTORS
from pocsdk.compressors import get_compressor
from pocsdk.prediction import features
from pocsdk.prediction.features import (
    CONTEXT_FEATURES,
    COVERAGE_FEATURES,
    FACTOR_FEATURES,
    FEATURE_NAMES,
    FEATURES_VERSION,
    LOWER_NOT_SIMPLE,
    PER_FACTOR_FEATURES,
    TASKS,
    context_features,
    featurize,
    query_presence,
    task_code,
)
from pocsdk.text.relevance import terms

DOCS = [
    {"id": "a", "text": "The Eiffel Tower is in Paris. It was completed in 1889. Gustave Eiffel's company built it. "
                        "It is 330 metres tall. Millions of people visit it every year."},
    {"id": "b", "text": "Berlin is the capital of Germany. The Brandenburg Gate is a landmark. "
                        "The city has many museums. The Berlin Wall fell in 1989."},
    {"id": "c", "text": "Tokyo is the capital of Japan. It is one of the largest cities in the world. "
                        "Mount Fuji can be seen from Tokyo on clear days. Sushi is popular there."},
]


@pytest.mark.parametrize("name", ["extractive", "skim"])
def test_featurize_shapes_and_values(name: str) -> None:
    comp = get_compressor(name, min_tokens=1)
    scored = comp.score(DOCS, "When was the Eiffel Tower completed?")
    ctx, per = featurize(comp, scored, DEFAULT_FACTORS, task="multi_doc_qa")
    assert list(ctx) == list(CONTEXT_FEATURES)
    assert len(per) == len(DEFAULT_FACTORS)
    assert all(list(ff) == list(PER_FACTOR_FEATURES) for ff in per)
    assert PER_FACTOR_FEATURES == FACTOR_FEATURES + COVERAGE_FEATURES
    assert FEATURE_NAMES == CONTEXT_FEATURES + PER_FACTOR_FEATURES and FEATURES_VERSION >= 1
    assert all(math.isfinite(v) for v in ctx.values())
    assert all(math.isfinite(v) for ff in per for v in ff.values())
    assert ctx["n_documents"] == 3.0
    assert ctx["task_code"] == TASKS.index("multi_doc_qa")
    assert ctx["has_query"] == 1.0 and ctx["query_terms"] >= 2 and 0.0 < ctx["query_overlap"] <= 1.0
    assert 0.0 <= ctx["rel_entropy"] <= 1.0 and 0.0 <= ctx["rel_gini"] <= 1.0
    assert 0.0 < ctx["rel_top1_share"] <= ctx["rel_topk_share"] <= 1.0
    assert 0.0 < ctx["zlib_ratio"] <= 1.5 and 0.0 < ctx["type_token_ratio"] <= 1.0
    assert math.isclose(ctx["log_original_tokens"], math.log1p(scored.total_tokens))
    first = per[0]
    assert first["factor"] == 1.0 and first["keep_rate"] == pytest.approx(1.0)
    assert first["mass_kept"] == pytest.approx(1.0)
    keep = np.array([ff["keep_rate"] for ff in per])
    assert np.all(np.diff(keep) <= 1e-9), "achieved keep rate falls with the factor"
    for ff in per:
        assert ff["achieved_factor"] == pytest.approx(1.0 / ff["keep_rate"])
        assert 0.0 <= ff["mass_kept"] <= 1.0 + 1e-9 and 0.0 <= ff["topk_kept"] <= 1.0
    if name == "extractive":
        mass = np.array([ff["mass_kept"] for ff in per])
        assert np.all(np.diff(mass) <= 1e-9)
        assert all(ff["skim_token_share"] == 0.0 for ff in per)


def test_top_unit_kept_first() -> None:
    comp = get_compressor("extractive", min_tokens=1)
    scored = comp.score(DOCS, "When was the Eiffel Tower completed?")
    _, per = featurize(comp, scored, [1.0, 4.0])
    assert per[1]["top1_kept"] == 1.0  # the best unit fits a quarter of the budget


def test_task_codes_and_passthrough() -> None:
    assert task_code(None) == task_code("unknown-task") == TASKS.index("other")
    assert task_code("QA") == TASKS.index("qa")
    comp = get_compressor("extractive")  # default min_tokens: the tiny input passes through
    scored = comp.score("Short text. Two sentences.", "what?")
    ctx, per = featurize(comp, scored, [1.0, 2.0, 8.0], task="qa")
    assert [ff["keep_rate"] for ff in per] == [1.0, 1.0, 1.0]
    assert ctx["task_code"] == TASKS.index("qa")


def test_no_query() -> None:
    comp = get_compressor("extractive", min_tokens=1)
    scored = comp.score(DOCS, None)
    ctx, _ = featurize(comp, scored, [2.0])
    assert ctx["has_query"] == 0.0 and ctx["query_terms"] == 0.0 and ctx["query_overlap"] == 0.0


def test_featurize_is_cheap() -> None:
    comp = get_compressor("extractive", min_tokens=1)
    scored = comp.score(DOCS * 1, "Eiffel Tower completed")
    featurize(comp, scored, DEFAULT_FACTORS)
    t = time.process_time()
    for _ in range(50):
        featurize(comp, scored, DEFAULT_FACTORS)
    per_call_ms = (time.process_time() - t) / 50 * 1000
    assert per_call_ms < 20.0  # generous: shared CI machines; typical is well under 2 ms


def test_lower_not_simple_is_complete() -> None:
    odd: set[str] = set()
    for start in range(0x80, 0x110000, 4096):  # a chunk at a time; characters one by one only where needed
        chunk = "".join(map(chr, range(start, min(start + 4096, 0x110000))))
        low = chunk.lower()
        if len(low) != len(chunk) or re.search("[\\x00-\\x7f]", low):
            odd |= {c for c in chunk if len(c.lower()) != 1 or c.lower().isascii()}
    assert odd == set(LOWER_NOT_SIMPLE)


@pytest.mark.parametrize("text", [
    "Plain ASCII about the Eiffel TOWER in Paris.",
    "Caf\u00e9 na\u00efve \u201cTower\u201d \u00c9IFFEL in Paris \u2014 1889.",
    "The \u0130stanbul TOWER at 20\u212a, Paris.",  # lower case of these is ASCII or longer
    "Lone surrogate \ud800 next to the Tower of PARIS.",
    "\u00c9t\u00e9 \u00e0 PARIS, caf\u00e9 cr\u00e8me.",
])
@pytest.mark.parametrize("query", ["Which tower in Paris?", "caf\u00e9 \u00e9t\u00e9 paris", "istanbul 20k", "kelvin"])
def test_query_overlap_fast_path_is_exact(text: str, query: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "OVERLAP_CHARS", 60)  # the bound cuts the second document
    comp = get_compressor("extractive", min_tokens=1)
    scored = comp.score([text, "filler " * 5 + text.upper(), text], query)
    q_types = set(terms(query))
    hay = features._overlap_text(scored)
    want = sum(t in hay for t in q_types) / len(q_types)
    assert features._query_overlap(scored, q_types) == want
    assert features.context_features(scored, names=["query_overlap"])["query_overlap"] == want


def _coverage_by_hand(scored, keep: np.ndarray) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The documented formula, unit by unit."""
    u = scored.units
    spans = zip(u.doc, u.start, u.end, strict=True)
    texts = [scored.documents[int(d)].text[int(a):int(b)].lower() for d, a, b in spans]
    q = sorted(set(terms(scored.query or "")))
    df = {t: sum(t in x for x in texts) for t in q}
    idf = {t: math.log1p(len(texts) / df[t]) for t in q if df[t]}
    total = sum(idf.values())
    if not total:
        return dict.fromkeys(COVERAGE_FEATURES, 0.0)
    cov = [sum(w for t, w in idf.items() if t in x) / total for x in texts]
    kept = [x for x, k in zip(texts, keep, strict=True) if k]
    best_kept = max((c for c, k in zip(cov, keep, strict=True) if k), default=0.0)
    best_dropped = max((c for c, k in zip(cov, keep, strict=True) if not k), default=0.0)
    return {"qcov_kept": sum(w for t, w in idf.items() if any(t in x for x in kept)) / total,
            "best_kept_unit_qcov": best_kept, "best_dropped_unit_qcov": best_dropped,
            "qcov_gap": best_kept - best_dropped}


@pytest.mark.parametrize("name", ["extractive", "skim"])
def test_coverage_features_follow_the_formula(name: str) -> None:
    comp = get_compressor(name, min_tokens=1)
    query = "When was the Eiffel Tower completed, and how tall is it?"
    scored = comp.score(DOCS, query)
    factors = [1.0, 2.0, 4.0, 8.0]
    _, per = featurize(comp, scored, factors)
    for f, ff in zip(factors, per, strict=True):
        keep = comp.select(scored, 1.0 / f).keep if f > 1 else np.ones(len(scored.units), dtype=bool)
        want = _coverage_by_hand(scored, keep)
        for k in COVERAGE_FEATURES:
            assert ff[k] == pytest.approx(want[k], abs=1e-12), (f, k)
    assert per[0]["qcov_kept"] == pytest.approx(1.0) and per[0]["best_dropped_unit_qcov"] == 0.0
    assert per[-1]["qcov_kept"] < 1.0  # at 8x the units about Paris' tower lose some query terms
    _, no_query = featurize(comp, comp.score(DOCS, None), factors)
    assert all(ff[k] == 0.0 for ff in no_query for k in COVERAGE_FEATURES)



@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(["tower", "Tower", "towers", "eiffel", "paris", "1889", "İstanbul", "the",
                                       "Straße", "built", "TALL", "x"]), min_size=1, max_size=60),
       query=st.lists(st.sampled_from(["tower", "eiffel", "istanbul", "i̇stanbul", "straße", "1889", "tall", "zz"]),
                      min_size=1, max_size=4))
def test_query_presence_matches_a_substring_scan(words: list[str], query: list[str]) -> None:
    text = ". ".join(" ".join(words[i:i + 5]) for i in range(0, len(words), 5)) + "."
    comp = get_compressor("extractive", min_tokens=1)
    scored = comp.score([text, text.upper()], " ".join(query))
    u = scored.units
    q = sorted(set(terms(scored.query or "")))
    want = np.array([[t in scored.documents[int(d)].text[int(a):int(b)].lower() for t in q]
                     for d, a, b in zip(u.doc, u.start, u.end, strict=True)], dtype=bool).reshape(len(u), len(q))
    assert np.array_equal(query_presence(scored), want)


def _presence_by_hand(scored) -> np.ndarray:  # type: ignore[no-untyped-def]
    u = scored.units
    q = sorted(set(terms(scored.query or "")))
    spans = zip(u.doc, u.start, u.end, strict=True)
    return np.array([[t in scored.documents[int(d)].text[int(a):int(b)].lower() for t in q] for d, a, b in spans],
                    dtype=bool).reshape(len(u), len(q))


@pytest.mark.parametrize(("text", "spans", "query"), [
    ("tower x tower", [(0, 13), (6, 13)], "tower"),  # overlapping units (fixed token windows can share a character)
    ("tower x tower", [(0, 13), (0, 5)], "tower"),  # same start
    ("tower x", [(0, 7), (0, 0)], "tower"),  # an empty unit
    ("é tower", [(0, 7), (2, 7)], "tower"),  # overlapping, on the UTF-8 byte path
    ("ΑΣΒ tower", [(0, 2), (2, 9)], "ας"),  # capital sigma: lower-cased alone, a unit may differ from the whole text
])
def test_query_presence_on_unusual_units(text: str, spans: list[tuple[int, int]], query: str) -> None:
    import dataclasses

    comp = get_compressor("extractive", min_tokens=1)
    scored = comp.score(text, query)
    n = len(spans)
    units = dataclasses.replace(
        scored.units, doc=np.zeros(n, dtype=np.int32), start=np.array([a for a, _ in spans], dtype=np.int64),
        end=np.array([b for _, b in spans], dtype=np.int64), tokens=np.ones(n, dtype=np.int64),
        relevance=np.ones(n), protected=np.zeros(n, dtype=bool), group=np.zeros(n, dtype=np.int32),
        kind=np.zeros(n, dtype=np.int8))
    scored = dataclasses.replace(scored, units=units)
    assert np.array_equal(query_presence(scored), _presence_by_hand(scored))


def test_text_features_of_a_text_with_a_lone_surrogate() -> None:
    """The redundancy features encoded the sample as strict UTF-8: a lone surrogate (accepted by every
    compressor) raised UnicodeEncodeError for predictors that read them."""
    comp = get_compressor("skim")
    text = "The lighthouse \ud83d was built in 1901 by the harbour board. " * 30
    ctx = context_features(comp.score(text, "when"), None, None)
    assert 0 < ctx["zlib_ratio"] < 1
