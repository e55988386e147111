"""The MLP predictor: a small scikit-learn MLP, evaluated in numpy from weights stored as JSON."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from pocsdk.calibration.labels import LabelRecord
from pocsdk.errors import ArtifactError, ConfigError
from pocsdk.prediction.artifacts import PredictorCard, versions
from pocsdk.prediction.features import CONTEXT_FEATURES, FACTOR_FEATURES, FEATURE_NAMES, TASKS
from pocsdk.prediction.predictors.base import Predictor, json_model
from pocsdk.prediction.predictors.design import (
    check_groups,
    column_matrix,
    design_matrix,
    single_compressor,
    summarize,
    training_rows,
)

_MLP_NUMERIC = [n for n in (*CONTEXT_FEATURES, *FACTOR_FEATURES) if n != "task_code"]
"""The inputs it was designed with (the coverage features came later; a new input would orphan saved MLPs)."""


class MLPPredictor(Predictor):
    """A small MLP (scikit-learn ``MLPRegressor``) on standardised features + one-hot task.

    Weights are stored as JSON (``mlp.json``: input names, standardisation, coefs, intercepts)
    and evaluated in numpy; missing features become the training mean. Monotone over the grid
    by the running minimum that every predictor applies.
    """

    kind: ClassVar[str] = "mlp"
    model_file: ClassVar[str] = "mlp.json"

    def __init__(self, hidden: tuple[int, ...] | list[int] = (32, 16), alpha: float = 1e-3,
                 max_iter: int = 80, seed: int = 0) -> None:
        super().__init__()
        self.hidden = tuple(hidden)
        self.alpha = alpha
        self.max_iter = max_iter
        self.seed = seed
        self.mean_: np.ndarray = np.zeros(0)
        self.scale_: np.ndarray = np.ones(0)
        self.coefs_: list[np.ndarray] = []
        self.intercepts_: list[np.ndarray] = []

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        num = x[:, [FEATURE_NAMES.index(n) for n in _MLP_NUMERIC]]
        codes = np.nan_to_num(x[:, FEATURE_NAMES.index("task_code")], nan=TASKS.index("other")).astype(int)
        onehot = np.zeros((x.shape[0], len(TASKS)))
        onehot[np.arange(x.shape[0]), np.clip(codes, 0, len(TASKS) - 1)] = 1.0
        return np.hstack([num, onehot])

    def fit(self, records: Sequence[LabelRecord], *, compressor: str | None = None,
            sample_weight: np.ndarray | None = None, groups: Sequence[str] | None = None) -> MLPPredictor:
        """Unweighted unless ``sample_weight`` (one per record) is given; ``groups`` is not used."""
        from sklearn.neural_network import MLPRegressor

        self.compressor_ = single_compressor(records, compressor)
        check_groups(records, groups)
        x, y, idx = training_rows(records, FEATURE_NAMES)
        fit_kwargs: dict[str, Any] = {}
        if sample_weight is not None:
            if "sample_weight" not in inspect.signature(MLPRegressor.fit).parameters:
                raise ConfigError("sample_weight for the MLP needs scikit-learn >= 1.7")
            fit_kwargs["sample_weight"] = np.asarray(sample_weight, dtype=np.float64)[idx]
        z = self._inputs(x)
        self.mean_ = np.nanmean(z, axis=0)
        self.mean_ = np.nan_to_num(self.mean_)
        sd = np.nanstd(z, axis=0)
        self.scale_ = np.where(np.isfinite(sd) & (sd > 1e-9), sd, 1.0)
        zs = np.nan_to_num((z - self.mean_) / self.scale_)
        mlp = MLPRegressor(hidden_layer_sizes=self.hidden, alpha=self.alpha, max_iter=self.max_iter,
                           early_stopping=True, random_state=self.seed)
        mlp.fit(zs, y, **fit_kwargs)
        self.coefs_ = [np.asarray(c) for c in mlp.coefs_]
        self.intercepts_ = [np.asarray(b) for b in mlp.intercepts_]
        self.training_ = summarize(records)
        return self

    def _predict_rows(self, ctx: Sequence[Mapping[str, float]], per: list[list[dict[str, float]]]) -> np.ndarray:
        self._require_fitted()
        return self._forward(design_matrix(ctx, per, FEATURE_NAMES))

    def _predict_columns(self, ctx: Mapping[str, float], columns: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
        self._require_fitted()
        return self._forward(column_matrix(ctx, columns, FEATURE_NAMES, rows))

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """The network on a design matrix over :data:`FEATURE_NAMES`."""
        h = np.nan_to_num((self._inputs(x) - self.mean_) / self.scale_)
        for i, (w, b) in enumerate(zip(self.coefs_, self.intercepts_, strict=False)):
            h = h @ w + b
            if i < len(self.coefs_) - 1:
                h = np.maximum(h, 0.0)
        return np.clip(h[:, 0], 0.0, 1.0)

    def _params(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), "alpha": self.alpha, "max_iter": self.max_iter, "seed": self.seed}

    def _versions(self) -> dict[str, str]:
        import sklearn

        return versions(scikit_learn=sklearn.__version__)

    def _model_bytes(self) -> bytes:
        payload = {
            "inputs": [*_MLP_NUMERIC, *(f"task={t}" for t in TASKS)],
            "activation": "relu",
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coefs": [c.tolist() for c in self.coefs_],
            "intercepts": [b.tolist() for b in self.intercepts_],
        }
        return json.dumps(payload).encode("utf-8")

    def _load_model(self, data: bytes, card: PredictorCard) -> None:
        obj = json_model(data)
        expected = [*_MLP_NUMERIC, *(f"task={t}" for t in TASKS)]
        if obj.get("inputs") != expected:
            raise ArtifactError("MLP inputs differ from this pocsdk's features; retrain")
        self.mean_ = np.asarray(obj["mean"], dtype=np.float64)
        self.scale_ = np.asarray(obj["scale"], dtype=np.float64)
        self.coefs_ = [np.asarray(c, dtype=np.float64) for c in obj["coefs"]]
        self.intercepts_ = [np.asarray(b, dtype=np.float64) for b in obj["intercepts"]]
        width = len(expected)
        for w, b in zip(self.coefs_, self.intercepts_, strict=False):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise ArtifactError("MLP weight shapes are inconsistent")
            width = w.shape[1]
        if width != 1 or self.mean_.shape != (len(expected),) or self.scale_.shape != (len(expected),):
            raise ArtifactError("MLP weight shapes are inconsistent")
