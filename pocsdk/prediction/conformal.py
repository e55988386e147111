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

The same test calibrates the weight ``w`` of the trade-off rule (:meth:`Calibration.weight`, used
by default by the floor search): per input the factor maximising ``log(factor) + w * prediction``;
the smallest ``w`` on a geometric grid that passes the test. It spends the allowed failures where
compression pays most instead of asking every input to clear the floor, and compresses about a
third more for the same promise on the real labels.

Margins are computed on the fly for the requested (floor, confidence) from the stored tables of
predictions and actual performance, and cached. Inputs of a task type with at least
``min_group`` calibration examples use that task's table; everything else uses the pooled table.

Three ways to get the tables (``Calibration.method``):

* ``"cross_dataset"`` (default for shipped predictors, :func:`cross_dataset_calibration`): the
  *datasets* are the exchangeable units. For each calibration dataset ``d`` the predictor is refit
  on the other datasets and predicts ``d``, so every row of the tables is an out-of-dataset
  prediction, with the larger errors a predictor makes on data it has never seen. With
  ``per_dataset`` (default) the margin / weight must pass the test on *each* dataset with at least
  ``min_dataset`` rows separately, and the most conservative one is used.
* ``"holdout"``: a random held-out share of the training labels (in-distribution residuals only).
* ``"few_shot"``: 30-100 labelled examples of the user's own task (``pocsdk fit-calibration``).

**Assumption, plainly:** the promise holds on average over inputs that are exchangeable with
the calibration inputs. For ``holdout`` / ``few_shot`` that means drawn from the same
distribution (same kind of task, data, judge and model) as the calibration rows. For
``cross_dataset`` it means the new task is exchangeable with the calibration datasets: with
``per_dataset``, it is no harder for the predictor than the hardest of them. Neither is a
per-input guarantee, and a task harder than every calibration dataset can still break it; for a
new task the best promise (and usually more compression) comes from re-calibrating on 30-100
labelled examples of it (``pocsdk fit-calibration``). The cross-dataset tables come from
predictors fitted without one dataset each; the shipped predictor is fitted on all of them, so it
is assumed no worse on a new dataset than those were on theirs.
The (k + 1) / (n + 1) correction makes the guarantee hold in expectation over the draw of the
calibration set; with few examples, high confidences are unreachable and the margin is 1.0.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from pocsdk._version import __version__
from pocsdk.calibration.labels import LabelRecord
from pocsdk.errors import ArtifactError, LabelsError, PocError
from pocsdk.prediction.decision import choose, choose_tradeoff, outcome
from pocsdk.types import check_unit_interval

CalibrationMethod = Literal["cross_dataset", "holdout", "few_shot"]
CALIBRATION_SCHEMA = "pocsdk.calibration"
CALIBRATION_VERSION = 1
DELTA_GRID: tuple[float, ...] = tuple(round(0.0025 * i, 4) for i in range(201))  # 0 .. 0.5
NO_PROMISE = 1.0
"""Margin meaning "no compression can be promised" (pred - 1.0 never reaches a floor > 0)."""
WEIGHT_GRID: tuple[float, ...] = tuple(float(w) for w in np.round(np.geomspace(0.5, 5000.0, 160), 4))
NO_WEIGHT = math.inf
"""Trade-off weight meaning "no compression can be promised" (always pass through)."""


class ResidualTable(BaseModel):
    """Predictions and actual performance of calibration inputs over the grid."""

    predicted: list[list[float]]
    actual: list[list[float]]
    datasets: dict[str, int] = Field(default_factory=dict)
    sources: list[str] = Field(default_factory=list)
    """Per row, the dataset (exchangeable unit) it comes from; empty for old files."""

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.predicted, dtype=np.float64), np.asarray(self.actual, dtype=np.float64)

    def subsets(self, min_rows: int) -> list[np.ndarray]:
        """Row indices of each source with at least ``min_rows`` rows (for the per-dataset test)."""
        if len(self.sources) != len(self.predicted):
            return []
        src = np.asarray(self.sources)
        return [np.flatnonzero(src == s) for s, c in Counter(self.sources).items() if c >= min_rows]


