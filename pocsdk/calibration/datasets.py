"""Calibration datasets: loaders that turn public benchmarks into one common ``Example`` model.

A *spec string* selects a dataset and its options: ``name`` or ``name:key=value,key=value``.
A value may itself hold commas (``leval:tasks=coursera,quality``): a piece without ``=``
continues the previous value. A piece before any ``key=`` is the positional argument
(``jsonl:/path/file.jsonl``).

Built-in datasets (files under the data root: ``root=...``, ``$POCSDK_DATA`` or ``../shared/data``):

* ``nq_mixed:n=1500,docs=5-20,hard=0.5,seed=0`` -- NQ-Open questions; each gold passage is mixed
  with passages of *other* questions as distractors (``docs`` = total documents, an int or a range),
  a share ``hard`` of them the passages most similar to the question by BM25, the rest random. The
  gold position is uniform over the list. Distractors never contain a gold answer, and no passage text
  appears twice in one example (NQ holds the same passage under several questions). Task ``multi_doc_qa``.
* ``squad_articles:n=600,window=16,unanswerable=0,seed=0`` -- SQuAD 2.0 dev: the question's paragraph
  inside a window of ``window`` consecutive paragraphs of its article (0 = the whole article), at a
  random position. ``unanswerable=1`` adds unanswerable questions (``metadata.unanswerable``, no answers),
  ``unanswerable=only`` keeps only them (unscorable by both judges: there is no gold). Task ``qa``.
* ``leval:tasks=coursera,quality`` -- L-Eval; one example per instruction. Multiple-choice answers
  keep the letters in ``answers`` and the correct option text in ``reference``; ``gsm100`` is a
  16-shot prompt (task ``few_shot``, context = the demonstrations). ``sci_fi`` asks True or False
  about the document's world: ``answers`` holds the truth value and there is no ``reference`` (the
  statement is the question itself), so only the ``llm`` judge scores it. Default: all 15 tasks.
* ``multi_news:n=200,query=`` -- LongBench multi_news, one document per "Passage i:"; task
  ``summarization``, ``reference`` = the summary, query None unless ``query=...`` is given.
* ``kv:keys=75,n=500`` -- key-value retrieval (75 or 140 keys); context = the JSON object, one
  record per line; query "Extract the value for key X"; task ``retrieval``.
* ``jsonl:/path/file.jsonl`` (or ``jsonl:path=...,task=qa``) -- your own data, see below.

Every spec accepts ``n`` (keep the first n examples after the dataset's own seeded sampling), the
built-in datasets also ``root`` (not ``jsonl``, whose path is its own); an option a dataset does not read
is an error (``nq_mixed:ndocs=3`` would otherwise silently load 5-20 documents).

Generic JSONL format (one JSON object a line; blank lines ignored)::

    {"id": "q1",                       # optional; default "<file stem>-<line number>"
     "context": "text" | [{"id": "a", "text": "...", "metadata": {...}}, "plain doc", ...],
     "query": "question or null",      # optional
     "answers": ["gold", "alias"] | "gold",   # short or long gold answers, and/or
     "reference": "reference text",    # a reference (e.g. a summary)
     "task": "qa",                     # optional (null too); default from the spec option task=, else "qa"
     "metadata": {...}}                # optional, kept in the labels

At least one of ``answers`` or ``reference`` is required. A bad line raises
:class:`~pocsdk.errors.InvalidInputError` naming the file and line.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pocsdk.calibration.judges import normalize_answer
from pocsdk.errors import ConfigError, InvalidInputError
from pocsdk.text.relevance import terms
from pocsdk.types import Document

TASKS = ("qa", "multi_doc_qa", "long_qa", "multiple_choice", "summarization", "retrieval", "few_shot")


class Example(BaseModel):
    """One calibration input with its gold: what a judge needs to score a (compressed) context."""

    model_config = ConfigDict(extra="forbid")

    id: str
    dataset: str
    task: str
    context: Union[str, list[Document]]
    query: str | None = None
    answers: list[str] = Field(default_factory=list)
    """Gold answers (aliases); short spans for QA, letters for multiple choice."""
    reference: str | None = None
    """A reference text (summary, correct option text); judged by content-token recall."""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_context(self) -> Example:
        if isinstance(self.context, str) and not self.context.strip():
            raise ValueError("context is empty")
        if isinstance(self.context, list) and not self.context:
            raise ValueError("context has no documents")
        return self

    @property
    def context_text(self) -> str:
        """The full context as one string (documents joined like compressed results are)."""
        if isinstance(self.context, str):
            return self.context
        return "\n\n".join(d.text for d in self.context)


# -- spec parsing ---------------------------------------------------------------------------


@dataclass
class DatasetSpec:
    """A parsed spec string: dataset name, positional argument and options."""

    name: str
    arg: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def get_int(self, key: str, default: int) -> int:
        raw = self.options.get(key)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"dataset option {key}={raw!r} must be an integer") from None

    def get_float(self, key: str, default: float) -> float:
        raw = self.options.get(key)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"dataset option {key}={raw!r} must be a number") from None
        if math.isnan(value):
            raise ConfigError(f"dataset option {key} must not be NaN")
        return value

    def get_range(self, key: str, default: tuple[int, int]) -> tuple[int, int]:
        raw = self.options.get(key)
        if raw is None or raw == "":
            return default
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", raw)
        if not m:
            raise ConfigError(f"dataset option {key}={raw!r} must be an integer or a range like 5-20")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if lo < 1 or hi < lo:
            raise ConfigError(f"dataset option {key}={raw!r} is not a valid range")
        return lo, hi


def parse_spec(spec: str) -> DatasetSpec:
    """Parse ``name[:arg][,key=value[,more,values]]...``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("dataset spec must be a non-empty string such as 'nq_mixed:n=500'")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"bad dataset name in spec {spec!r}")
    out = DatasetSpec(name=name)
    if name == "jsonl" and rest and "=" not in rest.split(",", 1)[0]:
        # a path may contain commas; options come after the first ",key=" piece
        m = re.search(r",(?=[A-Za-z_]\w*=)", rest)
        out.arg, rest = (rest[: m.start()], rest[m.end():]) if m else (rest, "")
    last: str | None = None
    for piece in rest.split(",") if rest else []:
        key, eq, value = piece.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_]\w*", key.strip()):
            last = key.strip()
            out.options[last] = value.strip()
        elif last is not None:
            out.options[last] += "," + piece.strip()
        elif out.arg is None:
            out.arg = piece.strip()
        else:
            out.arg += "," + piece
    return out


