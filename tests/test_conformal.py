"""The calibrated promise: coverage on exchangeable synthetic data, persistence, edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pocsdk.calibration.labels import LabelRecord
from pocsdk.errors import ArtifactError, InvalidRateError, LabelsError
from pocsdk.prediction.conformal import (
    NO_PROMISE,
    Calibration,
    cross_dataset_calibration,
    decision_margin,
    fit_calibration,
)
from pocsdk.prediction.decision import choose, outcome
from pocsdk.prediction.predictors import ContextAgnosticPredictor
from pocsdk.prediction.synthetic import synthetic_records, true_curve

GRID = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0])


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(over-optimistic predictions, binary actual performance) for n exchangeable inputs."""
    diff = np.clip(rng.gamma(2.0, 0.5, n), 0.05, 6.0)
    p = np.stack([true_curve(d, GRID) for d in diff])
    pred = np.clip(p + 0.08 + rng.normal(0, 0.05, p.shape), 0, 1)
    pred = np.minimum.accumulate(pred, axis=1)
    actual = (rng.random(p.shape) < p).astype(float)
    actual[:, 0] = 1.0
    return pred, actual


@pytest.mark.parametrize("confidence", [0.8, 0.9])
@pytest.mark.parametrize("floor", [0.9])
def test_coverage_on_exchangeable_data(floor: float, confidence: float) -> None:
    rng = np.random.default_rng(0)
    coverage = []
    uncalibrated = []
    for _ in range(40):
        cp, ca = _draw(rng, 300)
        tp, ta = _draw(rng, 2000)
        delta = decision_margin(cp, ca, GRID, floor, confidence)
        perf, _ = outcome(ta, np.tile(GRID, (2000, 1)), choose(tp, GRID, floor, delta))
        coverage.append(float((perf >= floor).mean()))
        perf0, _ = outcome(ta, np.tile(GRID, (2000, 1)), choose(tp, GRID, floor, 0.0))
        uncalibrated.append(float((perf0 >= floor).mean()))
    assert np.mean(coverage) >= confidence - 0.005
    assert np.quantile(coverage, 0.1) >= confidence - 0.04
    if confidence == 0.9:
        assert np.mean(uncalibrated) < confidence  # the margin was needed: predictions are over-optimistic


def test_margin_grows_with_confidence_and_tiny_sets_promise_nothing() -> None:
    rng = np.random.default_rng(1)
    cp, ca = _draw(rng, 400)
    margins = [decision_margin(cp, ca, GRID, 0.9, c) for c in (0.5, 0.8, 0.9, 0.95)]
    assert margins == sorted(margins)
    assert decision_margin(cp[:5], ca[:5], GRID, 0.9, 0.9) == NO_PROMISE  # (0 + 1) / 6 > 0.1
    assert decision_margin(cp[:0], ca[:0], GRID, 0.9, 0.9) == NO_PROMISE


def test_perfect_predictions_need_no_margin() -> None:
    actual = np.tile([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], (100, 1))
    assert decision_margin(actual.copy(), actual, GRID, 0.9, 0.9) == 0.0


def test_fit_save_load_and_per_task(tmp_path: Path) -> None:
    recs = synthetic_records(200, seed=1) + synthetic_records(40, seed=2, task="summarization", dataset="s")
    pred = ContextAgnosticPredictor().fit(recs)
    cal = fit_calibration(pred, recs, min_group=50)
    assert set(cal.groups) == {"*", "qa"}  # summarization has too few examples: pooled
    assert cal.n() == 240 and cal.n("qa") == 200 and cal.n("summarization") == 240
    m = cal.margin(0.9, 0.9)
    assert 0.0 <= m <= NO_PROMISE
    path = cal.save(tmp_path / "calib.json")
    back = Calibration.load(path)
    assert back.margin(0.9, 0.9) == m and back.margin(0.9, 0.9, task="qa") == cal.margin(0.9, 0.9, task="qa")
    # task names are matched as the predictors read them: "QA " is the "qa" table, not the pooled one
    assert back.n("QA ") == back.n("qa") == 200 and back.margin(0.9, 0.9, " Qa") == back.margin(0.9, 0.9, "qa")
    assert back.weight(0.9, 0.9, "QA") == back.weight(0.9, 0.9, "qa")
    raw = json.loads(path.read_text())
    raw["groups"]["qa"]["predicted"][0][0] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="non-finite predicted"):
        Calibration.load(tmp_path / "nan.json")
    with pytest.raises(InvalidRateError):
        back.margin(1.2, 0.9)
    with pytest.raises(InvalidRateError):
        back.margin(0.9, 1.0)


