"""Offline evaluation of predictors and of the floor decision, from calibration labels.

Everything here runs on label records (which carry the features and the actual relative
performance at every grid factor), so no LLM is called. For a test set and a floor it
simulates each method's decision and reports:

* ``mae``: mean absolute error of predicted vs actual relative performance (predictors only);
* ``meet``: share of inputs whose actual performance at the chosen factor reaches the floor
  (a pass-through always does);
* ``factor``: mean achieved compression factor (1.0 on pass-through);
* ``of_oracle``: ``factor`` divided by the oracle's mean factor;
* ``kept``: mean share of the tokens kept (1 / achieved factor; 1.0 on pass-through), what the
  LLM still reads and the user still pays for;
* ``of_oracle_saving``: tokens saved (``1 - kept``) as a share of the oracle's saving. The mean factor
  rewards pushing easy inputs from 12x to 20x, which saves few tokens; this column weighs the
  saving itself.

Methods: ``fixed`` (one factor for all inputs: the largest at which at least ``confidence`` of the
training inputs meet the floor), ``agnostic``, ``lightgbm``, ``mlp`` (point predictions, no margin),
``agnostic+cal`` and ``lightgbm+cal`` (with the conformal margin at ``confidence``), and ``oracle``
(per input the most aggressive grid factor that actually meets the floor).

Splits: ``random`` (test 25%; the rest is split 75/25 into fit and calibration; every split keeps
the questions on one document, an L-Eval book or a SQuAD article, on one side: :func:`document_key`) and
``lodo`` (leave one dataset out: train and calibrate on the others, test on the held-out one).

Leave-one-dataset-out is nested for the cross-dataset calibration (``+xcal`` rows, what ships):
hold out test dataset T; on the remaining datasets run :func:`cross_dataset_calibration` (an inner
leave-one-dataset-out); fit the final predictor on all remaining datasets; apply both to T. T is
never seen by the predictor nor by the calibration. ``+xcal`` uses the margin rule,
``+xcal-tradeoff`` the trade-off rule (the ``FloorPolicy`` default); ``+xcal-pooled[-tradeoff]``
use the same out-of-dataset tables pooled over datasets (``per_dataset=False``: the promise on
average over datasets rather than on each).

For each held-out dataset, ``few_shot`` examples of it are also used as the calibration set of that
final predictor (``lightgbm+fewshot``, ``-tradeoff``) and compared with ``lightgbm+xcal`` (and the
holdout ``lightgbm+cal``) on the remaining examples (split ``fewshot``).
"""

from __future__ import annotations

import functools
import json
import random
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pocsdk.calibration.labels import LabelRecord
from pocsdk.errors import LabelsError, LabelsWarning
from pocsdk.prediction.conformal import Calibration, cross_dataset_calibration, fit_calibration
from pocsdk.prediction.decision import PASSTHROUGH, choose, choose_tradeoff, outcome
from pocsdk.prediction.predictors import (
    ContextAgnosticPredictor,
    LightGBMPredictor,
    MLPPredictor,
    Predictor,
)
from pocsdk.prediction.report import (
    METHODS,
    OF_ORACLE_NOTE,
    EvalReport,
    EvalRow,
    per_dataset_floor,
    plot_report,
    table,
    to_markdown,
)
from pocsdk.prediction.splits import (
    arrays,
    common_grid,
    dataset_names,
    document_key,
    few_shot_split,
    group_split,
    load_records,
    load_records_with_sources,
    read_label_files,
    split_fit_cal,
)

DEFAULT_FLOORS: tuple[float, ...] = (0.8, 0.9, 0.95)
CURVE_FLOORS: tuple[float, ...] = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))
XCAL_KINDS = ("agnostic", "lightgbm")