_CACHE_SIZE = 1024
"""Margins and weights remembered per calibration (each costs about 0.1 s to fit)."""


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
    method: CalibrationMethod = "holdout"
    """How the tables were made: ``cross_dataset``, ``holdout`` or ``few_shot`` (module docstring)."""
    per_dataset: bool = False
    """Require the test on each source with >= ``min_dataset`` rows; use the most conservative value."""
    min_dataset: int = 30
    created: str = ""
    pocsdk_version: str = __version__
    notes: str = ""
    task: str | None = None
    """The task type shared by every calibration example (``None`` when they differ): predictors that read
    the task (``agnostic``, ``mlp``) predict for it at run time when the caller names none, as they did
    for the calibration."""
    _cache: dict[tuple[str, float, float, bool, int], float] = PrivateAttr(default_factory=dict)
    _wcache: dict[tuple[str, float, float, bool, int], float] = PrivateAttr(default_factory=dict)

    def margin(self, floor: float, confidence: float, task: str | None = None) -> float:
        """The margin for ``floor`` at ``confidence`` (per task when it has its own table)."""
        floor = check_unit_interval("floor", floor)
        confidence = check_unit_interval("confidence", confidence, closed_right=False)
        group = self._group(task)
        key = (group, round(floor, 6), round(confidence, 6), self.per_dataset, self.min_dataset)
        value = self._cache.get(key)
        if value is None:  # (a local: another thread may clear the cache between a store and a read)
            value = self._conservative(
                group, lambda p, a: decision_margin(p, a, self.factors, floor, confidence, self.delta_grid))
            if len(self._cache) >= _CACHE_SIZE:  # callers varying floor or confidence per request: bounded
                self._cache.clear()
            self._cache[key] = value
        return value

    def weight(self, floor: float, confidence: float, task: str | None = None) -> float:
        """The calibrated weight of the trade-off rule (:func:`~pocsdk.prediction.decision.choose_tradeoff`).

        ``inf`` when nothing can be promised. Same test as :meth:`margin`, on the weight grid.
        """
        floor = check_unit_interval("floor", floor)
        confidence = check_unit_interval("confidence", confidence, closed_right=False)
        group = self._group(task)
        key = (group, round(floor, 6), round(confidence, 6), self.per_dataset, self.min_dataset)
        value = self._wcache.get(key)
        if value is None:
            value = self._conservative(
                group, lambda p, a: decision_weight(p, a, self.factors, floor, confidence))
            if len(self._wcache) >= _CACHE_SIZE:
                self._wcache.clear()
            self._wcache[key] = value
        return value

    def _group(self, task: str | None) -> str:
        """The table for ``task``, matched as the predictors read task names (case and outer spaces ignored:
        "Retrieval" got the pooled table while the predictor predicted for "retrieval"); else the pooled one."""
        if task is None:
            return "*"
        if task in self.groups:
            return task
        wanted = task.strip().lower()
        return next((g for g in self.groups if g != "*" and g.strip().lower() == wanted), "*")

    def _conservative(self, group: str, fit: Callable[[np.ndarray, np.ndarray], float]) -> float:
        """``fit`` on the group's table; with ``per_dataset``, the largest value over its sources too.

        Margins and weights are both "larger = more conservative", so the max over datasets is the
        value that passes the test on every dataset.
        """
        table = self.groups[group]
        pred, actual = table.arrays()
        value = fit(pred, actual)
        if self.per_dataset:
            for rows in table.subsets(self.min_dataset):
                value = max(value, fit(pred[rows], actual[rows]))
        return value

    def n(self, task: str | None = None) -> int:
        group = self._group(task)
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
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ArtifactError(f"calibration {p} is not valid JSON: {exc!r}") from exc
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
        if not m or not all(math.isfinite(f) and f >= 1.0 for f in cal.factors) or \
                any(b <= a for a, b in zip(cal.factors, cal.factors[1:], strict=False)):
            raise ArtifactError(f"{p}: factors must be a non-empty ascending grid of finite numbers >= 1")
        for name, t in cal.groups.items():
            for what, table in (("actual", t.actual), ("predicted", t.predicted)):
                if not all(math.isfinite(v) for row in table for v in row):  # NaN would pass every test
                    raise ArtifactError(f"{p}: group {name!r} has non-finite {what} performance")
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


