"""The calibrated promise: coverage on exchangeable synthetic data, persistence, edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pocsdk.errors import ArtifactError, InvalidRateError
from pocsdk.prediction.conformal import NO_PROMISE, Calibration, decision_margin, fit_calibration
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
    with pytest.raises(InvalidRateError):
        back.margin(1.2, 0.9)
    with pytest.raises(InvalidRateError):
        back.margin(0.9, 1.0)


@pytest.mark.parametrize("content", ["{oops", json.dumps({"schema": "other"}), json.dumps({"schema": "pocsdk.calibration",
                                     "version": 7}), json.dumps({"schema": "pocsdk.calibration", "version": 1})])
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
