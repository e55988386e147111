"""Label tables: label records -> context / per-factor feature dicts -> design matrices.

A design matrix has one row per input x factor (row-major: all factors of input 0 first) and one
column per feature name; a feature missing from both the factor's and the context's dict is NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from pocsdk.calibration.labels import LabelRecord
from pocsdk.errors import LabelsError
from pocsdk.prediction.artifacts import TrainingSummary
from pocsdk.prediction.features import task_code


def record_factor_features(rec: LabelRecord) -> list[dict[str, float]]:
    """Per-factor features of a record, with factor / achieved-factor columns always filled in."""
    out: list[dict[str, float]] = []
    for i, (f, a) in enumerate(zip(rec.factors, rec.achieved_factors, strict=False)):
        ff = dict(rec.factor_features[i]) if rec.factor_features else {}
        f = max(float(f), 1.0)
        a = max(float(a), 1.0) if math.isfinite(a) else 1e6
        ff.setdefault("factor", f)
        ff.setdefault("log_factor", math.log(f))
        ff.setdefault("achieved_factor", a)
        ff.setdefault("log_achieved_factor", math.log(a))
        ff.setdefault("keep_rate", 1.0 / a)
        out.append(ff)
    return out


def record_context(rec: LabelRecord) -> dict[str, float]:
    """Context features of a record; the task code always follows the record's task."""
    ctx = dict(rec.context_features)
    ctx["task_code"] = float(task_code(rec.task))
    return ctx


def design_matrix(context: Sequence[Mapping[str, float]], per_factor: Sequence[Sequence[Mapping[str, float]]],
                  names: Sequence[str]) -> np.ndarray:
    """Rows example x factor (row-major: all factors of input 0 first); missing features are NaN."""
    n_rows = sum(len(p) for p in per_factor)
    m = np.full((n_rows, len(names)), np.nan)
    r = 0
    for ctx, pf in zip(context, per_factor, strict=False):
        ctx_vals = [ctx.get(n) for n in names]
        for ff in pf:
            for j, name in enumerate(names):
                v = ff.get(name, ctx_vals[j])
                if v is not None:
                    m[r, j] = v
            r += 1
    return m


def column_matrix(context: Mapping[str, float], columns: Mapping[str, np.ndarray], names: Sequence[str],
                  rows: int) -> np.ndarray:
    """:func:`design_matrix` of one input whose per-factor features are arrays (``rows`` factors long)."""
    m = np.empty((rows, len(names)))
    per_factor = [j for j, name in enumerate(names) if name in columns]
    shared = [j for j, name in enumerate(names) if name not in columns]
    if per_factor:
        m[:, per_factor] = np.stack([columns[names[j]] for j in per_factor], axis=1)
    if shared:  # the same value on every row (NaN when the context lacks it)
        m[:, shared] = [np.nan if (v := context.get(names[j])) is None else v for j in shared]
    return m


def training_rows(records: Sequence[LabelRecord], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, example_index)`` with one row per example x factor."""
    if not records:
        raise LabelsError("no label records to learn from")
    ctx = [record_context(r) for r in records]
    pf = [record_factor_features(r) for r in records]
    x = design_matrix(ctx, pf, names)
    y = np.concatenate([np.clip(np.asarray(r.performance, dtype=np.float64), 0.0, 1.0) for r in records])
    idx = np.concatenate([np.full(len(r.factors), i) for i, r in enumerate(records)])
    return x, y, idx


def summarize(records: Sequence[LabelRecord], groups: Sequence[str] | None = None) -> TrainingSummary:
    """What a predictor was trained on, for its card (``groups``: the units its weights balanced)."""
    factors = sorted({float(f) for r in records for f in r.factors})
    perf = [p for r in records for p in r.performance]
    return TrainingSummary(
        examples=len(records),
        rows=sum(len(r.factors) for r in records),
        datasets=dict(Counter(r.dataset for r in records)),
        tasks=dict(Counter(r.task for r in records)),
        judges=sorted({r.judge for r in records}),
        factors=factors,
        mean_performance=float(np.mean(perf)) if perf else None,
        groups=dict(Counter(groups)) if groups is not None else {},
    )


def dataset_weights(records: Sequence[LabelRecord]) -> np.ndarray:
    """Per-example weights giving every dataset the same total weight (mean weight 1)."""
    return group_weights([r.dataset for r in records])


def group_weights(groups: Sequence[str]) -> np.ndarray:
    """Per-example weights giving every group the same total weight (mean weight 1).

    Balance over the units a new task is drawn like: a labels file (``nq_mixed``, ``leval``) rather
    than each of its sub-datasets, or LEval's 15 sub-tasks would carry 15 times the weight of NQ.
    """
    if not len(groups):
        raise LabelsError("no label records to weight")
    counts = Counter(groups)
    w = np.array([1.0 / counts[g] for g in groups])
    return w * len(groups) / w.sum()


ALWAYS_FILLED = frozenset({"factor", "log_factor", "achieved_factor", "log_achieved_factor", "keep_rate", "task_code"})
"""Features :func:`record_context` / :func:`record_factor_features` fill in for every record."""


def check_features(records: Sequence[LabelRecord], names: Sequence[str]) -> None:
    """Refuse to learn from records that lack a feature the model uses (labels made by an older pocsdk):
    the trees would learn a "missing" branch that never occurs when the floor search computes it."""
    needed = set(names) - ALWAYS_FILLED
    counts: Counter[str] = Counter()
    for r in records:
        have = set(r.context_features) | (set(r.factor_features[0]) if r.factor_features else set())
        counts.update(needed - have)
    if counts:
        missing = ", ".join(f"{n} ({c} records)" for n, c in sorted(counts.items()))
        raise LabelsError(f"labels lack features the model uses: {missing}; regenerate them with `pocsdk calibrate` "
                          "or pass features=[...] without them")


def check_groups(records: Sequence[LabelRecord], groups: Sequence[str] | None) -> list[str] | None:
    """``groups`` as a list, checked to name one group per record."""
    if groups is None:
        return None
    out = [str(g) for g in groups]
    if len(out) != len(records):
        raise LabelsError(f"groups must name one group per record: {len(out)} groups for {len(records)} records")
    return out


def single_compressor(records: Sequence[LabelRecord], compressor: str | None) -> str:
    """The one compressor the records are for (``compressor`` if given, checked against them)."""
    names = sorted({r.compressor for r in records})
    if not names:
        raise LabelsError("no label records to fit on (too few examples for the split asked for?)")
    if compressor is not None:
        if any(n != compressor for n in names):
            raise LabelsError(f"labels are for compressors {names}, not only {compressor!r}")
        return compressor
    if len(names) != 1:
        raise LabelsError(f"labels mix compressors {names}: train one predictor per compressor")
    return names[0]
