"""The shared compressor matrix: every CPU compressor honours the same contract.

New compressors added to ``CPU_COMPRESSORS`` are picked up by every test here.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from pocsdk import Compressor
from pocsdk.compressors import (
    CPU_COMPRESSORS,
    TextCompressor,
    available,
    get_compressor,
    render,
)
from pocsdk.errors import ConfigError, InputTooLargeError, UnknownCompressorError
from pocsdk.types import CompressionResult

WORDS = (
    "river mountain city council budget school teacher museum painting harbour engine railway bridge forest "
    "election senator festival orchestra library scientist telescope planet ocean vaccine hospital farmer "
    "market currency factory workers strike storm flood village castle kingdom treaty border"
).split()


def make_text(n_sentences: int, seed: int = 0, paragraphs: int = 4) -> str:
    """Prose with sentences of varied length (3 to 40 words), split into paragraphs."""
    rng = random.Random(seed)
    sents = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 40))]
        sents.append(" ".join(words).capitalize() + ".")
    size = max(1, n_sentences // paragraphs)
    return "\n\n".join(" ".join(sents[i:i + size]) for i in range(0, n_sentences, size))


def run(comp: TextCompressor, context: object, rate: float, query: str | None = None) -> CompressionResult:
    scored = comp.score(context, query)  # type: ignore[arg-type]
    return render(scored, comp.select(scored, rate), requested_keep_rate=rate)


def check_spans(context_texts: list[str], res: CompressionResult) -> None:
    """Spans are sorted, disjoint, in bounds; each document's text is its spans joined by whitespace."""
    for original, doc in zip(context_texts, res.documents, strict=True):
        prev = 0
        rebuilt = []
        for sp in doc.spans:
            assert prev <= sp.start < sp.end <= len(original)
            prev = sp.end
            rebuilt.append(original[sp.start:sp.end])
        if not doc.spans:
            assert doc.text == ""
            continue
        # the joined text is the span texts with whitespace (original or one break/space) between
        pos = 0
        for piece in rebuilt:
            at = doc.text.find(piece, pos)
            assert at >= pos and not doc.text[pos:at].strip(), (piece, doc.text[pos:at])
            pos = at + len(piece)
        assert pos == len(doc.text)


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
@pytest.mark.parametrize("n_sentences", [12, 40, 150])
def test_rate_tracks_request_within_ten_percent(name: str, n_sentences: int) -> None:
    text = make_text(n_sentences, seed=n_sentences)
    comp = get_compressor(name)
    scored = comp.score(text, "council budget election")
    assert scored.total_tokens >= 200
    for rate in (0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0):
        res = render(scored, comp.select(scored, rate))
        assert abs(res.keep_rate / rate - 1) <= 0.10, (name, rate, res.keep_rate, res.original_tokens)


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
def test_long_code_block_is_compressed_to_the_rate_not_dropped(name: str) -> None:
    # One fenced block used to be one unit that could only be kept or dropped whole (an empty result
    # at keep_rate 0.8), and code lines starting "return ..." must not count as protected instructions.
    code = "Notes about the helpers.\n\n```python\n" + "\n".join(
        f"def f{i}(x):\n    return x * {i}  # helper {i}" for i in range(120)) + "\n```\n"
    comp = get_compressor(name)
    scored = comp.score(code, "What does f17 return?")
    texts = [code[s:e] for s, e in zip(scored.units.start.tolist(), scored.units.end.tolist(), strict=True)]
    # only the two fence lines are protected, so what is kept stays a fenced block
    assert [t for t, p in zip(texts, scored.units.protected.tolist(), strict=True) if p] == ["```python", "```"]
    for rate in (0.1, 0.3, 0.5, 0.8):
        res = render(scored, comp.select(scored, rate))
        assert abs(res.keep_rate / rate - 1) <= 0.10, (name, rate, res.keep_rate)
        assert res.text.strip() and res.text.count("```") == 2
        assert all(line.startswith(("def ", "    return", "```", "Notes")) for line in res.text.splitlines()
                   if line.strip()), res.text[:300]  # indentation survives the cuts
    if name == "extractive":
        assert "return x * 17 " in render(scored, comp.select(scored, 0.1)).text


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
def test_rate_tracks_with_tiktoken_counts(name: str) -> None:
    comp = get_compressor(name, tokenizer="tiktoken:cl100k_base")
    scored = comp.score(make_text(30, seed=3), "museum")
    assert scored.tokenizer.name == "tiktoken:cl100k_base"
    for rate in (0.1, 0.25, 0.5, 0.75):
        res = render(scored, comp.select(scored, rate))
        assert abs(res.keep_rate / rate - 1) <= 0.10, (name, rate, res.keep_rate)


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
def test_selection_token_estimate_matches_rendered_count(name: str) -> None:
    comp = get_compressor(name)
    scored = comp.score(make_text(60, seed=5), "railway bridge")
    for rate in (0.1, 0.33, 0.6):
        sel = comp.select(scored, rate)
        assert sel.tokens(scored) == render(scored, sel).compressed_tokens


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
def test_short_input_passes_through_unchanged(name: str) -> None:
    text = "  A short note. Nothing to compress here.\n"
    res = run(get_compressor(name), text, 0.2)
    assert res.passthrough and res.reason == "input_too_short"
    assert res.text == text
    assert res.keep_rate == 1.0 and res.compressed_tokens == res.original_tokens


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
def test_keep_rate_one_returns_the_original_text(name: str) -> None:
    text = "\n" + make_text(40, seed=1) + "\n\n```\ncode  block\n```\n  "
    res = run(get_compressor(name), text, 1.0)
    assert res.text == text
    assert res.passthrough and res.reason == "full_keep_rate"
    docs = [{"id": "a", "text": make_text(20, seed=2)}, {"id": "b", "text": make_text(25, seed=3)}]
    res2 = run(get_compressor(name), docs, 1.0)
    assert [d.text for d in res2.documents] == [d["text"] for d in docs]


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
@pytest.mark.parametrize("rate", [0.05, 0.3, 0.7])
def test_document_ids_and_metadata_survive(name: str, rate: float) -> None:
    docs: list[dict[str, Any]] = [
        {"id": f"doc-{i}", "text": make_text(8 + i, seed=i), "metadata": {"source": f"s{i}", "rank": i}}
        for i in range(6)
    ]
    docs.append({"text": make_text(5, seed=99)})  # no id: its position becomes the id
    res = run(get_compressor(name), docs, rate, "orchestra festival")
    assert [d.id for d in res.documents] == [f"doc-{i}" for i in range(6)] + ["6"]
    assert [d.metadata for d in res.documents] == [{"source": f"s{i}", "rank": i} for i in range(6)] + [{}]
    assert res.original_tokens == sum(d.original_tokens for d in res.documents)
    assert res.compressed_tokens == sum(d.compressed_tokens for d in res.documents)
    check_spans([d["text"] for d in docs], res)
    # no text moves between documents
    for d, original in zip(res.documents, docs, strict=True):
        for sp in d.spans:
            assert original["text"][sp.start:sp.end] in d.text
    assert res.text == res.separator.join(d.text for d in res.documents if d.text)


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
def test_spans_rebuild_text_for_structured_input(name: str) -> None:
    text = (
        "# Report\n\nThe council met on Monday. It approved the budget.\n\n"
        "| item | cost |\n|---|---|\n| roads | 10 |\n| schools | 20 |\n\n"
        "```python\ndef total(x):\n    return sum(x)\n```\n\n"
        "- first point about railways and bridges\n- second point about museums\n\n"
        + make_text(30, seed=7)
    )
    for rate in (0.1, 0.4, 0.8):
        check_spans([text], run(get_compressor(name), text, rate, "budget"))


