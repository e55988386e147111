"""The :class:`Predictor` base: the estimator API, the monotone running minimum, and persistence.

A kind of predictor subclasses :class:`Predictor` and writes only its learning and its arithmetic:
``fit``, ``_predict_rows`` (and optionally the faster ``_predict_columns``), ``_model_bytes`` /
``_load_model``, plus ``_params`` (its constructor arguments, stored on the card).
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np

from pocsdk.calibration.labels import DEFAULT_FACTORS, LabelRecord
from pocsdk.errors import ArtifactError, PocError
from pocsdk.prediction.artifacts import (
    PredictorCard,
    TrainingSummary,
    check_card,
    read_card,
    read_model_bytes,
    versions,
    write_artifact,
)
from pocsdk.prediction.features import FEATURE_NAMES
from pocsdk.prediction.predictors.design import record_context, record_factor_features

ContextRows = Mapping[str, float] | Sequence[Mapping[str, float]]
FactorRows = Sequence[Sequence[Mapping[str, float]]] | None


def monotone_over_grid(pred: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Running minimum along the factor axis (in ascending factor order), clipped to [0, 1]."""
    fl = [float(x) for x in factors]
    if all(a <= b for a, b in pairwise(fl)):  # ascending already (the floor search's grid)
        return np.clip(np.minimum.accumulate(pred, axis=-1), 0.0, 1.0)
    order = np.argsort(np.asarray(fl), kind="stable")
    out = np.minimum.accumulate(pred[..., order], axis=-1)
    res = np.empty_like(out)
    res[..., order] = out
    return np.clip(res, 0.0, 1.0)


def normalize_inputs(
    context: ContextRows, factors: Sequence[float], factor_features: FactorRows
) -> tuple[list[Mapping[str, float]], list[list[dict[str, float]]], bool]:
    """``(contexts, per-factor dicts, single)`` from :meth:`Predictor.predict`'s arguments."""
    single = isinstance(context, Mapping)
    ctx_list: list[Mapping[str, float]] = [context] if isinstance(context, Mapping) else list(context)
    fl = [max(float(f), 1.0) for f in factors]
    per: list[list[dict[str, float]]] = []
    if factor_features is None:
        for _ in ctx_list:
            per.append([{"factor": f, "log_factor": math.log(f)} for f in fl])
    else:
        ff_list = cast(
            Sequence[Sequence[Mapping[str, float]]],
            [factor_features] if single and factor_features and isinstance(factor_features[0], Mapping)
            else factor_features,
        )
        if len(ff_list) != len(ctx_list):
            raise ValueError("factor_features needs one list per context")
        for rows in ff_list:
            if len(rows) != len(fl):
                raise ValueError("factor_features needs one dict per factor")
            per.append([{"factor": f, "log_factor": math.log(f), **dict(r)} for f, r in zip(fl, rows, strict=False)])
    return ctx_list, per, single