# -- methods -------------------------------------------------------------------------------
def fixed_factor_index(actual: np.ndarray, factors: Sequence[float], floor: float, confidence: float) -> int:
    """Largest grid index at which at least ``confidence`` of inputs meet the floor (-1: none above 1)."""
    meet = (actual >= floor - 1e-9).mean(axis=0)
    ok = [j for j, f in enumerate(factors) if f > 1.0 and meet[j] >= confidence]
    return max(ok) if ok else PASSTHROUGH


def oracle_index(actual: np.ndarray, factors: Sequence[float], floor: float) -> np.ndarray:
    return choose(actual, factors, floor, 0.0)


class Oracle(NamedTuple):
    """The oracle's mean factor and mean kept share: the denominators of the ``of_oracle*`` columns."""

    factor: float
    kept: float


def oracle_summary(actual: np.ndarray, achieved: np.ndarray, idx: np.ndarray) -> Oracle:
    _, fac = outcome(actual, achieved, idx)
    return Oracle(float(fac.mean()), float((1.0 / fac).mean()))


def _saving_share(kept: float, oracle_kept: float) -> float:
    return (1.0 - kept) / (1.0 - oracle_kept) if oracle_kept < 1.0 - 1e-12 else 0.0


def _row(split: str, fold: str, method: str, floor: float, confidence: float, idx: np.ndarray,
         actual: np.ndarray, achieved: np.ndarray, oracle: Oracle, mae: float | None = None,
         margin: float | None = None) -> EvalRow:
    perf, fac = outcome(actual, achieved, idx)
    mean_factor = float(fac.mean())
    kept = float((1.0 / fac).mean())
    return EvalRow(
        split=split, fold=fold, method=method, floor=floor, confidence=confidence, n=int(actual.shape[0]),
        mae=mae, meet=float((perf >= floor - 1e-9).mean()), factor=mean_factor,
        of_oracle=mean_factor / oracle.factor if oracle.factor > 0 else 0.0,
        kept=kept, of_oracle_saving=_saving_share(kept, oracle.kept),
        passthrough=float((idx == PASSTHROUGH).mean()), margin=margin,
    )


def task_margins(cal: Calibration, records: Sequence[LabelRecord], floor: float, confidence: float) -> np.ndarray:
    """Per-record margins: the record's task table when the calibration has one, else the pooled one."""
    return np.array([cal.margin(floor, confidence, task=r.task) for r in records])


def task_weights(cal: Calibration, records: Sequence[LabelRecord], floor: float, confidence: float) -> np.ndarray:
    """Per-record trade-off weights, chosen as :func:`task_margins` chooses margins (the floor search's rule)."""
    return np.array([cal.weight(floor, confidence, task=r.task) for r in records])


def fit_all(fit: Sequence[LabelRecord], seed: int = 0, kinds: Sequence[str] = ("agnostic", "lightgbm", "mlp"),
            source: Callable[[LabelRecord], str] | None = None) -> dict[str, Predictor]:
    """Fit each kind on ``fit``; ``source`` names each record's labels file, the unit training balances."""
    groups = [source(r) for r in fit] if source is not None else None
    made: dict[str, Predictor] = {}
    for kind in kinds:
        if kind == "agnostic":
            made[kind] = ContextAgnosticPredictor().fit(fit, groups=groups)
        elif kind == "lightgbm":
            made[kind] = LightGBMPredictor(seed=seed).fit(fit, groups=groups)
        elif kind == "mlp":
            made[kind] = MLPPredictor(seed=seed).fit(fit, groups=groups)
    return made