def test_extractive_keeps_the_sentence_that_answers() -> None:
    text = make_text(80, seed=11)
    needle = "The observatory on Mount Wilson was founded in 1904 by George Ellery Hale."
    paras = text.split("\n\n")
    paras[2] = paras[2] + " " + needle
    res = run(get_compressor("extractive"), "\n\n".join(paras), 0.1, "Who founded the Mount Wilson observatory?")
    assert needle in res.text


def test_truncate_keeps_the_beginning() -> None:
    text = make_text(60, seed=4)
    res = run(get_compressor("truncate"), text, 0.3)
    assert text.startswith(res.text.split("\n")[0])
    assert res.documents[0].spans[0].start == 0


def test_random_is_seeded() -> None:
    text = make_text(60, seed=8)
    a = run(get_compressor("random", seed=1), text, 0.3).text
    assert a == run(get_compressor("random", seed=1), text, 0.3).text
    assert a != run(get_compressor("random", seed=2), text, 0.3).text


def test_skim_reports_skimmed_excerpts_and_never_cuts_negated_sentences() -> None:
    text = make_text(120, seed=12, paragraphs=12)
    res = run(get_compressor("skim"), text, 0.3, "harbour")
    assert res.skimmed_spans and res.kept_spans
    neg = ("The bridge is safe for cars, trucks and buses, but it is not safe for pedestrians, cyclists, "
           "horses or children under any circumstances whatsoever in this entire region.")
    paras = text.split("\n\n")
    paras[5] = neg
    res2 = run(get_compressor("skim", clause_min_tokens=5), "\n\n".join(paras), 0.15, "pedestrians safe")
    for _, sp in res2.skimmed_spans:
        piece = "\n\n".join(paras)[sp.start:sp.end]
        assert piece == neg or piece not in neg