def decision_weight(pred: np.ndarray, actual: np.ndarray, factors: Sequence[float], floor: float,
                    confidence: float, weights: Sequence[float] = WEIGHT_GRID) -> float:
    """Smallest trade-off weight (fixed sequence from the largest) with (failures + 1) / (n + 1) <= 1 - confidence."""
    n = pred.shape[0]
    if n == 0:
        return NO_WEIGHT
    w = np.asarray(sorted(weights), dtype=np.float64)
    idx = choose_tradeoff(pred[None, :, :], factors, w[:, None])  # (W, n)
    perf, _ = outcome(actual, np.ones_like(actual), idx)
    risk = ((perf < floor - 1e-9).sum(axis=1) + 1.0) / (n + 1.0)
    ok = risk <= (1.0 - confidence) + 1e-12
    if not ok[-1]:
        return NO_WEIGHT
    bad = np.flatnonzero(~ok)
    return float(w[int(bad[-1]) + 1 if bad.size else 0])


def fit_calibration(predictor: Any, records: Sequence[LabelRecord], *, min_group: int = 50,
                    notes: str = "", method: CalibrationMethod = "holdout",
                    sources: Sequence[str] | None = None) -> Calibration:
    """Build a :class:`Calibration` for ``predictor`` from held-out label records.

    ``method`` is ``"holdout"`` (a random share of the training labels) or ``"few_shot"``
    (examples of the user's task). Records must share one factor grid (others are refused).
    """
    _check_grid(records)
    preds = predictor.predict_records(records)
    return calibration_from_predictions(records, preds, predictor, min_group=min_group, notes=notes, method=method,
                                        sources=sources)


def cross_dataset_calibration(records: Sequence[LabelRecord], make: Callable[[list[LabelRecord]], Any], *,
                              sources: Sequence[str] | None = None, predictor: Any = None,
                              per_dataset: bool = True, min_group: int = 50, min_dataset: int = 30,
                              notes: str = "") -> Calibration:
    """Cross-dataset calibration: tables of out-of-dataset predictions (see the module docstring).

    ``sources`` names each record's dataset (default: ``record.dataset``); at least 3 are needed.
    ``make(train_records)`` returns a predictor fitted on them; it is called once per dataset.
    ``predictor`` is the final predictor (fitted on all records) the calibration ships with.
    Task types get their own table when they have >= ``min_group`` rows from >= 2 datasets of
    >= ``min_dataset`` rows each (pooled otherwise), so a task's margin is still cross-dataset.
    """
    _check_grid(records)
    src = list(sources) if sources is not None else [r.dataset for r in records]
    if len(src) != len(records):
        raise LabelsError("sources must name one dataset per record")
    names = sorted(set(src))
    if len(names) < 3:
        raise LabelsError(f"cross-dataset calibration needs >= 3 datasets, labels have {len(names)}")
    preds: list[np.ndarray] = [np.zeros(0)] * len(records)
    for d in names:
        train = [r for r, s in zip(records, src, strict=True) if s != d]
        held = [i for i, s in enumerate(src) if s == d]
        model = make(train)
        for i, p in zip(held, model.predict_records([records[i] for i in held]), strict=True):
            preds[i] = np.asarray(p, dtype=np.float64)

    def task_ok(task: str) -> bool:
        counts = Counter(s for r, s in zip(records, src, strict=True) if r.task == task)
        return sum(counts.values()) >= min_group and sum(c >= min_dataset for c in counts.values()) >= 2

    # Without the final predictor, the last fold's model names the kind, but its checksum is no one's:
    # none is recorded, and the predictor it is used with is checked by name.
    return calibration_from_predictions(
        records, preds, predictor if predictor is not None else model, min_group=min_group,
        notes=notes or f"cross-dataset calibration over {len(names)} datasets: {', '.join(names)}",
        method="cross_dataset", sources=src, per_dataset=per_dataset, min_dataset=min_dataset, task_filter=task_ok,
        sha256=None if predictor is not None else "")