BAD_FILES = [
    "{oops",
    json.dumps({"schema": "other"}),
    json.dumps({"schema": "pocsdk.calibration", "version": 7}),
    json.dumps({"schema": "pocsdk.calibration", "version": 1}),
]


@pytest.mark.parametrize("content", BAD_FILES)
def test_bad_calibration_files(tmp_path: Path, content: str) -> None:
    p = tmp_path / "c.json"
    p.write_text(content)
    with pytest.raises(ArtifactError):
        Calibration.load(p)
    with pytest.raises(ArtifactError):
        Calibration.load(tmp_path / "missing.json")


def test_grid_mismatch_rejected(tmp_path: Path) -> None:
    recs = synthetic_records(60, seed=3)
    cal = fit_calibration(ContextAgnosticPredictor().fit(recs), recs)
    data = json.loads(cal.model_dump_json(by_alias=True))
    data["factors"] = data["factors"][:-1]
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError):
        Calibration.load(tmp_path / "c.json")


def test_tradeoff_weight_coverage_on_exchangeable_data() -> None:
    from pocsdk.prediction.conformal import decision_weight
    from pocsdk.prediction.decision import choose_tradeoff

    rng = np.random.default_rng(3)
    coverage = []
    gain = []
    for _ in range(30):
        cp, ca = _draw(rng, 300)
        tp, ta = _draw(rng, 2000)
        w = decision_weight(cp, ca, GRID, 0.9, 0.9)
        perf, fac = outcome(ta, np.tile(GRID, (2000, 1)), choose_tradeoff(tp, GRID, w))
        coverage.append(float((perf >= 0.9).mean()))
        d = decision_margin(cp, ca, GRID, 0.9, 0.9)
        _, fac_m = outcome(ta, np.tile(GRID, (2000, 1)), choose(tp, GRID, 0.9, d))
        gain.append(float(fac.mean() / fac_m.mean()))
    assert np.mean(coverage) >= 0.9 - 0.005
    assert np.mean(gain) >= 1.0  # the trade-off rule compresses at least as much as the margin rule here


def test_choose_tradeoff_rule() -> None:
    from pocsdk.prediction.decision import PASSTHROUGH, choose_tradeoff

    grid = [1.0, 2.0, 4.0, 8.0]
    pred = np.array([[1.0, 0.99, 0.9, 0.2], [1.0, 0.5, 0.4, 0.3]])
    assert choose_tradeoff(pred, grid, 5.0).tolist() == [2, PASSTHROUGH]  # log 4 + 4.5 beats log 2 + 4.95
    assert choose_tradeoff(pred, grid, 0.0).tolist() == [3, 3]
    assert choose_tradeoff(pred, grid, float("inf")).tolist() == [PASSTHROUGH, PASSTHROUGH]
    assert choose_tradeoff(pred, grid, np.array([0.0, 1000.0])).tolist() == [3, PASSTHROUGH]


def _shifted_datasets(binary: bool = False) -> tuple[list[LabelRecord], list[str]]:
    """Three easy calibration datasets and one hard one: the new task may be as hard as the hardest."""
    recs: list[LabelRecord] = []
    src: list[str] = []
    for i, (name, shift) in enumerate((("a", 0.0), ("b", 0.0), ("c", 0.0), ("d", 1.0))):
        r = synthetic_records(200, seed=i, dataset=name, shift=shift, binary=binary)
        recs += r
        src += [name] * len(r)
    return recs, src