LONG_NEGATED = ("The medication is safe and effective for adults of all ages, including patients with mild kidney "
                "disease, patients with controlled high blood pressure, patients with type 2 diabetes, patients "
                "recovering from surgery, patients taking common antibiotics, and patients over the age of seventy "
                "who live independently at home, according to the results of three large randomised trials "
                "conducted in Europe and North America between 2015 and 2021, but it is not safe for children under "
                "twelve or for women who are pregnant.")


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
def test_a_negated_sentence_over_the_unit_size_is_never_kept_in_part(name: str) -> None:
    """A 516-character sentence was cut at its commas into pieces kept apart: at low rates the output said the
    medication was safe for adults, and nothing about children."""
    assert len(LONG_NEGATED) > 480
    text = LONG_NEGATED + "\n\n" + make_text(60, seed=5, paragraphs=6)
    comp = get_compressor(name)
    scored = comp.score(text, "Which trials in Europe tested the medication on adults with diabetes?")
    for rate in [i / 50 for i in range(1, 40)]:
        out = render(scored, comp.select(scored, rate)).text
        assert ("safe and effective for adults" in out) == ("not safe for children" in out), (rate, out[:120])


@pytest.mark.parametrize("name", CPU_COMPRESSORS)
def test_keep_rate_holds_with_tiktoken_on_indented_lines(name: str) -> None:
    """Whitespace between kept units is not in the units' prices; tiktoken counts it, so tab-indented lines
    came back at +27-40% of the rate. The facade cuts such an output back to the rate."""
    words = "river castle engine orchard harbor glacier violin comet market forest".split()
    text = "\n".join(f"\t\t\t\t{words[i % 10]} {i}." for i in range(300))
    comp = get_compressor(name, tokenizer="tiktoken:cl100k_base")
    for rate in (0.1, 0.3, 0.5):
        res = Compressor(keep_rate=rate, compressor=comp).compress(text, "orchard")
        assert res.keep_rate <= rate * 1.10 and res.requested_keep_rate == rate, (rate, res.keep_rate)


def test_input_size_limit_is_configurable() -> None:
    text = make_text(40)
    with pytest.raises(InputTooLargeError):
        get_compressor("extractive", max_input_chars=100).score(text)
    assert get_compressor("extractive", max_input_chars=len(text)).score(text).total_tokens > 0


