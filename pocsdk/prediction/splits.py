"""Label data for evaluation: reading labels files as datasets, the common factor grid, and the splits.

Every split keeps the questions on one document (an L-Eval book, a SQuAD article) on one side, so held-out
numbers measure documents the predictor has not seen.
"""

from __future__ import annotations

import os
import random
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pocsdk.calibration.labels import LabelRecord, read_labels
from pocsdk.errors import LabelsError, LabelsWarning


def read_label_files(paths: Sequence[str | Path]) -> tuple[list[LabelRecord], list[str]]:
    """Every record of ``paths`` and, per record, its dataset: the labels file (see :func:`dataset_names`).

    The same file given twice (overlapping globs) or one id twice in a file is refused: either would
    count examples twice and make a calibration promise more than its data support.
    """
    names = dataset_names(paths)
    records: list[LabelRecord] = []
    sources: list[str] = []
    for p, name in zip(paths, names, strict=True):
        seen: set[str] = set()
        for r in read_labels(p):
            if r.id in seen:
                raise LabelsError(f"{p}: id {r.id!r} appears twice; each example must be labelled once")
            seen.add(r.id)
            records.append(r)
            sources.append(name)
    if not records:
        raise LabelsError("no label records in " + ", ".join(str(p) for p in paths))
    return records, sources


def dataset_names(paths: Sequence[str | Path]) -> list[str]:
    """One dataset name per labels file: its name up to the first dot (``nq.labels.jsonl`` -> ``nq``);
    where two would clash, the name without its extension (``nq.dev``, ``nq.test``), then with the
    folders above it (``nq/labels`` and ``squad/labels``). Names come from the paths as given, so a
    labels file that is a symlink into a blob store keeps its own name.
    """
    given = [Path(p) for p in paths]
    resolved = [p.resolve() for p in given]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            raise LabelsError(f"labels file {paths[i]} is given twice")

    def unique(names: list[str]) -> bool:
        return len(set(names)) == len(names)

    names = [p.name.split(".")[0] for p in given]
    if unique(names):
        return names
    names = [p.name.removesuffix(".gz").removesuffix(".jsonl") for p in given]
    absolute = [Path(os.path.abspath(p)) for p in given]
    for depth in range(1, max(len(a.parts) for a in absolute) + 1):
        if unique(names):
            return names
        names = ["/".join([*a.parent.parts[-depth:], n.rsplit("/", 1)[-1]]) for a, n in zip(absolute, names,
                                                                                               strict=True)]
    return names if unique(names) else [str(a) for a in absolute]


def load_records(paths: Sequence[str | Path]) -> list[LabelRecord]:
    return read_label_files(paths)[0]


def load_records_with_sources(paths: Sequence[str | Path]) -> tuple[list[LabelRecord], list[str]]:
    """Records on the common grid and, per record, its dataset for cross-dataset work: its labels file.

    A labels file is the exchangeable unit (e.g. LEval's 14 sub-tasks stay together).
    """
    records, sources = read_label_files(paths)
    kept, _ = common_grid(records)
    keep = {id(r) for r in kept}
    return kept, [s for r, s in zip(records, sources, strict=True) if id(r) in keep]


def common_grid(records: Sequence[LabelRecord]) -> tuple[list[LabelRecord], list[float]]:
    """Keep the records on the most common (ascending) factor grid; warn about the others."""
    grids = Counter(tuple(float(f) for f in r.factors) for r in records)
    grid = grids.most_common(1)[0][0]
    kept = [r for r in records if tuple(float(f) for f in r.factors) == grid]
    if list(grid) != sorted(grid):
        raise LabelsError("factor grids must be ascending")
    if len(kept) < len(records):
        warnings.warn(f"{len(records) - len(kept)} of {len(records)} label records are on another factor grid "
                      f"than the most common one ({', '.join(f'{f:g}' for f in grid)}) and are left out",
                      LabelsWarning, stacklevel=2)
    return kept, list(grid)


def arrays(records: Sequence[LabelRecord]) -> tuple[np.ndarray, np.ndarray]:
    """``(actual, achieved)`` as ``(n, n_factors)`` arrays.

    Achieved factors are capped at twice the requested factor: a compressor that keeps (almost)
    nothing of a tiny input reaches an "infinite" factor that would swamp every mean.
    """
    actual = np.clip(np.array([r.performance for r in records], dtype=np.float64), 0.0, 1.0)
    achieved = np.array(
        [[min(a, 2.0 * f) for a, f in zip(r.achieved_factors, r.factors, strict=False)] for r in records],
        dtype=np.float64,
    )
    return actual, achieved


def document_key(record: LabelRecord, source: str = "") -> str:
    """The document a record asks about: questions on one document (an L-Eval book, a SQuAD article) share
    it, and a split that puts them on both sides measures questions on documents the model has seen."""
    meta = record.metadata
    if meta.get("doc_index") is not None:
        return f"{source}|{record.dataset}|{meta.get('leval_task', '')}|doc {meta['doc_index']}"
    if isinstance(meta.get("title"), str) and meta["title"]:
        return f"{source}|{record.dataset}|title {meta['title']}"
    return f"{source}|{record.dataset}|id {record.id}"


def group_split(records: Sequence[LabelRecord], rng: random.Random, share: float,
                key: Callable[[LabelRecord], str] = document_key) -> tuple[list[LabelRecord], list[LabelRecord]]:
    """(rest, held): whole documents drawn at random into ``held`` until it holds ``share`` of the records
    (at least one record; order within each side as in ``records``). A document that would push ``held`` more
    than 10% past its share is passed over, so one big document cannot take most of the data; when documents
    that large are all there is, the records are split instead, with a warning."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(key(r), []).append(i)
    names = sorted(groups)
    rng.shuffle(names)
    target = max(1, round(share * len(records)))
    limit = target + max(1, round(0.1 * target))
    held: set[int] = set()
    for name in names:
        if len(held) >= target:
            break
        if len(held) + len(groups[name]) <= limit:
            held.update(groups[name])
    if len(records) > 1 and not (0.5 * target <= len(held) < len(records)):
        warnings.warn(f"{len(groups)} documents cannot hold out {share:.0%} of {len(records)} inputs whole: "
                      "split by input instead (questions on one document may fall on both sides)",
                      LabelsWarning, stacklevel=2)
        order = list(range(len(records)))
        rng.shuffle(order)
        held = set(order[:min(target, len(records) - 1)])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def few_shot_split(records: Sequence[LabelRecord], shots: int, rng: random.Random,
                   key: Callable[[LabelRecord], str] = document_key) -> tuple[list[LabelRecord], list[LabelRecord]]:
    """(rest, shots): ``shots`` inputs drawn at random, as a user labels examples of a task, and the inputs on
    other documents to score them on (none shares a document with a shot). When the shots touch so many of the
    documents that fewer than a quarter of the inputs would remain, whole documents are drawn as shots instead."""
    order = list(range(len(records)))
    rng.shuffle(order)
    picked = [records[i] for i in order[:shots]]
    touched = {key(r) for r in picked}
    rest = [records[i] for i in order[shots:] if key(records[i]) not in touched]
    if len(rest) >= max(1, len(records) // 4):
        return rest, picked
    return group_split(records, rng, shots / len(records), key=key)


def split_fit_cal(records: Sequence[LabelRecord], rng: random.Random,
                  cal_share: float = 0.25) -> tuple[list[LabelRecord], list[LabelRecord]]:
    """Fit and calibration sets, split by document (residuals on seen documents would promise too much)."""
    return group_split(records, rng, cal_share)