def evaluate_fold(split: str, fold: str, train: Sequence[LabelRecord], test: Sequence[LabelRecord],
                  factors: Sequence[float], floors: Sequence[float], confidence: float, seed: int,
                  kinds: Sequence[str] = ("agnostic", "lightgbm", "mlp"),
                  extra_cal: dict[str, Calibration] | None = None,
                  source: Callable[[LabelRecord], str] | None = None,
                  ) -> tuple[list[EvalRow], dict[str, np.ndarray], dict[str, Predictor], dict[str, Calibration]]:
    """Fit on ``train`` (75/25 fit/calibration), evaluate every method on ``test``."""
    rng = random.Random(seed)
    fit, cal = split_fit_cal(train, rng)
    preds = fit_all(fit, seed, kinds, source)
    cals: dict[str, Calibration] = {k: fit_calibration(preds[k], cal) for k in ("agnostic", "lightgbm") if k in preds}
    cals.update(extra_cal or {})
    actual, achieved = arrays(test)
    train_actual, _ = arrays(train)
    test_pred = {k: np.stack(p.predict_records(test)) for k, p in preds.items()}
    rows: list[EvalRow] = []
    for floor in floors:
        o_idx = oracle_index(actual, factors, floor)
        oracle = oracle_summary(actual, achieved, o_idx)
        fi = fixed_factor_index(train_actual, factors, floor, confidence)
        rows.append(_row(split, fold, "fixed", floor, confidence, np.full(len(test), fi), actual, achieved, oracle))
        for k, pm in test_pred.items():
            mae = float(np.abs(pm - actual).mean())
            rows.append(_row(split, fold, k, floor, confidence, choose(pm, factors, floor, 0.0), actual, achieved,
                             oracle, mae=mae, margin=0.0))
        for k, c in cals.items():
            base = k.split("+")[0]
            margin = task_margins(c, test, floor, confidence)
            name = k if "+" in k else f"{k}+cal"
            rows.append(_row(split, fold, name, floor, confidence, choose(test_pred[base], factors, floor, margin),
                             actual, achieved, oracle, mae=float(np.abs(test_pred[base] - actual).mean()),
                             margin=float(margin.mean())))
            weights = task_weights(c, test, floor, confidence)
            rows.append(_row(split, fold, f"{base}+tradeoff", floor, confidence,
                             choose_tradeoff(test_pred[base], factors, weights), actual, achieved, oracle,
                             mae=float(np.abs(test_pred[base] - actual).mean())))
        rows.append(_row(split, fold, "oracle", floor, confidence, o_idx, actual, achieved, oracle))
    return rows, test_pred, preds, cals


def _fit_one(records: list[LabelRecord], kind: str, seed: int,
             source: Callable[[LabelRecord], str] | None = None) -> Predictor:
    return fit_all(records, seed, [kind], source)[kind]


def xcal_fold(split: str, fold: str, train: Sequence[LabelRecord], train_sources: Sequence[str],
              test: Sequence[LabelRecord], factors: Sequence[float], floors: Sequence[float], confidence: float,
              seed: int, kinds: Sequence[str] = XCAL_KINDS, source: Callable[[LabelRecord], str] | None = None,
              ) -> tuple[list[EvalRow], dict[str, Predictor], dict[str, Calibration]]:
    """Cross-dataset calibration on ``train`` (inner leave-one-dataset-out), final fit on all of ``train``.

    Rows ``<kind>+xcal`` (margin rule) and ``<kind>+xcal-tradeoff`` on ``test``, which neither saw.
    """
    actual, achieved = arrays(test)
    preds: dict[str, Predictor] = {}
    cals: dict[str, Calibration] = {}
    rows: list[EvalRow] = []
    for kind in kinds:
        preds[kind] = fit_all(train, seed, [kind], source)[kind]
        cals[kind] = cross_dataset_calibration(train, functools.partial(_fit_one, kind=kind, seed=seed, source=source),
                                               sources=train_sources, predictor=preds[kind])
    for kind in kinds:
        pm = np.stack(preds[kind].predict_records(test))
        mae = float(np.abs(pm - actual).mean())
        # same out-of-dataset tables, pooled over datasets instead of required on each (per_dataset=False)
        pooled = cals[kind].model_copy(update={"per_dataset": False})
        for floor in floors:
            oracle = oracle_summary(actual, achieved, oracle_index(actual, factors, floor))
            for suffix, cal in (("xcal", cals[kind]), ("xcal-pooled", pooled)):
                m = task_margins(cal, test, floor, confidence)
                rows.append(_row(split, fold, f"{kind}+{suffix}", floor, confidence, choose(pm, factors, floor, m),
                                 actual, achieved, oracle, mae=mae, margin=float(m.mean())))
                w = task_weights(cal, test, floor, confidence)
                rows.append(_row(split, fold, f"{kind}+{suffix}-tradeoff", floor, confidence,
                                 choose_tradeoff(pm, factors, w), actual, achieved, oracle, mae=mae))
    return rows, preds, cals


