"""The context-agnostic predictor: one isotonic curve of performance over log factor per task type.

The baseline every context-aware predictor has to beat; its pooled curve is also the base curve of a
``residual`` :class:`~pocsdk.prediction.predictors.lightgbm.LightGBMPredictor`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from pocsdk.calibration.labels import LabelRecord
from pocsdk.errors import ArtifactError
from pocsdk.prediction.artifacts import PredictorCard
from pocsdk.prediction.features import TASKS, task_code
from pocsdk.prediction.predictors.base import Predictor, json_model
from pocsdk.prediction.predictors.design import check_groups, single_compressor, summarize, training_rows


class ContextAgnosticPredictor(Predictor):
    """One monotone decreasing curve of performance over log(achieved factor) per task type.

    Fitted by isotonic regression; tasks with fewer than ``min_task_examples`` examples and
    unknown tasks use the pooled curve. The context is ignored except for its task code.
    """

    kind: ClassVar[str] = "agnostic"
    model_file: ClassVar[str] = "curves.json"

    def __init__(self, min_task_examples: int = 30) -> None:
        super().__init__()
        self.min_task_examples = min_task_examples
        self.curves_: dict[str, tuple[list[float], list[float]]] = {}

    def fit(self, records: Sequence[LabelRecord], *, compressor: str | None = None,
            sample_weight: np.ndarray | None = None, groups: Sequence[str] | None = None) -> ContextAgnosticPredictor:
        """Isotonic curves, weighted by ``sample_weight`` (default: every record alike; ``groups`` is not used)."""
        self.compressor_ = single_compressor(records, compressor)
        check_groups(records, groups)
        x, y, idx = training_rows(records, ["log_achieved_factor"])
        w = np.ones(len(records)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        w_rows = w[idx]
        x1 = x[:, 0]
        self.curves_ = {"*": isotonic_curve(x1, y, w_rows)}
        tasks = np.array([task_code(r.task) for r in records])[idx]
        for code, count in Counter(task_code(r.task) for r in records).items():
            if count >= self.min_task_examples:
                mask = tasks == code
                self.curves_[TASKS[code]] = isotonic_curve(x1[mask], y[mask], w_rows[mask])
        self.training_ = summarize(records)
        return self

    def _predict_rows(self, ctx: Sequence[Mapping[str, float]], per: list[list[dict[str, float]]]) -> np.ndarray:
        self._require_fitted()
        out: list[np.ndarray] = []
        for c, pf in zip(ctx, per, strict=False):
            lx = np.array([ff.get("log_achieved_factor", ff["log_factor"]) for ff in pf], dtype=np.float64)
            out.append(np.interp(lx, *self._curve(c)))
        return np.concatenate(out) if out else np.zeros(0)

    def _predict_columns(self, ctx: Mapping[str, float], columns: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
        self._require_fitted()
        lx = columns.get("log_achieved_factor", columns["log_factor"])
        return np.interp(np.asarray(lx, dtype=np.float64), *self._curve(ctx))

    def _curve(self, ctx: Mapping[str, float]) -> tuple[list[float], list[float]]:
        """The curve of the context's task type (the pooled one for unknown or rare tasks)."""
        code = int(ctx.get("task_code", TASKS.index("other")))
        name = TASKS[code] if 0 <= code < len(TASKS) else "other"
        return self.curves_.get(name, self.curves_["*"])

    def _feature_names(self) -> list[str]:
        return ["log_achieved_factor", "task_code"]

    def _params(self) -> dict[str, Any]:
        return {"min_task_examples": self.min_task_examples}

    def _model_bytes(self) -> bytes:
        payload = {k: {"log_factor": list(v[0]), "performance": list(v[1])} for k, v in self.curves_.items()}
        return json.dumps({"curves": payload}, indent=1).encode("utf-8")

    def _load_model(self, data: bytes, card: PredictorCard) -> None:
        obj = json_model(data)
        curves = obj.get("curves")
        if not isinstance(curves, dict) or "*" not in curves:
            raise ArtifactError("agnostic model needs a pooled curve '*'")
        self.curves_ = {}
        for k, v in curves.items():
            kx = [float(a) for a in v["log_factor"]]
            ky = [float(a) for a in v["performance"]]
            if len(kx) != len(ky) or not kx:
                raise ArtifactError(f"agnostic curve {k!r} is malformed")
            self.curves_[str(k)] = (kx, ky)


def isotonic_curve(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[list[float], list[float]]:
    """Knots ``(x, y)`` of the weighted decreasing isotonic fit of ``y`` on ``x`` (non-finite rows dropped)."""
    from sklearn.isotonic import IsotonicRegression

    ok = np.isfinite(x) & np.isfinite(y)
    iso = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(x[ok], y[ok], sample_weight=w[ok])
    kx = np.asarray(iso.X_thresholds_, dtype=np.float64)
    ky = np.asarray(iso.y_thresholds_, dtype=np.float64)
    return [round(float(a), 6) for a in kx], [round(float(a), 6) for a in ky]
