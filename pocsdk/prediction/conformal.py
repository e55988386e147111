"""A calibrated promise: margins so that ``floor`` holds on at least ``confidence`` of inputs.

Method (Learn-then-Test / conformal risk control applied to the decision itself). On held-out
labelled inputs we know, for each input, the predictor's curve and the actual relative
performance at every grid factor. For a candidate margin ``δ`` the decision rule picks the most
aggressive factor with ``prediction - δ >= floor`` (or passes through, which never fails); the
input *fails* when its actual performance at that factor is below the floor. The margin is the
smallest ``δ`` on a grid whose finite-sample-corrected failure rate

    (failures(δ) + 1) / (n + 1) <= 1 - confidence,

found by fixed-sequence testing from the largest ``δ`` downward (stop at the first ``δ`` that
fails the test), so no monotonicity of failures in ``δ`` is assumed. If even the largest ``δ``
fails, the margin is 1.0: nothing can be promised and every input passes through.

Margins are computed on the fly for the requested (floor, confidence) from the stored tables of
predictions and actual performance, and cached. Inputs of a task type with at least
``min_group`` calibration examples use that task's table; everything else uses the pooled table.

**Assumption, plainly:** the promise holds on average over inputs that are exchangeable with
the calibration inputs (drawn from the same distribution: same kind of task, data, judge and
model). It is not a per-input guarantee, and it does not survive a shift to other data; for a
new task, re-calibrate on 30-100 labelled examples of it (``pocsdk fit-calibration``).
The (k + 1) / (n + 1) correction makes the guarantee hold in expectation over the draw of the
calibration set; with few examples, high confidences are unreachable and the margin is 1.0.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from pocsdk._version import __version__
from pocsdk.calibration.labels import LabelRecord
from pocsdk.errors import ArtifactError, LabelsError
from pocsdk.prediction.decision import choose, outcome
from pocsdk.types import check_unit_interval

CALIBRATION_SCHEMA = "pocsdk.calibration"
CALIBRATION_VERSION = 1
DELTA_GRID: tuple[float, ...] = tuple(round(0.0025 * i, 4) for i in range(201))  # 0 .. 0.5
NO_PROMISE = 1.0
"""Margin meaning "no compression can be promised" (pred - 1.0 never reaches a floor > 0)."""


class ResidualTable(BaseModel):
    """Predictions and actual performance of calibration inputs over the grid."""

    predicted: list[list[float]]
    actual: list[list[float]]
    datasets: dict[str, int] = Field(default_factory=dict)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.predicted, dtype=np.float64), np.asarray(self.actual, dtype=np.float64)


class Calibration(BaseModel):
    """Margins for the calibrated promise; saved as JSON."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["pocsdk.calibration"] = Field(default="pocsdk.calibration", alias="schema")
    version: int = CALIBRATION_VERSION
    compressor: str
    predictor: str
    """Name of the predictor whose predictions the tables hold (``kind:compressor``)."""
    predictor_sha256: str = ""
    """Checksum of that predictor's model file: margins only hold for that exact model."""
    factors: list[float]
    min_group: int = 50
    groups: dict[str, ResidualTable]
    """``"*"`` (all calibration inputs) and task types with at least ``min_group`` inputs."""
    delta_grid: list[float] = Field(default_factory=lambda: list(DELTA_GRID))
    created: str = ""
    pocsdk_version: str = __version__
    notes: str = ""
    _cache: dict[tuple[str, float, float], float] = PrivateAttr(default_factory=dict)

    def margin(self, floor: float, confidence: float, task: str | None = None) -> float:
        """The margin for ``floor`` at ``confidence`` (per task when it has its own table)."""
        floor = check_unit_interval("floor", floor)
        confidence = check_unit_interval("confidence", confidence, closed_right=False)
        group = task if task is not None and task in self.groups else "*"
        key = (group, round(floor, 6), round(confidence, 6))
        if key not in self._cache:
            pred, actual = self.groups[group].arrays()
            self._cache[key] = decision_margin(pred, actual, self.factors, floor, confidence, self.delta_grid)
        return self._cache[key]

    def n(self, task: str | None = None) -> int:
        group = task if task is not None and task in self.groups else "*"
        return len(self.groups[group].predicted)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = self.model_dump(by_alias=True)
        p.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        p = Path(path)
        if not p.is_file():
            raise ArtifactError(f"calibration file not found: {p}")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"calibration {p} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("schema") != CALIBRATION_SCHEMA:
            raise ArtifactError(f"{p} is not a pocsdk calibration (schema must be {CALIBRATION_SCHEMA!r})")
        if raw.get("version") != CALIBRATION_VERSION:
            raise ArtifactError(f"{p}: calibration version {raw.get('version')!r} is not supported")
        try:
            cal = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ArtifactError(f"{p}: {'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from exc
        if "*" not in cal.groups:
            raise ArtifactError(f"{p}: calibration needs a pooled group '*'")
        m = len(cal.factors)
        for name, t in cal.groups.items():
            rows = (row for tbl in (t.predicted, t.actual) for row in tbl)
            if len(t.predicted) != len(t.actual) or any(len(row) != m for row in rows):
                raise ArtifactError(f"{p}: group {name!r} does not match the factor grid")
        return cal

    def margins_table(self, floors: Sequence[float], confidence: float, task: str | None = None) -> dict[str, float]:
        return {f"{f:g}": self.margin(f, confidence, task) for f in floors}


def decision_margin(pred: np.ndarray, actual: np.ndarray, factors: Sequence[float], floor: float,
                    confidence: float, deltas: Sequence[float] = DELTA_GRID) -> float:
    """Smallest margin (fixed-sequence from the largest) with (failures + 1) / (n + 1) <= 1 - confidence."""
    n = pred.shape[0]
    if n == 0:
        return NO_PROMISE
    alpha = 1.0 - confidence
    d = np.asarray(sorted(deltas), dtype=np.float64)
    idx = choose(pred[None, :, :], factors, floor, d[:, None])  # (D, n)
    perf, _ = outcome(actual, np.ones_like(actual), idx)
    failures = (perf < floor - 1e-9).sum(axis=1)
    risk = (failures + 1.0) / (n + 1.0)
    ok = risk <= alpha + 1e-12
    if not ok[-1]:
        return NO_PROMISE
    # fixed sequence: walk down from the largest delta while the test passes
    bad = np.flatnonzero(~ok)
    first_ok = int(bad[-1]) + 1 if bad.size else 0
    return float(d[first_ok])


def fit_calibration(predictor: Any, records: Sequence[LabelRecord], *, min_group: int = 50,
                    notes: str = "") -> Calibration:
    """Build a :class:`Calibration` for ``predictor`` from held-out label records.

    Records must share one factor grid (the most common grid is used; others are refused).
    """
    if not records:
        raise LabelsError("no calibration records")
    grids = Counter(tuple(float(f) for f in r.factors) for r in records)
    grid, _ = grids.most_common(1)[0]
    if len(grids) > 1:
        raise LabelsError(f"calibration records use {len(grids)} different factor grids; use one grid")
    if list(grid) != sorted(grid):
        raise LabelsError("calibration factor grid must be ascending")
    preds = predictor.predict_records(records)
    groups: dict[str, ResidualTable] = {"*": _table(records, preds)}
    by_task = Counter(r.task for r in records)
    for task, count in by_task.items():
        if count >= min_group:
            keep = [i for i, r in enumerate(records) if r.task == task]
            groups[task] = _table([records[i] for i in keep], [preds[i] for i in keep])
    sha = ""
    card_sha = getattr(predictor, "sha256_", None)
    if isinstance(card_sha, str):
        sha = card_sha
    compressors = sorted({r.compressor for r in records})
    return Calibration(
        compressor=compressors[0] if len(compressors) == 1 else ",".join(compressors),
        predictor=str(getattr(predictor, "name", type(predictor).__name__)),
        predictor_sha256=sha,
        factors=list(grid),
        min_group=min_group,
        groups=groups,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )


def _table(records: Sequence[LabelRecord], preds: Sequence[np.ndarray]) -> ResidualTable:
    return ResidualTable(
        predicted=[[round(float(v), 4) for v in p] for p in preds],
        actual=[[round(min(max(float(v), 0.0), 1.0), 4) for v in r.performance] for r in records],
        datasets=dict(Counter(r.dataset for r in records)),
    )