class Predictor:
    """Shared mechanics of all predictors (see :mod:`pocsdk.prediction.predictors` for the API)."""

    kind: ClassVar[str] = "base"
    model_file: ClassVar[str] = "model.json"

    compressor_: str | None
    training_: TrainingSummary
    metrics_: dict[str, float]
    sha256_: str
    """Checksum of the model file this predictor was saved to or loaded from ("" if neither)."""

    def __init__(self) -> None:
        self.compressor_ = None
        self.training_ = TrainingSummary()
        self.metrics_ = {}
        self.sha256_ = ""

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.compressor_ or 'any'}"

    @property
    def factors_(self) -> list[float]:
        """The factor grid seen in training (the default grid if none)."""
        return self.training_.factors or list(DEFAULT_FACTORS)

    def fit(self, records: Sequence[LabelRecord], *, compressor: str | None = None,
            sample_weight: np.ndarray | None = None, groups: Sequence[str] | None = None) -> Predictor:
        """Learn from labels. ``groups`` names each record's exchangeable unit (its labels file); predictors
        that balance datasets give each group the same weight instead of each ``record.dataset``."""
        raise NotImplementedError

    def _predict_rows(self, ctx: Sequence[Mapping[str, float]], per: list[list[dict[str, float]]]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, context: ContextRows, factors: Sequence[float],
                factor_features: FactorRows = None) -> np.ndarray:
        """Predicted relative performance, ``(n_inputs, n_factors)`` or ``(n_factors,)`` for one dict."""
        ctx, per, single = normalize_inputs(context, factors, factor_features)
        flat = self._predict_rows(ctx, per).reshape(len(ctx), len(factors))
        out = monotone_over_grid(flat, factors)
        return out[0] if single else out

    def predict_columns(self, context: Mapping[str, float], factors: Sequence[float],
                        columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """:meth:`predict` for one input whose per-factor features are arrays over ``factors``.

        The floor search's fast path (no per-factor dicts); same predictions, shape ``(n_factors,)``.
        """
        cols = dict(columns)
        if "factor" not in cols or "log_factor" not in cols:  # as predict() fills them in
            fl = [max(float(f), 1.0) for f in factors]
            cols = {"factor": np.asarray(fl), "log_factor": np.array([math.log(f) for f in fl]), **columns}
        return monotone_over_grid(self._predict_columns(context, cols, len(factors)), factors)

    def _predict_columns(self, ctx: Mapping[str, float], columns: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
        lists = {k: np.asarray(v).tolist() for k, v in columns.items()}
        return self._predict_rows([ctx], [[{k: v[i] for k, v in lists.items()} for i in range(rows)]])

    def predict_records(self, records: Sequence[LabelRecord]) -> list[np.ndarray]:
        """Predictions for label records, each over its own factor grid."""
        ctx = [record_context(r) for r in records]
        per = [record_factor_features(r) for r in records]
        flat = self._predict_rows(ctx, per)
        out: list[np.ndarray] = []
        r = 0
        for rec in records:
            k = len(rec.factors)
            out.append(monotone_over_grid(flat[r:r + k], rec.factors))
            r += k
        return out

    def _require_fitted(self) -> None:
        if self.compressor_ is None:
            raise ArtifactError(f"{type(self).__name__} is not fitted: call fit(records) or load(directory)")

    # -- persistence -------------------------------------------------------------------
    def _model_bytes(self) -> bytes:
        raise NotImplementedError

    def _feature_names(self) -> list[str]:
        return list(FEATURE_NAMES)

    @property
    def reads_task(self) -> bool:
        """Does a prediction depend on the task type it is told? (Then run time must name the task the
        calibration was fitted with.)"""
        return "task_code" in self._feature_names()

    def _params(self) -> dict[str, Any]:
        return {}

    def _versions(self) -> dict[str, str]:
        return versions()

    def save(self, directory: str | Path) -> Path:
        """Write the model file and ``card.json`` into ``directory``."""
        self._require_fitted()
        assert self.compressor_ is not None
        card = PredictorCard(
            kind=self.kind,  # type: ignore[arg-type]
            compressor=self.compressor_,
            model_file=self.model_file,
            sha256="",
            feature_names=self._feature_names(),
            params=self._params(),
            training=self.training_,
            metrics=self.metrics_,
            versions=self._versions(),
        )
        out = write_artifact(directory, card, self._model_bytes())
        self.sha256_ = card.sha256
        _drop_stale_calibration(Path(out), card.sha256)
        return out

    @classmethod
    def load(cls, directory: str | Path, *, compressor: str | None = None) -> Predictor:
        """Load a predictor of this class; ``compressor`` refuses an artifact trained for another one."""
        from pocsdk.prediction.predictors.registry import KINDS  # the registry imports every kind

        card = read_card(directory)
        check_card(card, kind=None if cls is Predictor else cls.kind, compressor=compressor,
                   feature_names=list(FEATURE_NAMES))
        target = KINDS[card.kind]
        data = read_model_bytes(directory, card)
        try:
            obj = target(**init_params(target, card.params))
        except (TypeError, ValueError, PocError) as exc:  # a card whose params are of the wrong kind
            raise ArtifactError(f"{directory}: the card's params do not fit a {card.kind} predictor: {exc}") from exc
        obj.compressor_ = card.compressor
        obj.training_ = card.training
        obj.metrics_ = dict(card.metrics)
        obj.sha256_ = card.sha256
        try:
            obj._load_model(data, card)
        except ArtifactError:
            raise
        except Exception as exc:  # a model file that passed its checksum but does not parse
            raise ArtifactError(f"cannot read the {card.kind} model in {directory}: {exc}") from exc
        return obj

    def _load_model(self, data: bytes, card: PredictorCard) -> None:
        raise NotImplementedError


def init_params(cls: type[Predictor], params: Mapping[str, Any]) -> dict[str, Any]:
    """The card's ``params`` that ``cls``'s constructor accepts."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in params.items() if k in accepted}


def json_model(data: bytes) -> dict[str, Any]:
    """A JSON model file's object, or :class:`ArtifactError`."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"model file is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ArtifactError("model file must hold a JSON object")
    return obj


def _drop_stale_calibration(directory: Path, sha256: str) -> None:
    """A ``calibration.json`` beside the model vouches for the model it was fitted on: once that model is
    overwritten it is stale, and the floor search would refuse the folder (even without a confidence)."""
    path = directory / "calibration.json"
    if not path.is_file():
        return
    try:
        vouches = json.loads(path.read_text(encoding="utf-8")).get("predictor_sha256")
    except (OSError, ValueError, AttributeError, RecursionError):
        return  # not ours to judge: left as it is
    if isinstance(vouches, str) and vouches and vouches != sha256:
        path.unlink()
        warnings.warn(f"removed {path}: it was fitted for the model this save replaced; run "
                      "`pocsdk fit-calibration` for the new one", UserWarning, stacklevel=3)