def pooled_rows(rows: Sequence[EvalRow], split: str) -> list[EvalRow]:
    """Pool per-fold rows (weighted by n) into ``fold='all'`` rows."""
    out: list[EvalRow] = []
    keys = sorted({(r.method, r.floor) for r in rows if r.split == split}, key=lambda k: (k[1], k[0]))
    for method, floor in keys:
        rs = [r for r in rows if r.split == split and r.method == method and r.floor == floor]
        n = sum(r.n for r in rs)
        oracle = [r for r in rows if r.split == split and r.method == "oracle" and r.floor == floor]
        o_factor = sum(r.factor * r.n for r in oracle) / max(sum(r.n for r in oracle), 1)
        factor = sum(r.factor * r.n for r in rs) / n
        kept = _pooled(rs, "kept")
        o_kept = _pooled(oracle, "kept")
        maes = [r for r in rs if r.mae is not None]
        out.append(EvalRow(
            split=split, fold="all", method=method, floor=floor, confidence=rs[0].confidence, n=n,
            mae=sum(r.mae * r.n for r in maes if r.mae is not None) / sum(r.n for r in maes) if maes else None,
            meet=sum(r.meet * r.n for r in rs) / n, factor=factor, of_oracle=factor / o_factor if o_factor else 0.0,
            kept=kept,
            of_oracle_saving=None if kept is None or o_kept is None else _saving_share(kept, o_kept),
            passthrough=sum(r.passthrough * r.n for r in rs) / n,
        ))
    return out


def _pooled(rows: Sequence[EvalRow], field: str) -> float | None:
    """n-weighted mean of an optional column (None when a row lacks it, e.g. an old report)."""
    vals = [(getattr(r, field), r.n) for r in rows]
    if not vals or any(v is None for v, _ in vals):
        return None
    return sum(v * n for v, n in vals) / sum(n for _, n in vals)