# -- registry --------------------------------------------------------------------------------

Loader = Callable[[DatasetSpec, Path], Iterator[Union[Example, "InvalidExample"]]]
_LOADERS: dict[str, Loader] = {}
_OPTIONS: dict[str, tuple[frozenset[str], bool]] = {}
COMMON_OPTIONS = frozenset({"n", "root"})
"""Options every dataset takes: ``n`` (the first n examples) and ``root`` (the data folder)."""


def register_dataset(name: str, loader: Loader, options: Iterable[str] | None = None,
                     positional: bool = False, root: bool = True) -> None:
    """Register a loader: ``loader(spec, data_root)`` yields examples.

    ``options`` names the spec options it reads (besides ``n``, and ``root`` unless ``root=False``: a loader
    that reads the data folder) and ``positional`` whether it takes ``name:arg``; others are refused, so a
    misspelt option is an error, not a silent default. With ``options=None`` any option is passed through
    (the loader checks them itself)."""
    _LOADERS[name] = loader
    if options is None:
        _OPTIONS.pop(name, None)
    else:
        common = COMMON_OPTIONS if root else COMMON_OPTIONS - {"root"}
        _OPTIONS[name] = (frozenset(options) | common, positional)


def _check_options(spec: DatasetSpec) -> None:
    if spec.name not in _OPTIONS:
        return
    known, positional = _OPTIONS[spec.name]
    unknown = sorted(set(spec.options) - known)
    if unknown:
        raise ConfigError(f"dataset {spec.name!r} has no option {', '.join(unknown)}; "
                          f"its options: {', '.join(sorted(known))}")
    if spec.arg is not None and not positional:
        raise ConfigError(f"dataset {spec.name!r} takes no positional argument ({spec.name}:{spec.arg}); "
                          f"give options as key=value, e.g. {spec.name}:n={spec.arg}")


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def data_root(root: str | Path | None = None) -> Path:
    """Where the public datasets live: ``root``, ``$POCSDK_DATA``, or ``../shared/data`` / ``shared/data``."""
    candidates = [Path(root)] if root else []
    if not candidates and os.environ.get("POCSDK_DATA"):
        candidates = [Path(os.environ["POCSDK_DATA"])]
    if not candidates:
        cwd = Path.cwd()
        candidates = [cwd / "../shared/data", cwd / "shared/data", cwd / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise ConfigError(
        f"dataset folder not found (tried {', '.join(str(c) for c in candidates)}); "
        "pass root=... in the spec, --data-root, or set POCSDK_DATA"
    )


@dataclass(frozen=True)
class InvalidExample:
    """A dataset line that is no usable example (bad JSON, a missing field): written to the labels as an
    error line, in place of a label, so every input line has its output line."""

    id: str
    dataset: str
    error: dict[str, Any]


def load_dataset(spec: str | DatasetSpec, root: str | Path | None = None) -> list[Example]:
    """Load every example a spec selects; ids are checked to be unique; a bad line raises."""
    out: list[Example] = []
    for ex in load_dataset_lines(spec, root):
        if isinstance(ex, InvalidExample):
            raise InvalidInputError(str(ex.error.get("message", "invalid example")))
        out.append(ex)
    return out


def load_dataset_lines(spec: str | DatasetSpec, root: str | Path | None = None) -> list[Example | InvalidExample]:
    """:func:`load_dataset` that keeps a bad line (of a ``jsonl`` dataset) as an :class:`InvalidExample`, so
    that ``pocsdk calibrate`` writes one output line per input line."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    loader = _LOADERS.get(parsed.name)
    if loader is None:
        raise ConfigError(f"unknown dataset {parsed.name!r}; available: {', '.join(available_datasets())}")
    _check_options(parsed)
    needs_root = parsed.name != "jsonl"
    base = data_root(parsed.options.get("root") or root) if needs_root else Path(".")
    examples = list(loader(parsed, base))
    n = parsed.get_int("n", 0)
    if n > 0:
        examples = examples[:n]
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise InvalidInputError(f"dataset {parsed.name!r} yields the id {ex.id!r} twice; ids must be unique")
        seen.add(ex.id)
    return examples


def iter_examples_jsonl(path: Path, *, default_task: str = "qa",
                        dataset: str | None = None) -> Iterator[Example | InvalidExample]:
    """Read the generic JSONL format (see the module docstring); a bad line comes back as an
    :class:`InvalidExample`."""
    if not path.is_file():
        raise InvalidInputError(f"dataset file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    name = dataset or path.name.split(".")[0]
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            obj: Any = None
            try:
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                    raise InvalidInputError(f"{where}: not valid UTF-8 JSON: {exc}") from exc
                if not isinstance(obj, dict):
                    raise InvalidInputError(f"{where}: each line must be a JSON object")
                yield _example_from_obj(obj, where, lineno, name, default_task)
            except InvalidInputError as exc:  # one bad line is one error line of the output, not the end of the run
                raw_id = obj.get("id") if isinstance(obj, dict) else None
                ok_id = isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool)
                yield InvalidExample(id=str(raw_id) if ok_id else f"{name}-{lineno}", dataset=name,
                                     error=exc.to_dict())


def _example_from_obj(obj: dict[str, Any], where: str, lineno: int, name: str, default_task: str) -> Example:
    unknown = set(obj) - {"id", "context", "query", "answers", "reference", "task", "metadata", "dataset"}
    if unknown:
        raise InvalidInputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if "context" not in obj:
        raise InvalidInputError(f"{where}: missing field 'context'")
    answers = obj.get("answers", [])
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise InvalidInputError(f"{where}: 'answers' must be a string or a list of strings")
    reference = obj.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise InvalidInputError(f"{where}: 'reference' must be a string")
    if reference is not None and not reference.strip():
        reference = None  # blank: judged by the answers, as if the field were absent
    if not [a for a in answers if a.strip()] and not (reference and reference.strip()):
        raise InvalidInputError(f"{where}: needs 'answers' or 'reference'")
    context = obj["context"]
    if isinstance(context, list):
        docs: list[dict[str, Any]] = []
        for i, item in enumerate(context):
            if isinstance(item, str):
                docs.append({"id": str(i), "text": item})
            elif isinstance(item, dict):
                if not isinstance(item.get("text"), str):
                    raise InvalidInputError(f"{where}: context document {i} needs a string 'text' field")
                docs.append({"id": str(item.get("id", i)), "text": item.get("text"),
                             "metadata": item.get("metadata") or {}})
            else:
                raise InvalidInputError(f"{where}: context document {i} must be a string or an object")
        context = docs
    elif not isinstance(context, str):
        raise InvalidInputError(f"{where}: 'context' must be a string or a list of documents")
    raw_id = obj.get("id")
    if raw_id is None:  # absent or null: the file and line name it
        raw_id = f"{name}-{lineno}"
    try:
        return Example(
            id=str(raw_id), dataset=str(_or(obj.get("dataset"), name)), task=str(_or(obj.get("task"), default_task)),
            context=context, query=obj.get("query"), answers=answers, reference=reference,
            metadata=obj.get("metadata") or {},
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "record"
        raise InvalidInputError(f"{where}: {loc}: {first['msg']}") from exc


def _or(value: Any, default: str) -> Any:
    """A field's value, or the default when it is absent or null (as for ``id``)."""
    return default if value is None else value


def _load_jsonl(spec: DatasetSpec, root: Path) -> Iterator[Example | InvalidExample]:
    path = spec.arg or spec.options.get("path")
    if not path:
        raise ConfigError("jsonl dataset needs a path: jsonl:/path/file.jsonl")
    yield from iter_examples_jsonl(Path(path).expanduser(), default_task=spec.options.get("task") or "qa",
                                   dataset=spec.options.get("dataset"))


# -- NQ with mixed distractors --------------------------------------------------------------


def _read_gz_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"dataset file not found: {path}")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def bm25_matrix(queries: list[str], passages: list[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """Dense (queries x passages) BM25 scores, one sparse product: fast enough for a few thousand each."""
    from scipy.sparse import csr_matrix

    vocab: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lengths = np.zeros(len(passages))
    for i, p in enumerate(passages):
        toks = terms(p)
        lengths[i] = len(toks)
        counts: dict[int, int] = {}
        for t in toks:
            j = vocab.setdefault(t, len(vocab))
            counts[j] = counts.get(j, 0) + 1
        rows.extend([i] * len(counts))
        cols.extend(counts.keys())
        vals.extend(counts.values())
    n, v = len(passages), len(vocab)
    tf = csr_matrix((np.asarray(vals, dtype=np.float64), (rows, cols)), shape=(n, v))
    df = np.bincount(np.asarray(cols, dtype=np.int64), minlength=v)
    idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    avg = float(lengths.mean()) or 1.0
    norm = k1 * (1.0 - b + b * lengths / avg)
    tf = tf.tocoo()
    w = tf.data * (k1 + 1.0) / (tf.data + norm[tf.row]) * idf[tf.col]
    weights = csr_matrix((w, (tf.row, tf.col)), shape=(n, v))
    q_rows: list[int] = []
    q_cols: list[int] = []
    for i, q in enumerate(queries):
        for t in set(terms(q)):
            col = vocab.get(t)
            if col is not None:
                q_rows.append(i)
                q_cols.append(col)
    qm = csr_matrix((np.ones(len(q_rows)), (q_rows, q_cols)), shape=(len(queries), v))
    return np.asarray((qm @ weights.T).todense())


def _nq_doc_text(title: str, text: str) -> str:
    return f"{title}\n{text}" if title else text


def _first_usable(order: np.ndarray, k: int, usable: Callable[[int], bool], taken: set[int],
                  same_text: Sequence[int]) -> list[int]:
    """The first ``k`` usable passages of ``order`` whose text is not taken yet (``same_text[j]``: the first
    passage with ``j``'s normalised text); adds theirs to ``taken``."""
    out: list[int] = []
    for j in (int(x) for x in order):
        if len(out) >= k:
            break
        if same_text[j] not in taken and usable(j):
            out.append(j)
            taken.add(same_text[j])
    return out


def _load_nq_mixed(spec: DatasetSpec, root: Path) -> Iterator[Example]:
    rows = _read_gz_jsonl(root / "lost_in_the_middle" / "nq-open-oracle.jsonl.gz")
    lo, hi = spec.get_range("docs", (5, 20))
    hard_share = spec.get_float("hard", 0.5)
    if not 0.0 <= hard_share <= 1.0:
        raise ConfigError("nq_mixed option hard must be in [0, 1]")
    seed = spec.get_int("seed", 0)
    gold = [r["ctxs"][0] for r in rows]
    passages = [_nq_doc_text(g.get("title", ""), g["text"]) for g in gold]
    norm_passages = [" " + normalize_answer(p) + " " for p in passages]
    # the same passage is the gold of several questions: distractors are told apart by their text
    first_of: dict[str, int] = {}
    same_text = [first_of.setdefault(p, j) for j, p in enumerate(norm_passages)]
    questions = [r["question"] for r in rows]
    sims = bm25_matrix(questions, passages)
    order = np.random.default_rng(seed).permutation(len(rows))
    n = spec.get_int("n", 0)
    chosen = order[:n] if n > 0 else order
    for qi in (int(x) for x in chosen):
        row = rows[qi]
        norm_answers = [normalize_answer(a) for a in row["answers"] if normalize_answer(a)]
        gold_norm = norm_passages[qi]
        rng = np.random.default_rng([seed, qi])
        k = int(rng.integers(lo, hi + 1))
        n_dis = k - 1
        n_hard = round(hard_share * n_dis)

        def usable(j: int, _qi: int = qi, _gold: str = gold_norm, _ans: list[str] = norm_answers) -> bool:
            # a distractor must not repeat the gold passage nor contain a gold answer
            p = norm_passages[j]
            return j != _qi and p != _gold and not any(f" {a} " in p for a in _ans)

        by_sim = np.argsort(-sims[qi], kind="stable")
        hard = _first_usable(by_sim, n_hard, usable, set(), same_text)
        rand = _first_usable(rng.permutation(len(rows)), n_dis - n_hard, usable, {same_text[j] for j in hard},
                             same_text)
        distractors = [(int(j), True) for j in hard] + [(int(j), False) for j in rand]
        perm = rng.permutation(len(distractors))
        distractors = [distractors[i] for i in perm]
        gold_pos = int(rng.integers(0, k))
        docs_src = [*distractors[:gold_pos], (qi, False), *distractors[gold_pos:]]
        docs: list[Document] = []
        for pos, (j, is_hard) in enumerate(docs_src):
            g = gold[j]
            docs.append(Document(
                id=f"doc{pos}", text=passages[j],
                metadata={"title": g.get("title", ""), "gold": j == qi, "hard_distractor": is_hard, "source_q": j},
            ))
        yield Example(
            id=f"nq{qi}", dataset="nq_mixed", task="multi_doc_qa", context=docs, query=row["question"],
            answers=list(row["answers"]),
            metadata={"n_docs": k, "gold_index": gold_pos, "gold_position": gold_pos / max(k - 1, 1),
                      "n_hard": n_hard, "question_index": qi},
        )


# -- SQuAD 2.0 articles ---------------------------------------------------------------------


def _load_squad_articles(spec: DatasetSpec, root: Path) -> Iterator[Example]:
    path = root / "squad_v2_dev_cs224n" / "dev-v2.0.json"
    if not path.is_file():
        raise ConfigError(f"dataset file not found: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    window = spec.get_int("window", 16)
    seed = spec.get_int("seed", 0)
    mode = (spec.options.get("unanswerable") or "0").lower()
    if mode not in ("0", "1", "only", "false", "true"):
        raise ConfigError("squad_articles option unanswerable must be 0, 1 or only")
    keep_answerable = mode != "only"
    keep_unanswerable = mode in ("1", "true", "only")
    items: list[tuple[int, int, int]] = []
    for ai, art in enumerate(data):
        for pi, para in enumerate(art["paragraphs"]):
            for qk, qa in enumerate(para["qas"]):
                impossible = bool(qa.get("is_impossible")) or not qa.get("answers")
                if (impossible and keep_unanswerable) or (not impossible and keep_answerable):
                    items.append((ai, pi, qk))
    n = spec.get_int("n", 0)
    if n > 0 and n < len(items):
        pick = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
        items = [items[i] for i in sorted(int(x) for x in pick)]
    for ai, pi, qk in items:
        art = data[ai]
        paras = art["paragraphs"]
        qa = paras[pi]["qas"][qk]
        w = len(paras) if window <= 0 else min(window, len(paras))
        rng = np.random.default_rng([seed, ai, pi, qk])
        lo_start, hi_start = max(0, pi - w + 1), min(pi, len(paras) - w)
        start = int(rng.integers(lo_start, hi_start + 1))
        texts = [p["context"] for p in paras[start:start + w]]
        offset = sum(len(t) + 2 for t in texts[: pi - start])
        context = "\n\n".join(texts)
        impossible = bool(qa.get("is_impossible")) or not qa.get("answers")
        answers = list(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
        starts = [offset + int(a["answer_start"]) for a in qa.get("answers", [])]
        yield Example(
            id=f"squad-{qa['id']}", dataset="squad_articles", task="qa", context=context, query=qa["question"],
            answers=answers,
            metadata={"title": art["title"], "unanswerable": impossible, "paragraph_index": pi - start,
                      "n_paragraphs": w, "answer_starts": starts,
                      "gold_position": (starts[0] / len(context)) if starts else None},
        )


# -- L-Eval -----------------------------------------------------------------------------------

LEVAL_TASKS: dict[str, tuple[str, str]] = {
    "coursera": ("Closed-ended-tasks", "multiple_choice"),
    "gsm100": ("Closed-ended-tasks", "few_shot"),
    "quality": ("Closed-ended-tasks", "multiple_choice"),
    "sci_fi": ("Closed-ended-tasks", "multiple_choice"),
    "topic_retrieval_longchat": ("Closed-ended-tasks", "retrieval"),
    "tpo": ("Closed-ended-tasks", "multiple_choice"),
    "gov_report_summ": ("Open-ended-tasks", "summarization"),
    "multidoc_qa": ("Open-ended-tasks", "multi_doc_qa"),
    "natural_question": ("Open-ended-tasks", "long_qa"),
    "news_summ": ("Open-ended-tasks", "summarization"),
    "paper_assistant": ("Open-ended-tasks", "summarization"),
    "patent_summ": ("Open-ended-tasks", "summarization"),
    "review_summ": ("Open-ended-tasks", "summarization"),
    "scientific_qa": ("Open-ended-tasks", "long_qa"),
    "tv_show_summ": ("Open-ended-tasks", "summarization"),
}

_OPTION = re.compile(r"^\s*\(?([A-H])[\.\)]\s*(.+?)\s*$", re.MULTILINE)


def parse_options(instruction: str) -> dict[str, str]:
    """Lettered options (``A. text`` or ``(A) text``) of a multiple-choice instruction."""
    return {m.group(1): m.group(2) for m in _OPTION.finditer(instruction)}


def _mc_gold(task: str, instruction: str, output: str) -> tuple[list[str], str | None, dict[str, Any]]:
    """Answers (letters), reference (correct option text) and metadata of one MC instruction."""
    if task == "sci_fi":
        # True or False about the document's world: no option text, and the statement is the question itself
        # (kept by any query-aware compressor), so no reference: retention cannot score it, the llm judge can
        loyal = output.split("[", 1)[0].strip()
        return [loyal], None, {"fact": output}
    options = parse_options(instruction)
    m = re.match(r"\s*\(?([A-H]+)\)?(?:[\.\s]|$)", output)
    letters = list(m.group(1)) if m else []
    texts = [options[x] for x in letters if x in options]
    reference = " ".join(texts) if texts else (output if len(output) > 3 else None)
    return ["".join(letters) or output.strip()], reference, {"options": options}


def _load_leval(spec: DatasetSpec, root: Path) -> Iterator[Example]:
    raw = spec.options.get("tasks") or spec.arg
    tasks = [t.strip() for t in raw.split(",") if t.strip()] if raw else list(LEVAL_TASKS)
    unknown = [t for t in tasks if t not in LEVAL_TASKS]
    if unknown:
        raise ConfigError(f"unknown L-Eval task(s) {', '.join(unknown)}; known: {', '.join(LEVAL_TASKS)}")
    for task in tasks:
        folder, kind = LEVAL_TASKS[task]
        path = root / "leval" / folder / f"{task}.jsonl"
        if not path.is_file():
            raise ConfigError(f"dataset file not found: {path}")
        with path.open(encoding="utf-8") as fh:
            for li, line in enumerate(fh):
                if not line.strip():
                    continue
                row = json.loads(line)
                doc = row["input"]
                for k, (instr, out) in enumerate(zip(row["instructions"], row["outputs"], strict=False)):
                    meta: dict[str, Any] = {"leval_task": task, "evaluation": row.get("evaluation"),
                                            "source": row.get("source"), "doc_index": li}
                    reference: str | None = None
                    if kind == "multiple_choice":
                        answers, reference, extra = _mc_gold(task, instr, out)
                        meta.update(extra)
                    elif kind == "summarization":
                        answers, reference = [], out
                    else:
                        answers = [out]
                    yield Example(id=f"leval-{task}-{li}-{k}", dataset=f"leval_{task}", task=kind, context=doc,
                                  query=instr, answers=answers, reference=reference, metadata=meta)


# -- LongBench multi_news -------------------------------------------------------------------

_PASSAGE = re.compile(r"(?:^|\n)Passage (\d+):\n")


def _load_multi_news(spec: DatasetSpec, root: Path) -> Iterator[Example]:
    path = root / "longbench_multi_news" / "multi_news.jsonl"
    if not path.is_file():
        raise ConfigError(f"dataset file not found: {path}")
    query = spec.options.get("query") or None
    with path.open(encoding="utf-8") as fh:
        for li, line in enumerate(fh):
            if not line.strip():
                continue
            row = json.loads(line)
            text = re.sub(r"\s*NEWLINE_CHAR\s*", "\n", row["context"])  # LongBench's newline placeholder
            parts = _PASSAGE.split(text)
            docs: list[Document] = []
            if len(parts) >= 3:
                for num, body in zip(parts[1::2], parts[2::2], strict=False):
                    if body.strip():
                        docs.append(Document(id=f"passage{num}", text=body.strip()))
            if not docs:
                docs = [Document(id="0", text=text.strip())]
            yield Example(id=f"multi_news-{row.get('_id', li)}", dataset="multi_news", task="summarization",
                          context=docs, query=query, reference=row["answers"][0].lstrip("– ").strip(),
                          metadata={"n_docs": len(docs), "length": row.get("length")})


# -- key-value retrieval ---------------------------------------------------------------------


def _load_kv(spec: DatasetSpec, root: Path) -> Iterator[Example]:
    keys = spec.get_int("keys", 75)
    path = root / "lost_in_the_middle" / f"kv-retrieval-{keys}_keys.jsonl.gz"
    rows = _read_gz_jsonl(path)
    for li, row in enumerate(rows):
        records = row["ordered_kv_records"]
        lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in records]
        context = "{\n" + ",\n".join(lines) + "\n}"
        gold = next((i for i, (k, _) in enumerate(records) if k == row["key"]), -1)
        yield Example(
            id=f"kv{keys}-{li}", dataset=f"kv{keys}", task="retrieval", context=context,
            query=f'Extract the value for key "{row["key"]}".', answers=[row["value"]],
            metadata={"n_keys": len(records), "gold_index": gold, "gold_position": gold / max(len(records) - 1, 1)},
        )


register_dataset("nq_mixed", _load_nq_mixed, options=("docs", "hard", "seed"))
register_dataset("squad_articles", _load_squad_articles, options=("window", "seed", "unanswerable"))
register_dataset("leval", _load_leval, options=("tasks",), positional=True)
register_dataset("multi_news", _load_multi_news, options=("query",))
register_dataset("kv", _load_kv, options=("keys",))
register_dataset("jsonl", _load_jsonl, options=("path", "task", "dataset"), positional=True, root=False)