@pytest.mark.parametrize(
    "params",
    [
        {"max_input_chars": 0},
        {"max_input_chars": "big"},
        {"max_input_chars": 1.5},
        {"min_tokens": -1},
        {"min_tokens": True},
        {"max_unit_chars": 2},
        {"no_such_param": 1},
        {"protect": 3},
    ],
)
@pytest.mark.parametrize("name", CPU_COMPRESSORS)
def test_bad_parameters_are_config_errors(name: str, params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        get_compressor(name, **params)


@pytest.mark.parametrize("params", [{"skim_share": 1.5}, {"segment_tokens": 0}, {"clause_min_tokens": "x"}])
def test_bad_skim_parameters(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        get_compressor("skim", **params)


def test_registry() -> None:
    assert set(CPU_COMPRESSORS) <= set(available())
    with pytest.raises(UnknownCompressorError):
        get_compressor("nope")
    comp = get_compressor("extractive")
    assert get_compressor(comp) is comp
    with pytest.raises(ConfigError):
        get_compressor(comp, min_tokens=3)
    for name in CPU_COMPRESSORS:
        c = get_compressor(name)
        assert c.name == name and isinstance(c, TextCompressor)


def test_sentence_joins_use_a_space_not_the_dropped_texts_whitespace() -> None:
    """Word-level compressors write the whitespace before a kept piece (their budgets price it); sentence
    joins of the default compressors stay a plain space, whatever separated the dropped sentences."""
    filler = "\t".join(f"Filler sentence number {i} talks about the weather in town." for i in range(40))
    text = "The treasure is buried under the old lighthouse.\t" + filler + "\tThe key is under the mat."
    for name in ("extractive",):
        out = Compressor(keep_rate=0.1, compressor=name).compress(text, "treasure key lighthouse mat").text
        assert "The key is under the mat." in out and "number 39" not in out, (name, out[-120:])
        assert "\tThe key" not in out, (name, out[-120:])  # adjacent kept sentences keep their tab


@pytest.mark.parametrize("name", ["extractive", "skim", "truncate"])
def test_text_without_spaces_is_joined_without_spaces(name: str) -> None:
    """Dropped text between two Chinese characters was marked with a space ("天 去公 了"): the source had none."""
    from pocsdk import Compressor

    text = "".join(f"今天天气很好，我们去公园散步{i}。北京是中国的首都，人口非常多。" for i in range(12))
    out = Compressor(keep_rate=0.4, compressor=name).compress(text, "北京").text
    assert out and " " not in out and len(out) < len(text)


@pytest.mark.parametrize("name", ["extractive", "skim"])
def test_code_blocks_dropped_whole_leave_no_bare_fences(name: str) -> None:
    """Six fenced blocks under target_tokens=30 came back as six empty fence pairs, 42 tokens."""
    from pocsdk import Compressor

    def block(k: int) -> str:
        return "```python\n" + "\n".join(f"value_{k}_{i} = compute(alpha, beta, {i})" for i in range(40)) + "\n```"

    docs = [block(k) for k in range(6)]
    r = Compressor(target_tokens=30, compressor=name).compress(docs, "lighthouse range")
    assert r.compressed_tokens <= 30 and "```" not in r.text
    mixed = "Intro.\n\n" + block(1) + "\n\nThe range is nineteen miles.\n\n" + block(2)
    out = Compressor(keep_rate=0.1, compressor=name).compress(mixed, "value_2_5 compute").text
    assert out.count("```") % 2 == 0  # what code is kept stays fenced, a block dropped whole loses its fences


@pytest.mark.parametrize("newline", ["\r", "\u2028", "\u2029"])
@pytest.mark.parametrize("name", ["extractive", "skim"])
def test_kept_lines_stay_apart_with_other_line_breaks(name: str, newline: str) -> None:
    """A dropped gap holding "\\r" or U+2028 (but no "\\n") was joined with a space, gluing table rows."""
    rows = [f"| {i} | City number {i} | {1000 + i} |" for i in range(60)]
    text = newline.join(["Population table.", "", "| id | city | population |", *rows])
    out = Compressor(keep_rate=0.2, compressor=name).compress(text, "population of City number 37").text
    lines = out.split(newline)
    assert len(lines) > 3 and all(line in text.split(newline) for line in lines if line), lines[:5]


@pytest.mark.parametrize("tokenizer", ["heuristic", "tiktoken:cl100k_base"])
@pytest.mark.parametrize("name", ["extractive", "skim"])
def test_text_without_whitespace_tracks_the_rate(name: str, tokenizer: str) -> None:
    """Minified JSON has no whitespace to cut at: its units were hard cuts of 480 characters that the top-up could
    not shorten, so 0.25 kept 0.17. It is cut after commas (never inside a number) and topped up the same way."""
    import json

    rng = random.Random(0)
    records = [{"id": i, "name": f"user_{i}", "email": f"user{i}@example.com", "score": round(rng.random() * 100, 2),
                "total": f"{1000 + 37 * i:,}", "tags": ["a", "b"]} for i in range(40)]
    text = json.dumps(records, separators=(",", ":"))
    comp = Compressor(compressor=name, tokenizer=tokenizer)
    for rate in (0.1, 0.25, 0.3):
        got = comp.compress(text, "What is user_7's score?", keep_rate=rate).keep_rate
        assert abs(got - rate) <= 0.1 * rate, (rate, got)
    scored = comp.compressor.score(text, "What is user_7's score?")
    for e in scored.units.end.tolist():
        assert text[e - 1] in ",;" or e == len(text)  # units end after a separator, not inside a value