def evaluate_records(records: Sequence[LabelRecord], *, floors: Sequence[float] = DEFAULT_FLOORS,
                     confidence: float = 0.9, few_shot: int = 50, seed: int = 0,
                     kinds: Sequence[str] = ("agnostic", "lightgbm", "mlp"),
                     plots_dir: Path | None = None,
                     source: Callable[[LabelRecord], str] | None = None,
                     lodo_kinds: Sequence[str] | None = None) -> EvalReport:
    """Full protocol (see the module docstring).

    ``source`` names the dataset a record belongs to for leave-one-dataset-out (default: its
    ``dataset`` field; :func:`evaluate_files` uses the labels file, so that the sub-tasks of one
    benchmark such as LEval are held out together). Training balances the same units.
    """
    src = source or (lambda r: r.dataset)
    lodo_k = list(kinds if lodo_kinds is None else [k for k in lodo_kinds if k in kinds])
    compressors = sorted({r.compressor for r in records})
    if len(compressors) != 1:
        raise LabelsError(f"evaluate one compressor at a time; labels hold {compressors}")
    recs, factors = common_grid(records)
    datasets = dict(Counter(src(r) for r in recs))
    report = EvalReport(compressor=compressors[0], examples=len(recs), datasets=datasets, factors=factors,
                        floors=list(floors), confidence=confidence, few_shot=few_shot)
    rng = random.Random(seed)

    # random split, by document: questions on one document stay on one side
    train, test = group_split(recs, rng, 0.25, key=lambda r: document_key(r, src(r)))
    rows, test_pred, preds, cals = evaluate_fold("random", "all", train, test, factors, floors, confidence, seed,
                                                 kinds, source=src)
    report.rows.extend(rows)
    report.curves = _curves(test_pred, cals, test, factors, confidence, arrays(train)[0])

    # leave one dataset out
    lodo: list[EvalRow] = []
    if len(datasets) >= 2:
        for ds in sorted(datasets):
            held = [r for r in recs if src(r) == ds]
            rest = [r for r in recs if src(r) != ds]
            try:
                rows_ds, _, preds_ds, cals_ds = evaluate_fold("lodo", ds, rest, held, factors, floors, confidence,
                                                              seed, lodo_k, source=src)
            except (LabelsError, ValueError) as exc:  # e.g. the other datasets hold too few records to fit on
                warnings.warn(f"leave-one-dataset-out: fold {ds!r} skipped ({exc})", LabelsWarning, stacklevel=2)
                continue
            lodo.extend(rows_ds)
            rest_src = [src(r) for r in rest]
            xk = [k for k in XCAL_KINDS if k in lodo_k]
            xpreds: dict[str, Predictor] = {}
            xcals: dict[str, Calibration] = {}
            if len(set(rest_src)) >= 3 and xk:
                xrows, xpreds, xcals = xcal_fold("lodo", ds, rest, rest_src, held, factors, floors, confidence, seed,
                                                 xk, source=src)
                lodo.extend(xrows)
            if few_shot and len(held) > few_shot + 10 and "lightgbm" in preds_ds:
                rest_ds, shot = few_shot_split(held, few_shot, random.Random(seed + 1),
                                               key=lambda r: document_key(r, src(r)))
                final = xpreds.get("lightgbm", preds_ds["lightgbm"])
                fs_cal = fit_calibration(final, shot, method="few_shot")
                a2, ach2 = arrays(rest_ds)
                pm_cal = np.stack(preds_ds["lightgbm"].predict_records(rest_ds))
                pm = np.stack(final.predict_records(rest_ds))
                cases: list[tuple[str, Calibration, np.ndarray]] = [("lightgbm+cal", cals_ds["lightgbm"], pm_cal)]
                if "lightgbm" in xcals:
                    cases.append(("lightgbm+xcal", xcals["lightgbm"], pm))
                cases.append(("lightgbm+fewshot", fs_cal, pm))
                for floor in floors:
                    o_idx = oracle_index(a2, factors, floor)
                    oracle = oracle_summary(a2, ach2, o_idx)
                    for name, cal, p in cases:
                        m = task_margins(cal, rest_ds, floor, confidence)
                        lodo.append(_row("fewshot", ds, name, floor, confidence, choose(p, factors, floor, m),
                                         a2, ach2, oracle, margin=float(m.mean())))
                        w = task_weights(cal, rest_ds, floor, confidence)
                        tname = "lightgbm+tradeoff" if name == "lightgbm+cal" else f"{name}-tradeoff"
                        lodo.append(_row("fewshot", ds, tname, floor, confidence, choose_tradeoff(p, factors, w),
                                         a2, ach2, oracle))
                    lodo.append(_row("fewshot", ds, "oracle", floor, confidence, o_idx, a2, ach2, oracle))
        report.rows.extend(lodo)
        report.rows.extend(pooled_rows(lodo, "lodo"))
        if any(r.split == "fewshot" for r in lodo):
            report.rows.extend(pooled_rows(lodo, "fewshot"))
    report.markdown = to_markdown(report)
    if plots_dir is not None:
        plot_report(report, recs, test, test_pred, preds, plots_dir, src)
    return report


