"""Candidate predictor features, tested before they earn a features-version change (issue 3).

Two steps. ``extract`` re-scores every labelled input with the label's compressor and writes
candidate features (relevance of what each selection drops, query-term coverage of what it keeps)
to a side file keyed by example id; the labels themselves are not touched::

    python benchmarks/feature_candidates.py extract --labels L/skim -o /tmp/cand/skim

``compare`` trains LightGBM (the shipped hyper-parameters, datasets balanced) with and without
the candidates, leave-one-dataset-out, and prints the pooled unseen MAE next to the
context-agnostic predictor's, plus a *bound*: the share of the oracle's factor reached when one
margin (or trade-off weight) is tuned on the test fold itself so that 90% of inputs meet floor 0.9.
No calibration can beat that bound, so it compares feature sets without calibration noise::

    python benchmarks/feature_candidates.py compare --labels L/skim --candidates /tmp/cand/skim

``L`` comes from ``bash benchmarks/make_labels.sh L``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocsdk.calibration.datasets import load_dataset
from pocsdk.calibration.labels import LabelRecord
from pocsdk.compressors import get_compressor
from pocsdk.prediction.decision import choose, choose_tradeoff, outcome
from pocsdk.prediction.evaluate import arrays, load_records
from pocsdk.prediction.features import MONOTONE
from pocsdk.prediction.predictors import (
    LIGHTGBM_FEATURES,
    ContextAgnosticPredictor,
    record_context,
    record_factor_features,
)
from pocsdk.text.relevance import terms

SPECS = {"nq_mixed": "nq_mixed:n=1500", "squad_articles": "squad_articles:n=600", "leval": "leval",
         "multi_news": "multi_news", "kv75": "kv:keys=75,n=200"}
"""Label file stem -> dataset spec, as in make_labels.sh."""

RELEVANCE = ("x_best_dropped_rel", "x_last_kept_rel", "x_competitors_kept")
COVERAGE = ("x_qcov_kept", "x_best_kept_unit_qcov", "x_best_dropped_unit_qcov", "x_qcov_gap")
CANDIDATE_MONOTONE = {"x_best_dropped_rel": -1, "x_competitors_kept": 1, "x_qcov_kept": 1,
                      "x_best_kept_unit_qcov": 1, "x_best_dropped_unit_qcov": -1}
FLOOR, CONFIDENCE = 0.9, 0.9


# -- extract -------------------------------------------------------------------------------
def unit_term_presence(scored: Any, query_terms: Sequence[str]) -> np.ndarray:
    """``(units, terms)`` bool: does the unit's lower-cased text contain the term."""
    u = scored.units
    spans = zip(u.doc, u.start, u.end, strict=True)
    texts = (scored.documents[int(d)].text[int(s):int(e)].lower() for d, s, e in spans)
    return np.array([[t in tx for t in query_terms] for tx in texts], dtype=bool).reshape(len(u), len(query_terms))


def candidates(compressor: Any, example: Any, factors: Sequence[float]) -> list[dict[str, float]]:
    """Candidate features of one input at each factor."""
    context = example.context if isinstance(example.context, str) else [d.model_dump() for d in example.context]
    scored = compressor.score(context, example.query)
    rel = scored.units.relevance.astype(np.float64)
    top = float(rel.max()) if rel.size else 0.0
    competitors = rel >= 0.5 * top if top > 0 else np.zeros(rel.size, dtype=bool)
    q = sorted(set(terms(example.query or "")))
    pres = unit_term_presence(scored, q)
    df = pres.sum(axis=0)
    idf = np.log1p(rel.size / np.maximum(df, 1))
    total_idf = float(idf[df > 0].sum())
    out = []
    for f in factors:
        sel = compressor.select(scored, 1.0 / max(float(f), 1.0))
        passthrough = sel.passthrough_reason is not None or scored.passthrough_reason is not None
        keep = np.ones(rel.size, dtype=bool) if passthrough else sel.keep
        drop = ~keep
        cov = (pres * idf).sum(axis=1) / total_idf if total_idf > 0 else np.zeros(rel.size)
        kept_cov = float((pres[keep].any(axis=0) * idf).sum() / total_idf) if total_idf > 0 else 0.0
        best_kept = float(cov[keep].max()) if keep.any() else 0.0
        best_drop = float(cov[drop].max()) if drop.any() else 0.0
        out.append({
            "x_best_dropped_rel": float(rel[drop].max() / top) if drop.any() and top > 0 else 0.0,
            "x_last_kept_rel": float(rel[keep].min() / top) if keep.any() and top > 0 else 0.0,
            "x_competitors_kept": float(keep[competitors].mean()) if competitors.any() else 1.0,
            "x_qcov_kept": kept_cov,
            "x_best_kept_unit_qcov": best_kept,
            "x_best_dropped_unit_qcov": best_drop,
            "x_qcov_gap": best_kept - best_drop,
        })
    return out