def calibration_from_predictions(records: Sequence[LabelRecord], preds: Sequence[np.ndarray], predictor: Any, *,
                                 min_group: int = 50, notes: str = "", method: CalibrationMethod = "holdout",
                                 sources: Sequence[str] | None = None, per_dataset: bool = False,
                                 min_dataset: int = 30,
                                 task_filter: Callable[[str], bool] | None = None,
                                 sha256: str | None = None) -> Calibration:
    """A :class:`Calibration` from records and the predictions the calibrated predictor made on them.

    ``sha256`` overrides the checksum of ``predictor``'s model (``""``: record none).
    """
    grid = _check_grid(records)
    src = list(sources) if sources is not None else [r.dataset for r in records]
    groups: dict[str, ResidualTable] = {"*": _table(records, preds, src)}
    by_task = Counter(r.task for r in records)
    for task, count in by_task.items():
        if count >= min_group and (task_filter is None or task_filter(task)):
            keep = [i for i, r in enumerate(records) if r.task == task]
            groups[task] = _table([records[i] for i in keep], [preds[i] for i in keep], [src[i] for i in keep])
    if sha256 is not None:
        sha = sha256
    else:
        card_sha = getattr(predictor, "sha256_", None)
        sha = card_sha if isinstance(card_sha, str) and card_sha else model_sha256(predictor)
    compressors = sorted({r.compressor for r in records})
    tasks = {r.task for r in records}
    return Calibration(
        task=tasks.pop() if len(tasks) == 1 else None,
        compressor=compressors[0] if len(compressors) == 1 else ",".join(compressors),
        predictor=str(getattr(predictor, "name", type(predictor).__name__)),
        predictor_sha256=sha,
        factors=list(grid),
        min_group=min_group,
        groups=groups,
        method=method,
        per_dataset=per_dataset,
        min_dataset=min_dataset,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )


def model_sha256(predictor: Any) -> str:
    """The checksum its model file will have (what a loaded predictor's card records); ``""`` if unknown."""
    try:
        data = predictor._model_bytes()
    except (AttributeError, NotImplementedError, PocError):
        return ""
    return hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else ""


def _check_grid(records: Sequence[LabelRecord]) -> tuple[float, ...]:
    if not records:
        raise LabelsError("no calibration records")
    grids = Counter(tuple(float(f) for f in r.factors) for r in records)
    grid, _ = grids.most_common(1)[0]
    if len(grids) > 1:
        raise LabelsError(f"calibration records use {len(grids)} different factor grids; use one grid")
    if list(grid) != sorted(grid) or not all(math.isfinite(f) and f >= 1.0 for f in grid):
        raise LabelsError("calibration factor grid must be ascending finite numbers >= 1")
    return grid


def _table(records: Sequence[LabelRecord], preds: Sequence[np.ndarray], sources: Sequence[str]) -> ResidualTable:
    return ResidualTable(
        predicted=[[round(float(v), 4) for v in p] for p in preds],
        actual=[[round(min(max(float(v), 0.0), 1.0), 4) for v in r.performance] for r in records],
        datasets=dict(Counter(r.dataset for r in records)),
        sources=list(sources),
    )
