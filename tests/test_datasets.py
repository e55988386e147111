"""Dataset loaders: spec parsing, the generic JSONL format, and the real datasets (skipped without them)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pocsdk.calibration.datasets import (
    Example,
    available_datasets,
    load_dataset,
    parse_options,
    parse_spec,
)
from pocsdk.calibration.judges import normalize_answer
from pocsdk.errors import ConfigError, InvalidInputError
from pocsdk.text.relevance import BM25Relevance

# -- specs and JSONL (no data needed) ---------------------------------------------------------


def test_parse_spec() -> None:
    s = parse_spec("nq_mixed:n=500,docs=5-20,seed=0")
    assert (s.name, s.arg, s.options) == ("nq_mixed", None, {"n": "500", "docs": "5-20", "seed": "0"})
    assert s.get_range("docs", (1, 1)) == (5, 20) and s.get_int("n", 0) == 500
    assert parse_spec("leval:tasks=coursera,quality").options == {"tasks": "coursera,quality"}
    assert parse_spec("squad_articles").options == {}
    j = parse_spec("jsonl:/data/my,file.jsonl,task=summarization")
    assert j.arg == "/data/my,file.jsonl" and j.options == {"task": "summarization"}
    assert parse_spec("jsonl:/x/y.jsonl").arg == "/x/y.jsonl"
    with pytest.raises(ConfigError):
        parse_spec("")
    with pytest.raises(ConfigError):
        parse_spec("nq_mixed:n=abc").get_int("n", 0)
    with pytest.raises(ConfigError):
        load_dataset("nope")


def test_registry_lists_builtin_datasets() -> None:
    assert {"nq_mixed", "squad_articles", "leval", "multi_news", "kv", "jsonl"} <= set(available_datasets())


def test_parse_options() -> None:
    assert parse_options("Q?\nA. one\nB. two") == {"A": "one", "B": "two"}
    assert parse_options("Q?\n\n (A) one \n (B) two") == {"A": "one", "B": "two"}


def test_jsonl_loader(tmp_path: Path) -> None:
    p = tmp_path / "mine.jsonl"
    rows = [
        {"id": "a", "context": "Paris is the capital.", "query": "Capital?", "answers": "Paris", "reference": " "},
        {"context": [{"id": "d1", "text": "one"}, "two"], "reference": "one two", "task": "summarization", "id": None},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    ex = load_dataset(f"jsonl:{p}")
    assert [e.id for e in ex] == ["a", "mine-2"]
    assert ex[0].answers == ["Paris"] and ex[0].task == "qa" and ex[0].dataset == "mine"
    assert ex[0].reference is None  # a blank reference is no reference: the answers judge it
    assert isinstance(ex[1].context, list) and [d.id for d in ex[1].context] == ["d1", "1"]
    assert ex[1].context_text == "one\n\ntwo"
    assert load_dataset(f"jsonl:{p},task=long_qa,n=1")[0].task == "long_qa"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid UTF-8 JSON"),
        ('["list"]', "JSON object"),
        ('{"query": "q", "answers": ["a"]}', "missing field 'context'"),
        ('{"context": "c"}', "needs 'answers' or 'reference'"),
        ('{"context": "c", "answers": [1]}', "'answers' must be"),
        ('{"context": 5, "answers": ["a"]}', "'context' must be"),
        ('{"context": "c", "answers": ["a"], "extra": 1}', "unknown field"),
        ('{"context": "  ", "answers": ["a"]}', "context is empty"),
    ],
)
def test_jsonl_bad_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"context": "ok", "answers": ["a"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=rf"bad.jsonl:2: .*{message}"):
        load_dataset(f"jsonl:{p}")


def test_jsonl_duplicate_ids_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "dup.jsonl"
    p.write_text('{"id": "a", "context": "c", "answers": ["x"]}\n' * 2, encoding="utf-8")
    with pytest.raises(InvalidInputError, match="twice"):
        load_dataset(f"jsonl:{p}")
    with pytest.raises(InvalidInputError, match="not found"):
        load_dataset(f"jsonl:{tmp_path / 'none.jsonl'}")


# -- real data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nq(shared_data: Path) -> list[Example]:
    return load_dataset("nq_mixed:n=200,seed=0", root=shared_data)


def test_nq_mixed_structure(nq: list[Example], shared_data: Path) -> None:
    with gzip.open(shared_data / "lost_in_the_middle" / "nq-open-oracle.jsonl.gz", "rt", encoding="utf-8") as fh:
        raw = [json.loads(line) for line in fh]
    assert len(nq) == 200
    assert len({e.id for e in nq}) == 200
    for e in nq:
        assert isinstance(e.context, list) and e.task == "multi_doc_qa"
        qi = e.metadata["question_index"]
        assert e.query == raw[qi]["question"]
        golds = [d for d in e.context if d.metadata["gold"]]
        assert len(golds) == 1, "exactly one gold passage"
        assert golds[0].text.endswith(raw[qi]["ctxs"][0]["text"])
        assert golds[0].metadata["title"] == raw[qi]["ctxs"][0]["title"]
        assert e.context[e.metadata["gold_index"]] is golds[0]
        assert 5 <= len(e.context) <= 20
        answers = [normalize_answer(a) for a in e.answers]
        for d in e.context:
            if not d.metadata["gold"]:
                assert not any(f" {a} " in f" {normalize_answer(d.text)} " for a in answers if a)
        # NQ holds one passage under several questions: it was picked up to four times as a distractor
        texts = [normalize_answer(d.text) for d in e.context]
        assert len(set(texts)) == len(texts), f"{e.id}: a passage appears twice"
    counts = Counter(len(e.context) for e in nq)
    assert len(counts) >= 10, "document counts vary"
    positions = [e.metadata["gold_position"] for e in nq]
    assert min(positions) == 0.0 and max(positions) == 1.0 and len(set(positions)) > 30, "gold positions vary"


def test_nq_hard_distractors_are_more_similar(nq: list[Example]) -> None:
    bm25 = BM25Relevance(centrality_weight=0.0)
    hard: list[float] = []
    rand: list[float] = []
    wins = 0
    for e in nq:
        assert isinstance(e.context, list)
        scores = bm25.score([d.text for d in e.context], e.query)
        h = [s for s, d in zip(scores, e.context, strict=True) if d.metadata["hard_distractor"]]
        r = [s for s, d in zip(scores, e.context, strict=True)
             if not d.metadata["gold"] and not d.metadata["hard_distractor"]]
        assert len(h) == e.metadata["n_hard"]
        hard += h
        rand += r
        wins += bool(h and r and np.mean(h) > np.mean(r))
    assert np.mean(hard) > 2 * np.mean(rand)
    assert wins > 0.9 * len(nq)


def test_nq_is_deterministic(shared_data: Path, nq: list[Example]) -> None:
    again = load_dataset("nq_mixed:n=20,seed=0", root=shared_data)
    assert [e.model_dump() for e in again] == [e.model_dump() for e in nq[:20]]
    other = load_dataset("nq_mixed:n=20,seed=1,docs=10,hard=1", root=shared_data)
    assert all(len(e.context) == 10 and e.metadata["n_hard"] == 9 for e in other)


def test_squad_articles(shared_data: Path) -> None:
    ex = load_dataset("squad_articles:n=100,window=12", root=shared_data)
    assert len(ex) == 100 and len({e.id for e in ex}) == 100
    for e in ex:
        assert isinstance(e.context, str) and e.answers and not e.metadata["unanswerable"]
        assert e.context.count("\n\n") == e.metadata["n_paragraphs"] - 1 == 11
        for start in e.metadata["answer_starts"]:
            assert any(e.context[start:start + len(a)] == a for a in e.answers)
    assert len({e.metadata["paragraph_index"] for e in ex}) > 5
    whole = load_dataset("squad_articles:n=5,window=0", root=shared_data)
    assert all(len(e.context) > 10_000 for e in whole)
    un = load_dataset("squad_articles:n=20,unanswerable=only", root=shared_data)
    assert all(e.metadata["unanswerable"] and not e.answers for e in un)


def test_leval(shared_data: Path) -> None:
    ex = load_dataset("leval", root=shared_data)
    assert len(ex) == 1675 and len({e.id for e in ex}) == len(ex)
    by_task = Counter(e.metadata["leval_task"] for e in ex)
    assert len(by_task) == 15 and by_task["gsm100"] == 100 and by_task["coursera"] == 172
    for e in ex:
        assert e.query
        if e.task == "multiple_choice" and e.metadata["leval_task"] != "sci_fi":
            assert e.answers and e.reference
        if e.task == "summarization":
            assert e.reference and not e.answers
    # sci_fi asks True or False: the statement is the query, so it is no reference (retention would score the
    # query's own words, which query-aware compressors keep); the truth value is the answer
    sci_fi = [e for e in ex if e.metadata["leval_task"] == "sci_fi"]
    assert len(sci_fi) == 64 and all(e.reference is None and e.answers in (["True"], ["False"]) for e in sci_fi)
    gsm = [e for e in ex if e.metadata["leval_task"] == "gsm100"]
    assert all(e.task == "few_shot" and "Let's think step by step" in str(e.context) for e in gsm)
    two = load_dataset("leval:tasks=coursera,tpo", root=shared_data)
    assert {e.metadata["leval_task"] for e in two} == {"coursera", "tpo"}
    with pytest.raises(ConfigError, match="unknown L-Eval"):
        load_dataset("leval:tasks=nope", root=shared_data)


def test_multi_news(shared_data: Path) -> None:
    ex = load_dataset("multi_news", root=shared_data)
    assert len(ex) == 200
    assert all(e.task == "summarization" and e.reference and e.query is None for e in ex)
    assert np.mean([len(e.context) for e in ex]) > 1.5
    assert not any("NEWLINE_CHAR" in e.context_text for e in ex)


def test_kv(shared_data: Path) -> None:
    ex = load_dataset("kv:keys=75", root=shared_data)
    assert len(ex) == 500
    for e in ex[:50]:
        assert isinstance(e.context, str) and e.query
        assert json.loads(e.context)  # the context is the JSON object
        assert e.answers[0] in e.context and e.metadata["n_keys"] == 75
    assert len({e.metadata["gold_index"] for e in ex}) > 20
    assert len(load_dataset("kv:keys=140,n=3", root=shared_data)) == 3


def test_misspelt_options_and_stray_arguments_are_errors(tmp_path: Path) -> None:
    """Typos loaded the defaults silently: nq_mixed:ndocs=3 gave 5-20 documents, nq_mixed:5 every example."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"context": "Paris is in France.", "query": "Where?", "answers": ["France"]}) + "\n")
    for spec, match in [("nq_mixed:ndocs=3", "no option ndocs"), ("squad_articles:windows=0", "no option windows"),
                        ("kv:key=140", "no option key"), ("multi_news:seed=1", "no option seed"),
                        ("nq_mixed:5", "positional"), (f"jsonl:{data},tsk=qa", "no option tsk"),
                        (f"jsonl:{data},root={tmp_path}", "no option root")]:
        with pytest.raises(ConfigError, match=match):
            load_dataset(spec, root=tmp_path)
    assert len(load_dataset(f"jsonl:{data},task=qa,n=1")) == 1


def test_null_task_and_dataset_fall_back_to_the_defaults(tmp_path: Path) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"context": "Paris is in France.", "query": "Where?", "answers": ["France"],
                                "task": None, "dataset": None}) + "\n")
    (e,) = load_dataset(f"jsonl:{data},task=retrieval")
    assert e.task == "retrieval" and e.dataset == "mine"
