"""Property tests: invariants that must hold for any input, not just the examples we thought of."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pocsdk.compressors import CPU_COMPRESSORS, get_compressor, render
from pocsdk.errors import EmptyContextError
from pocsdk.text.protect import Protection, strip_markers
from pocsdk.text.segment import segment
from pocsdk.types import CompressionResult

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORD = st.sampled_from(
    "the a river city council voted to fund new bridges and schools in 2024 . , ; ! ? 東京 では 。 "
    "Mr. e.g. 3.14 - | # ``` \n \n\n \t \r\n 😀 \u200b".split(" ")
)
PROSE = st.lists(WORD, min_size=1, max_size=400).map(" ".join)
RATES = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


def assert_well_formed(texts: list[str], res: CompressionResult) -> None:
    """Spans in bounds, sorted, disjoint; each document's text is its span texts joined by whitespace."""
    assert res.original_tokens == sum(d.original_tokens for d in res.documents)
    assert res.compressed_tokens == sum(d.compressed_tokens for d in res.documents)
    for original, doc in zip(texts, res.documents, strict=True):
        prev = 0
        pos = 0
        for sp in doc.spans:
            assert prev <= sp.start < sp.end <= len(original)
            prev = sp.end
            piece = strip_markers(original[sp.start:sp.end])
            at = doc.text.find(piece, pos)
            assert at >= pos and not doc.text[pos:at].strip(), "a span is missing or text sits between spans"
            pos = at + len(piece)
        assert not doc.text[pos:].strip()


@PROPS
@given(text=st.text(), max_chars=st.integers(16, 600))
def test_segment_covers_any_unicode(text: str, max_chars: int) -> None:
    units = segment(text, max_chars)
    covered = [False] * len(text)
    prev = 0
    for u in units:
        assert prev <= u.start < u.end <= len(text)
        prev = u.end
        for i in range(u.start, u.end):
            covered[i] = True
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
@PROPS
@given(text=st.text(), rate=RATES, query=st.none() | st.text(max_size=30))
def test_any_unicode_compresses_or_is_empty(name: str, text: str, rate: float, query: str | None) -> None:
    comp = get_compressor(name, min_tokens=0)
    try:
        scored = comp.score(text, query)
    except EmptyContextError:
        assert not text.strip()
        return
    res = render(scored, comp.select(scored, rate))
    assert_well_formed([text], res)


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
@PROPS
@given(docs=st.lists(PROSE, min_size=1, max_size=4), rate=RATES)
def test_spans_are_a_subsequence_and_counts_add_up(name: str, docs: list[str], rate: float) -> None:
    assume(any(d.strip() for d in docs))
    comp = get_compressor(name, min_tokens=0)
    context = [{"id": f"d{i}", "text": d, "metadata": {"i": i}} for i, d in enumerate(docs)]
    scored = comp.score(context, "council bridges")
    res = render(scored, comp.select(scored, rate))
    assert [d.id for d in res.documents] == [f"d{i}" for i in range(len(docs))]
    assert [d.metadata for d in res.documents] == [{"i": i} for i in range(len(docs))]
    assert_well_formed(docs, res)
    assert res.compressed_tokens <= res.original_tokens + len(docs)  # joins never inflate the text


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
@PROPS
@given(text=PROSE, data=st.data(), rate=RATES)
def test_keep_region_survives_verbatim(name: str, text: str, data: st.DataObject, rate: float) -> None:
    a = data.draw(st.integers(0, len(text)), label="start")
    b = data.draw(st.integers(a, min(len(text), a + 200)), label="end")
    region = text[a:b]
    assume(region.strip())
    marked = text[:a] + "<keep>" + region + "</keep>" + text[b:]
    comp = get_compressor(name, min_tokens=0)
    scored = comp.score(marked, "river")
    res = render(scored, comp.select(scored, rate))
    assert region.strip() in res.text
    assert "<keep>" not in res.text


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
@PROPS
@given(
    words=st.lists(WORD, min_size=5, max_size=300),
    ids=st.lists(st.integers(0, 10**6), min_size=1, max_size=5),
    data=st.data(),
    rate=RATES,
)
def test_user_regex_matches_survive(
    name: str, words: list[str], ids: list[int], data: st.DataObject, rate: float
) -> None:
    for n in ids:
        words.insert(data.draw(st.integers(0, len(words))), f"TICKET-{n}")
    text = " ".join(words)
    comp = get_compressor(name, min_tokens=0, protect=Protection(patterns=[r"TICKET-\d+"]))
    scored = comp.score(text, "schools")
    res = render(scored, comp.select(scored, rate))
    for m in re.finditer(r"TICKET-\d+", text):
        assert re.search(rf"{m.group(0)}(?!\d)", res.text)


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
@PROPS
@given(text=PROSE, rate=RATES)
def test_rate_never_overshoots_much(name: str, text: str, rate: float) -> None:
    comp = get_compressor(name, min_tokens=0, protect=Protection.none())
    assume(text.strip())
    scored = comp.score(text, None)
    res = render(scored, comp.select(scored, rate))
    budget = round(rate * res.original_tokens)
    assert res.compressed_tokens <= budget + max(1, int(0.05 * budget)) + 1