def extract(labels: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stem, spec in SPECS.items():
        recs = {r.id: r for r in load_records([labels / f"{stem}.jsonl"])}
        if not recs:
            continue
        compressor = get_compressor(next(iter(recs.values())).compressor)
        with (out / f"{stem}.jsonl").open("w", encoding="utf-8") as fh:
            for ex in load_dataset(spec):
                if ex.id in recs:
                    fh.write(json.dumps({"id": ex.id, "per": candidates(compressor, ex, recs[ex.id].factors)}) + "\n")
        print(f"{stem}: {len(recs)} inputs")


# -- compare -------------------------------------------------------------------------------
def design(recs: Sequence[LabelRecord], cand: dict[str, list[dict[str, float]]], names: Sequence[str]) -> np.ndarray:
    rows = []
    for r in recs:
        ctx = record_context(r)
        for ff, xx in zip(record_factor_features(r), cand[r.id], strict=True):
            row = {**ctx, **ff, **xx}
            rows.append([row.get(n, math.nan) for n in names])
    return np.array(rows, dtype=np.float64)


def fit_predict(x: np.ndarray, y: np.ndarray, groups: np.ndarray, tr: np.ndarray, te: np.ndarray, k: int,
                names: Sequence[str]) -> np.ndarray:
    import lightgbm as lgb

    w = np.zeros(groups.size)
    for g in np.unique(groups[tr]):
        sel = tr[groups[tr] == g]
        w[sel] = 1.0 / sel.size
    rows_tr = (tr[:, None] * k + np.arange(k)).reshape(-1)
    rows_te = (te[:, None] * k + np.arange(k)).reshape(-1)
    params = {"objective": "cross_entropy", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 20,
              "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
              "monotone_constraints": [MONOTONE.get(n, CANDIDATE_MONOTONE.get(n, 0)) for n in names],
              "monotone_constraints_method": "advanced", "num_threads": 1, "seed": 0, "deterministic": True,
              "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x[rows_tr], label=y[rows_tr], weight=np.repeat(w[tr], k)), 300)
    pred = booster.predict(x[rows_te]).reshape(te.size, k)
    return np.asarray(np.minimum.accumulate(pred, axis=1))


def bound(pred: np.ndarray, actual: np.ndarray, achieved: np.ndarray, factors: Sequence[float]) -> tuple[float, float]:
    """Share of the oracle's factor at the loosest margin / weight that still meets the floor on 90% of inputs."""
    oracle = float(outcome(actual, achieved, choose(actual, factors, FLOOR))[1].mean())

    def first_ok(decisions: Any) -> float:
        for idx in decisions:
            perf, fac = outcome(actual, achieved, idx)
            if (perf >= FLOOR - 1e-9).mean() >= CONFIDENCE:
                return float(fac.mean()) / oracle
        return 1.0 / oracle

    margins = (choose(pred, factors, FLOOR, m) for m in np.linspace(-0.3, 0.6, 181))
    weights = (choose_tradeoff(pred, factors, w) for w in np.exp(np.linspace(-1, 6, 141)))
    return first_ok(margins), first_ok(weights)


def compare(labels: Path, cand_dir: Path) -> None:
    recs = load_records(sorted(labels.glob("*.jsonl")))
    cand: dict[str, list[dict[str, float]]] = {}
    for path in cand_dir.glob("*.jsonl"):
        for line in path.open(encoding="utf-8"):
            obj = json.loads(line)
            cand[obj["id"]] = obj["per"]
    k = len(recs[0].factors)
    recs = [r for r in recs if r.id in cand and len(r.factors) == k]
    factors = recs[0].factors
    actual, achieved = arrays(recs)
    groups = np.array([r.dataset.split("/")[0] if not r.dataset.startswith("leval") else "leval" for r in recs])
    y = actual.reshape(-1)
    agnostic = np.zeros_like(actual)
    for g in np.unique(groups):
        te, tr = np.where(groups == g)[0], np.where(groups != g)[0]
        model = ContextAgnosticPredictor().fit([recs[i] for i in tr])
        agnostic[te] = np.array(model.predict_records([recs[i] for i in te]))
    base_mae = float(np.abs(agnostic - actual).mean())
    print(f"{len(recs)} inputs, datasets: {', '.join(sorted(set(groups)))}")
    print("| features | unseen MAE | / agnostic | bound, margin | bound, trade-off |")
    print("|---|---:|---:|---:|---:|")
    print(f"| context-agnostic | {base_mae:.3f} | 1.00x | %.2f | %.2f |" % bound(agnostic, actual, achieved, factors))
    shipped = list(LIGHTGBM_FEATURES)
    for label, names in (("shipped", shipped), ("shipped + relevance", shipped + list(RELEVANCE)),
                         ("shipped + coverage", shipped + list(COVERAGE)),
                         ("shipped + all candidates", shipped + list(RELEVANCE + COVERAGE))):
        x = design(recs, cand, names)
        pred = np.zeros_like(actual)
        for g in np.unique(groups):
            te, tr = np.where(groups == g)[0], np.where(groups != g)[0]
            pred[te] = fit_predict(x, y, groups, tr, te, k, names)
        mae = float(np.abs(pred - actual).mean())
        b = bound(pred, actual, achieved, factors)
        print(f"| {label} | {mae:.3f} | {mae / base_mae:.2f}x | {b[0]:.2f} | {b[1]:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--labels", type=Path, required=True, help="folder of one compressor's label files")
    e.add_argument("-o", "--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("--labels", type=Path, required=True)
    c.add_argument("--candidates", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "extract":
        extract(args.labels, args.out)
    else:
        compare(args.labels, args.candidates)


if __name__ == "__main__":
    main()