def test_cross_dataset_holds_on_a_shifted_dataset_where_holdout_fails() -> None:
    import random

    from pocsdk.prediction.evaluate import arrays

    recs, src = _shifted_datasets()
    test = synthetic_records(1000, seed=99, dataset="new", shift=1.0, binary=False)
    order = list(range(len(recs)))
    random.Random(0).shuffle(order)
    fit, cal = [recs[i] for i in order[len(order) // 4:]], [recs[i] for i in order[:len(order) // 4]]
    holdout = fit_calibration(ContextAgnosticPredictor().fit(fit), cal)
    final = ContextAgnosticPredictor().fit(recs)
    xcal = cross_dataset_calibration(recs, lambda r: ContextAgnosticPredictor().fit(r), sources=src, predictor=final)
    assert holdout.method == "holdout" and xcal.method == "cross_dataset" and xcal.per_dataset
    actual, achieved = arrays(test)
    floor, conf = 0.8, 0.8
    meet = {}
    for name, pred, c in (("holdout", ContextAgnosticPredictor().fit(fit), holdout), ("xcal", final, xcal)):
        pm = np.stack(pred.predict_records(test))
        perf, _ = outcome(actual, achieved, choose(pm, GRID, floor, c.margin(floor, conf)))
        meet[name] = float((perf >= floor).mean())
    assert meet["holdout"] < conf - 0.1  # in-distribution residuals are too small for the harder dataset
    assert meet["xcal"] >= conf - 0.02
    assert xcal.margin(floor, conf) > holdout.margin(floor, conf)
    assert xcal.weight(floor, conf) >= holdout.weight(floor, conf)
    # pooled cross-dataset tables are less conservative than requiring each dataset separately
    pooled = xcal.model_copy(update={"per_dataset": False})  # shares the cache: its key must tell them apart
    assert pooled.margin(floor, conf) < xcal.margin(floor, conf)


def test_cross_dataset_needs_three_datasets_and_round_trips(tmp_path: Path) -> None:
    recs, src = _shifted_datasets()
    with pytest.raises(LabelsError):
        cross_dataset_calibration(recs[:400], lambda r: ContextAgnosticPredictor().fit(r), sources=src[:400])
    with pytest.raises(LabelsError):
        cross_dataset_calibration(recs, lambda r: ContextAgnosticPredictor().fit(r), sources=src[:10])
    cal = cross_dataset_calibration(recs, lambda r: ContextAgnosticPredictor().fit(r), sources=src)
    assert cal.groups["*"].sources == src
    back = Calibration.load(cal.save(tmp_path / "x.json"))
    assert back.method == "cross_dataset" and back.per_dataset and back.min_dataset == cal.min_dataset
    assert back.groups["*"].sources == src
    assert back.margin(0.8, 0.8) == cal.margin(0.8, 0.8) and back.weight(0.8, 0.8) == cal.weight(0.8, 0.8)
    # files written before the method field load as holdout calibrations
    data = json.loads((tmp_path / "x.json").read_text())
    for key in ("method", "per_dataset", "min_dataset"):
        data.pop(key)
    for t in data["groups"].values():
        t.pop("sources")
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Calibration.load(tmp_path / "old.json")
    assert old.method == "holdout" and not old.per_dataset
    data["method"] = "magic"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError):
        Calibration.load(tmp_path / "bad.json")


def test_cross_dataset_task_groups_need_two_datasets() -> None:
    recs = (synthetic_records(60, seed=1, dataset="a") + synthetic_records(60, seed=2, dataset="b")
            + synthetic_records(60, seed=3, dataset="c", task="summarization"))
    cal = cross_dataset_calibration(recs, lambda r: ContextAgnosticPredictor().fit(r))
    assert set(cal.groups) == {"*", "qa"}  # summarization comes from one dataset only: pooled


def test_cross_dataset_calibration_without_the_final_predictor_binds_by_name() -> None:
    from pocsdk.errors import ArtifactError
    from pocsdk.prediction.floor import FloorPolicy
    from pocsdk.prediction.predictors import make_predictor

    recs = [r for i in range(3) for r in synthetic_records(80, seed=i, dataset=f"d{i}")]
    cal = cross_dataset_calibration(recs, lambda rs: make_predictor("lightgbm").fit(rs))
    assert cal.predictor_sha256 == ""  # not the checksum of a fold model nobody keeps
    FloorPolicy(make_predictor("lightgbm").fit(recs), cal, compressor="extractive")  # the final fit: accepted
    with pytest.raises(ArtifactError, match="fitted for predictor"):
        FloorPolicy(make_predictor("agnostic").fit(recs), cal, compressor="extractive")