def _curves(test_pred: dict[str, np.ndarray], cals: dict[str, Calibration], test: Sequence[LabelRecord],
            factors: Sequence[float], confidence: float,
            train_actual: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """Share meeting the floor and mean factor over :data:`CURVE_FLOORS`, decided as the table's rows are
    (per-task margins and weights)."""
    actual, achieved = arrays(test)
    out: dict[str, dict[str, list[float]]] = {}
    methods: dict[str, Any] = {"fixed": None, **{k: 0.0 for k in test_pred}, **{f"{k}+cal": k for k in cals},
                               **{f"{k}+tradeoff": k for k in cals}, "oracle": None}
    for method in methods:
        meet: list[float] = []
        fac: list[float] = []
        for floor in CURVE_FLOORS:
            if method == "fixed":
                idx = np.full(actual.shape[0], fixed_factor_index(train_actual, factors, floor, confidence))
            elif method == "oracle":
                idx = oracle_index(actual, factors, floor)
            elif method.endswith("+cal"):
                base = method.split("+")[0]
                idx = choose(test_pred[base], factors, floor, task_margins(cals[base], test, floor, confidence))
            elif method.endswith("+tradeoff"):
                base = method.split("+")[0]
                idx = choose_tradeoff(test_pred[base], factors, task_weights(cals[base], test, floor, confidence))
            else:
                idx = choose(test_pred[method], factors, floor, 0.0)
            perf, f = outcome(actual, achieved, idx)
            meet.append(float((perf >= floor - 1e-9).mean()))
            fac.append(float(f.mean()))
        out[method] = {"floor": list(CURVE_FLOORS), "meet": meet, "factor": fac}
    return out


def evaluate_files(paths: Sequence[Path], outdir: Path, *, floors: Sequence[float] = DEFAULT_FLOORS,
                   confidence: float = 0.9, few_shot: int = 50, seed: int = 0,
                   kinds: Sequence[str] = ("agnostic", "lightgbm", "mlp"), command: str = "",
                   lodo_kinds: Sequence[str] | None = None) -> EvalReport:
    """Evaluate labels (one compressor) and write ``report.json``, ``report.md`` and PNG plots to ``outdir``."""
    records, sources = read_label_files(paths)
    origin = {id(r): name for r, name in zip(records, sources, strict=True)}
    outdir.mkdir(parents=True, exist_ok=True)
    report = evaluate_records(records, floors=floors, confidence=confidence, few_shot=few_shot, seed=seed,
                              kinds=kinds, plots_dir=outdir, source=lambda r: origin.get(id(r), r.dataset),
                              lodo_kinds=lodo_kinds)
    report.command = command
    if command:
        report.markdown = f"Command: `{command}`\n\n" + report.markdown
    (outdir / "report.json").write_text(json.dumps(report.model_dump(), indent=1) + "\n", encoding="utf-8")
    (outdir / "report.md").write_text(report.markdown + "\n", encoding="utf-8")
    return report


def evaluate_predictor_files(paths: Sequence[Path], predictor_dir: Path, outdir: Path, *,
                             floors: Sequence[float] = DEFAULT_FLOORS, confidence: float = 0.9,
                             command: str = "") -> EvalReport:
    """Evaluate one trained predictor (and its ``calibration.json``, if any) on labels, without training.

    The ``fixed`` row is tuned on the same labels, so it is an optimistic reference here.
    """
    from pocsdk.prediction.floor import FloorPolicy
    from pocsdk.prediction.predictors.design import single_compressor

    recs, factors = common_grid(load_records(paths))
    # loaded as the floor search loads them: a calibration.json that vouches for another model is refused
    policy = FloorPolicy.for_compressor(single_compressor(recs, None), predictor=Path(predictor_dir))  # a Path: a
    # folder named "agnostic" is that folder, not the shipped predictor of that name
    pred, cal = policy.predictor, policy.calibration
    if cal is not None and [float(f) for f in cal.factors] != [float(f) for f in factors]:
        raise LabelsError(f"the labels' factor grid ({', '.join(f'{f:g}' for f in factors)}) differs from the "
                          f"calibration's ({', '.join(f'{f:g}' for f in cal.factors)}); the floor search refuses "
                          "this pairing, so its margins mean nothing here: label on the calibration's grid")
    actual, achieved = arrays(recs)
    pm = np.stack(pred.predict_records(recs))
    mae = float(np.abs(pm - actual).mean())
    report = EvalReport(compressor=recs[0].compressor, examples=len(recs),
                        datasets=dict(Counter(r.dataset for r in recs)), factors=factors, floors=list(floors),
                        confidence=confidence, few_shot=0, command=command)
    for floor in floors:
        o_idx = oracle_index(actual, factors, floor)
        oracle = oracle_summary(actual, achieved, o_idx)
        fi = fixed_factor_index(actual, factors, floor, confidence)
        report.rows.append(_row("given", "all", "fixed", floor, confidence, np.full(len(recs), fi), actual, achieved,
                                oracle))
        report.rows.append(_row("given", "all", pred.kind, floor, confidence, choose(pm, factors, floor, 0.0),
                                actual, achieved, oracle, mae=mae, margin=0.0))
        if cal is not None:  # per task, as the floor search decides (FloorPolicy with the record's task)
            m = task_margins(cal, recs, floor, confidence)
            report.rows.append(_row("given", "all", f"{pred.kind}+cal", floor, confidence,
                                    choose(pm, factors, floor, m), actual, achieved, oracle, mae=mae,
                                    margin=float(m.mean())))
            w = task_weights(cal, recs, floor, confidence)  # the floor search's default rule
            report.rows.append(_row("given", "all", f"{pred.kind}+tradeoff", floor, confidence,
                                    choose_tradeoff(pm, factors, w), actual, achieved, oracle, mae=mae))
        report.rows.append(_row("given", "all", "oracle", floor, confidence, o_idx, actual, achieved, oracle))
    report.curves = _curves({pred.kind: pm}, {pred.kind: cal} if cal is not None else {}, recs, factors,
                            confidence, actual)
    lines = [f"### Predictor `{predictor_dir}` on {len(recs)} labelled inputs ({report.compressor})", "",
             "*fixed* is tuned on these same labels: an optimistic reference, not a held-out result. "
             + OF_ORACLE_NOTE, ""]
    if command:
        lines = [f"Command: `{command}`", "", *lines]
    for floor in floors:
        lines += [f"**floor {floor:g}, confidence {confidence:g}**", "",
                  table([r for r in report.rows if r.floor == floor]), ""]
    report.markdown = "\n".join(lines)
    outdir.mkdir(parents=True, exist_ok=True)
    plot_report(report, recs, recs, {pred.kind: pm}, {pred.kind: pred}, outdir)
    (outdir / "report.json").write_text(json.dumps(report.model_dump(), indent=1) + "\n", encoding="utf-8")
    (outdir / "report.md").write_text(report.markdown + "\n", encoding="utf-8")
    return report


__all__ = [  # the evaluation API, with the report model and label splits it is built from
    "CURVE_FLOORS", "DEFAULT_FLOORS", "METHODS", "OF_ORACLE_NOTE", "XCAL_KINDS", "EvalReport", "EvalRow", "Oracle",
    "arrays", "common_grid", "dataset_names", "document_key", "evaluate_files", "evaluate_fold",
    "evaluate_predictor_files", "evaluate_records", "few_shot_split", "fit_all", "fixed_factor_index",
    "group_split", "load_records", "load_records_with_sources", "oracle_index", "oracle_summary",
    "per_dataset_floor", "plot_report", "pooled_rows", "read_label_files", "split_fit_cal", "table",
    "task_margins", "task_weights", "to_markdown", "xcal_fold",
]
