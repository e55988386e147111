"""Experiment: train LightGBM on "meets the floor" instead of relative performance (not shipped).

The trade-off rule picks, per input, the factor maximising ``utility(factor) + w * score``. With the
shipped predictor the score is the predicted relative performance; the experiment swaps in the
predicted probability of meeting floor 0.9 (the same trees and features, trained on the labels
binarised at the floor) and compares three utilities: ``log`` (what ships), ``factor`` (the mean
factor, what the issue's "of oracle" target counts) and ``saved`` (1 - 1/factor, the share of
tokens saved, what the bill counts). ``w`` is fitted by the same Learn-then-Test test as the shipped
calibration (risk (failures + 1) / (n + 1) <= 0.1).

* ``indist``: random split (test 25%, the rest 75/25 into fit and calibration), two seeds, pooled weight.
* ``lodo``: nested leave-one-dataset-out, the shipped protocol: for each held-out dataset the weight
  comes from an inner leave-one-dataset-out on the other four, required on each of them, and the
  final model is fitted on all four. Log utility only.

    python benchmarks/meet_target.py indist --labels L/skim
    python benchmarks/meet_target.py lodo --labels L/skim
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pocsdk.calibration.labels import LabelRecord
from pocsdk.prediction.decision import outcome
from pocsdk.prediction.evaluate import arrays, load_records_with_sources, oracle_index, split_fit_cal
from pocsdk.prediction.predictors import LightGBMPredictor

DATASETS = ("nq_mixed", "squad_articles", "leval", "multi_news", "kv75")
FLOOR = 0.9
CONFIDENCE = 0.9
WEIGHTS = np.geomspace(0.01, 1e5, 400)


def binarised(records: Sequence[LabelRecord], floor: float = FLOOR) -> list[LabelRecord]:
    return [r.model_copy(update={"performance": [1.0 if p >= floor - 1e-9 else 0.0 for p in r.performance]})
            for r in records]


def utilities(factors: np.ndarray) -> dict[str, np.ndarray]:
    return {"log": np.log(factors), "factor": factors, "saved": 1.0 - 1.0 / factors}


def choose(score: np.ndarray, weights: np.ndarray, utility: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(W, n) chosen indices, -1 = pass through."""
    j = (utility[None, None, :] + weights[:, None, None] * score[None]).argmax(-1)
    return np.where(factors[j] <= 1.0 + 1e-9, -1, j)


def fit_weight(score: np.ndarray, actual: np.ndarray, utility: np.ndarray, factors: np.ndarray) -> float:
    """Smallest weight passing the test, fixed sequence from the largest (inf: nothing passes)."""
    perf, _ = outcome(actual, np.ones_like(actual), choose(score, WEIGHTS, utility, factors))
    ok = ((perf < FLOOR - 1e-9).sum(1) + 1.0) / (len(actual) + 1.0) <= 1.0 - CONFIDENCE + 1e-12
    if not ok[-1]:
        return float("inf")
    bad = np.flatnonzero(~ok)
    return float(WEIGHTS[bad[-1] + 1 if bad.size else 0])


def decide(score: np.ndarray, w: float, utility: np.ndarray, factors: np.ndarray) -> np.ndarray:
    if not np.isfinite(w):
        return np.full(score.shape[0], -1)
    return choose(score, np.array([w]), utility, factors)[0]


def summary(actual: np.ndarray, achieved: np.ndarray, idx: np.ndarray, oracle_fac: np.ndarray) -> str:
    perf, fac = outcome(actual, achieved, idx)
    kept, o_kept = (1.0 / fac).mean(), (1.0 / oracle_fac).mean()
    return (f"meet {(perf >= FLOOR - 1e-9).mean():.3f}  factor {fac.mean():5.2f} ({fac.mean() / oracle_fac.mean():.2f} "
            f"of oracle)  kept {kept:.3f} ({(1 - kept) / (1 - o_kept):.2f} of oracle saving)")


def fit(records: Sequence[LabelRecord], groups: Sequence[str], target: str) -> LightGBMPredictor:
    return LightGBMPredictor().fit(binarised(records) if target == "meet" else records, groups=list(groups))


def indist(records: list[LabelRecord], sources: list[str], factors: np.ndarray) -> None:
    origin = {id(r): s for r, s in zip(records, sources, strict=True)}
    for seed in (0, 1):
        idx = list(range(len(records)))
        random.Random(seed).shuffle(idx)
        k = len(idx) // 4
        test, train = [records[i] for i in idx[:k]], [records[i] for i in idx[k:]]
        fit_part, cal = split_fit_cal(train, random.Random(seed))
        actual, achieved = arrays(test)
        cal_actual, _ = arrays(cal)
        _, o_fac = outcome(actual, achieved, oracle_index(actual, factors, FLOOR))
        for target in ("performance", "meet"):
            model = fit(fit_part, [origin[id(r)] for r in fit_part], target)
            s_cal, s_test = np.stack(model.predict_records(cal)), np.stack(model.predict_records(test))
            for name, u in utilities(factors).items():
                w = fit_weight(s_cal, cal_actual, u, factors)
                idx_test = decide(s_test, w, u, factors)
                print(f"seed {seed}  {target:11s}  {name:6s}  {summary(actual, achieved, idx_test, o_fac)}", flush=True)


def lodo(records: list[LabelRecord], sources: list[str], factors: np.ndarray) -> None:
    src = np.asarray(sources)
    u = utilities(factors)["log"]
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"performance": [], "meet": []}
    for held in np.unique(src):
        train = [r for r, s in zip(records, src, strict=True) if s != held]
        train_src = src[src != held]
        test = [r for r, s in zip(records, src, strict=True) if s == held]
        actual, achieved = arrays(test)
        _, o_fac = outcome(actual, achieved, oracle_index(actual, factors, FLOOR))
        for target in pooled:
            scores, acts, owners = [], [], []
            for d in np.unique(train_src):
                inner = [r for r, s in zip(train, train_src, strict=True) if s != d]
                out = [r for r, s in zip(train, train_src, strict=True) if s == d]
                scores.append(np.stack(fit(inner, [s for s in train_src if s != d], target).predict_records(out)))
                acts.append(arrays(out)[0])
                owners += [d] * len(out)
            sc, ac, ow = np.concatenate(scores), np.concatenate(acts), np.asarray(owners)
            w = max([fit_weight(sc, ac, u, factors)] + [fit_weight(sc[ow == d], ac[ow == d], u, factors)
                                                        for d in np.unique(ow) if (ow == d).sum() >= 30])
            idx = decide(np.stack(fit(train, train_src, target).predict_records(test)), w, u, factors)
            pooled[target].append((actual, achieved, idx, o_fac))
            print(f"held out {held:15s} {target:11s} w {w:8.2f}  {summary(actual, achieved, idx, o_fac)}", flush=True)
    for target, parts in pooled.items():
        a, ach, idx, o = (np.concatenate([p[i] for p in parts]) for i in range(4))
        print(f"pooled                   {target:11s}              {summary(a, ach, idx, o)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("indist", "lodo"))
    ap.add_argument("--labels", type=Path, required=True, help="folder with the five labels files of one compressor")
    args = ap.parse_args()
    records, sources = load_records_with_sources([args.labels / f"{d}.jsonl" for d in DATASETS])
    factors = np.asarray(records[0].factors)
    (indist if args.mode == "indist" else lodo)(records, sources, factors)


if __name__ == "__main__":
    main()
