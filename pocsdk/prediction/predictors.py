"""Performance predictors: relative performance of one input at each compression factor.

All predictors share one small estimator API, in the scikit-learn manner (constructor
arguments stored as given, learned state ending in ``_``):

* ``fit(records)`` learns from calibration labels (:class:`~pocsdk.calibration.labels.LabelRecord`);
* ``predict(context, factors, factor_features=None)`` returns predicted relative performance,
  shape ``(n_inputs, n_factors)`` (or ``(n_factors,)`` for one context dict); it is pure and
  vectorised over all inputs and factors;
* ``save(directory)`` / ``load(directory)`` write and read a model file plus a JSON card
  (:mod:`pocsdk.prediction.artifacts`), never a pickle.

Every prediction is **non-increasing over the factor grid**: predictions are sorted by factor
and a running minimum is taken (more compression never predicts more performance). LightGBM
is also trained with monotone constraints, so the running minimum rarely changes anything.

Kinds:

* :class:`ContextAgnosticPredictor`: one isotonic (monotone decreasing) curve of performance
  over log factor per task type, plus a pooled curve for unknown tasks. The baseline.
* :class:`LightGBMPredictor`: gradient-boosted trees on context features x per-factor features.
* :class:`MLPPredictor`: a small scikit-learn MLP on the same features, evaluated in numpy at
  predict time from weights stored as JSON.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np

from pocsdk.calibration.labels import DEFAULT_FACTORS, LabelRecord
from pocsdk.errors import ArtifactError, ConfigError, LabelsError
from pocsdk.prediction.artifacts import (
    PredictorCard,
    TrainingSummary,
    check_card,
    read_card,
    read_model_bytes,
    versions,
    write_artifact,
)
from pocsdk.prediction.features import (
    CONTEXT_FEATURES,
    FACTOR_FEATURES,
    FEATURE_NAMES,
    MONOTONE,
    TASKS,
    task_code,
)

ContextRows = Mapping[str, float] | Sequence[Mapping[str, float]]
FactorRows = Sequence[Sequence[Mapping[str, float]]] | None


# -- label tables --------------------------------------------------------------------------
def record_factor_features(rec: LabelRecord) -> list[dict[str, float]]:
    """Per-factor features of a record, with factor / achieved-factor columns always filled in."""
    out: list[dict[str, float]] = []
    for i, (f, a) in enumerate(zip(rec.factors, rec.achieved_factors, strict=False)):
        ff = dict(rec.factor_features[i]) if rec.factor_features else {}
        f = max(float(f), 1.0)
        a = max(float(a), 1.0) if math.isfinite(a) else 1e6
        ff.setdefault("factor", f)
        ff.setdefault("log_factor", math.log(f))
        ff.setdefault("achieved_factor", a)
        ff.setdefault("log_achieved_factor", math.log(a))
        ff.setdefault("keep_rate", 1.0 / a)
        out.append(ff)
    return out


def record_context(rec: LabelRecord) -> dict[str, float]:
    """Context features of a record; the task code always follows the record's task."""
    ctx = dict(rec.context_features)
    ctx["task_code"] = float(task_code(rec.task))
    return ctx


def design_matrix(context: Sequence[Mapping[str, float]], per_factor: Sequence[Sequence[Mapping[str, float]]],
                  names: Sequence[str]) -> np.ndarray:
    """Rows example x factor (row-major: all factors of input 0 first); missing features are NaN."""
    n_rows = sum(len(p) for p in per_factor)
    m = np.full((n_rows, len(names)), np.nan)
    r = 0
    for ctx, pf in zip(context, per_factor, strict=False):
        ctx_vals = [ctx.get(n) for n in names]
        for ff in pf:
            for j, name in enumerate(names):
                v = ff.get(name, ctx_vals[j])
                if v is not None:
                    m[r, j] = v
            r += 1
    return m


def column_matrix(context: Mapping[str, float], columns: Mapping[str, np.ndarray], names: Sequence[str],
                  rows: int) -> np.ndarray:
    """:func:`design_matrix` of one input whose per-factor features are arrays (``rows`` factors long)."""
    m = np.empty((rows, len(names)))
    per_factor = [j for j, name in enumerate(names) if name in columns]
    shared = [j for j, name in enumerate(names) if name not in columns]
    if per_factor:
        m[:, per_factor] = np.stack([columns[names[j]] for j in per_factor], axis=1)
    if shared:  # the same value on every row (NaN when the context lacks it)
        m[:, shared] = [np.nan if (v := context.get(names[j])) is None else v for j in shared]
    return m


def training_rows(records: Sequence[LabelRecord], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, example_index)`` with one row per example x factor."""
    if not records:
        raise LabelsError("no label records to learn from")
    ctx = [record_context(r) for r in records]
    pf = [record_factor_features(r) for r in records]
    x = design_matrix(ctx, pf, names)
    y = np.concatenate([np.clip(np.asarray(r.performance, dtype=np.float64), 0.0, 1.0) for r in records])
    idx = np.concatenate([np.full(len(r.factors), i) for i, r in enumerate(records)])
    return x, y, idx


def summarize(records: Sequence[LabelRecord]) -> TrainingSummary:
    factors = sorted({float(f) for r in records for f in r.factors})
    perf = [p for r in records for p in r.performance]
    return TrainingSummary(
        examples=len(records),
        rows=sum(len(r.factors) for r in records),
        datasets=dict(Counter(r.dataset for r in records)),
        tasks=dict(Counter(r.task for r in records)),
        judges=sorted({r.judge for r in records}),
        factors=factors,
        mean_performance=float(np.mean(perf)) if perf else None,
    )


def dataset_weights(records: Sequence[LabelRecord]) -> np.ndarray:
    """Per-example weights giving every dataset the same total weight (mean weight 1)."""
    counts = Counter(r.dataset for r in records)
    w = np.array([1.0 / counts[r.dataset] for r in records])
    return w * len(records) / w.sum()


def _single_compressor(records: Sequence[LabelRecord], compressor: str | None) -> str:
    names = sorted({r.compressor for r in records})
    if compressor is not None:
        if any(n != compressor for n in names):
            raise LabelsError(f"labels are for compressors {names}, not only {compressor!r}")
        return compressor
    if len(names) != 1:
        raise LabelsError(f"labels mix compressors {names}: train one predictor per compressor")
    return names[0]


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


def _normalize_inputs(
    context: ContextRows, factors: Sequence[float], factor_features: FactorRows
) -> tuple[list[Mapping[str, float]], list[list[dict[str, float]]], bool]:
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


# -- base ----------------------------------------------------------------------------------
class Predictor:
    """Shared mechanics of all predictors (see the module docstring for the API)."""

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

    def fit(self, records: Sequence[LabelRecord], *, compressor: str | None = None) -> Predictor:
        raise NotImplementedError

    def _predict_rows(self, ctx: Sequence[Mapping[str, float]], per: list[list[dict[str, float]]]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, context: ContextRows, factors: Sequence[float],
                factor_features: FactorRows = None) -> np.ndarray:
        """Predicted relative performance, ``(n_inputs, n_factors)`` or ``(n_factors,)`` for one dict."""
        ctx, per, single = _normalize_inputs(context, factors, factor_features)
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
        return out

    @classmethod
    def load(cls, directory: str | Path, *, compressor: str | None = None) -> Predictor:
        """Load a predictor of this class; ``compressor`` refuses an artifact trained for another one."""
        card = read_card(directory)
        check_card(card, kind=None if cls is Predictor else cls.kind, compressor=compressor,
                   feature_names=list(FEATURE_NAMES))
        target = _KINDS[card.kind]
        data = read_model_bytes(directory, card)
        obj = target(**_init_params(target, card.params))
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


def _init_params(cls: type[Predictor], params: Mapping[str, Any]) -> dict[str, Any]:
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in params.items() if k in accepted}


def _json_model(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"model file is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ArtifactError("model file must hold a JSON object")
    return obj


# -- context-agnostic ----------------------------------------------------------------------
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
            sample_weight: np.ndarray | None = None) -> ContextAgnosticPredictor:
        self.compressor_ = _single_compressor(records, compressor)
        x, y, idx = training_rows(records, ["log_achieved_factor"])
        w = np.ones(len(records)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        w_rows = w[idx]
        x1 = x[:, 0]
        self.curves_ = {"*": _isotonic(x1, y, w_rows)}
        tasks = np.array([task_code(r.task) for r in records])[idx]
        for code, count in Counter(task_code(r.task) for r in records).items():
            if count >= self.min_task_examples:
                mask = tasks == code
                self.curves_[TASKS[code]] = _isotonic(x1[mask], y[mask], w_rows[mask])
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
        obj = _json_model(data)
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


def _isotonic(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[list[float], list[float]]:
    from sklearn.isotonic import IsotonicRegression

    ok = np.isfinite(x) & np.isfinite(y)
    iso = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(x[ok], y[ok], sample_weight=w[ok])
    kx = np.asarray(iso.X_thresholds_, dtype=np.float64)
    ky = np.asarray(iso.y_thresholds_, dtype=np.float64)
    return [round(float(a), 6) for a in kx], [round(float(a), 6) for a in ky]


# -- LightGBM ------------------------------------------------------------------------------
LIGHTGBM_FEATURES: tuple[str, ...] = (
    *FACTOR_FEATURES,
    "rel_entropy", "rel_top1_share", "rel_topk_share", "rel_top10pct_share", "rel_gini",
    "query_overlap", "has_query",
)
"""Default LightGBM features: what transfers across datasets.

Leave-one-dataset-out on the real labels (extractive, 5 datasets) chose this set: adding sizes,
redundancy and the task code made the trees learn dataset identities (pooled unseen MAE 0.256 with
all features vs 0.238 with these; the agnostic curves: 0.255). On the regenerated labels
(``/work/labels_v2``) dropping the two size-like features ``query_terms`` and ``mean_unit_tokens``
as well lowered the unseen MAE from 0.239 to 0.227 (agnostic 0.241); on the older labels it was a tie.
"""

class LightGBMPredictor(Predictor):
    """Gradient-boosted trees over (context features, per-factor features).

    Cross-entropy objective (labels are relative performance in [0, 1]); monotone constraints
    from :data:`~pocsdk.prediction.features.MONOTONE` (-1 on the factor, +1 on what is kept).
    Saved as LightGBM's native text model (``model.txt``).
    """

    kind: ClassVar[str] = "lightgbm"
    model_file: ClassVar[str] = "model.txt"

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.05, num_leaves: int = 15,
                 min_child_samples: int = 20, feature_fraction: float = 0.9, bagging_fraction: float = 0.8,
                 reg_lambda: float = 1.0, balance_datasets: bool = True, num_threads: int = 1,
                 seed: int = 0, features: Sequence[str] | None = None, residual: bool = False,
                 base_curve: Sequence[Sequence[float]] | None = None) -> None:
        super().__init__()
        self.residual = residual
        self.base_curve = [list(map(float, c)) for c in base_curve] if base_curve is not None else None
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.reg_lambda = reg_lambda
        self.balance_datasets = balance_datasets
        self.num_threads = num_threads
        self.seed = seed
        self.features = list(features) if features is not None else None
        self.booster_: Any = None

    @property
    def feature_names_(self) -> list[str]:
        """Features the trees use: ``features`` if given, else :data:`LIGHTGBM_FEATURES`."""
        names = self.features if self.features is not None else list(LIGHTGBM_FEATURES)
        unknown = [n for n in names if n not in FEATURE_NAMES]
        if unknown:
            raise ConfigError(f"unknown features: {', '.join(unknown)}")
        return names

    def _lgb_params(self) -> dict[str, Any]:
        names = self.feature_names_
        return {
            "objective": "cross_entropy",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "lambda_l2": self.reg_lambda,
            "monotone_constraints": [MONOTONE.get(n, 0) for n in names],
            "monotone_constraints_method": "advanced",
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "verbose": -1,
        }

    def fit(self, records: Sequence[LabelRecord], *, compressor: str | None = None,
            sample_weight: np.ndarray | None = None) -> LightGBMPredictor:
        import lightgbm as lgb

        self.compressor_ = _single_compressor(records, compressor)
        names = self.feature_names_
        x, y, idx = training_rows(records, names)
        w = sample_weight if sample_weight is not None else (
            dataset_weights(records) if self.balance_datasets else np.ones(len(records)))
        init = None
        if self.residual:
            lx, _, _ = training_rows(records, ["log_achieved_factor"])
            kx, ky = _isotonic(lx[:, 0], y, np.asarray(w, dtype=np.float64)[idx])
            self.base_curve = [kx, ky]
            init = self._base_logit(lx[:, 0])
        ds = lgb.Dataset(x, label=y, weight=np.asarray(w)[idx], feature_name=names, init_score=init,
                         categorical_feature=["task_code"] if "task_code" in names else [], free_raw_data=True)
        self.booster_ = lgb.train(self._lgb_params(), ds, num_boost_round=self.n_estimators)
        self.training_ = summarize(records)
        return self

    def _predict_rows(self, ctx: Sequence[Mapping[str, float]], per: list[list[dict[str, float]]]) -> np.ndarray:
        self._require_fitted()
        x = design_matrix(ctx, per, self.feature_names_)
        lx = np.array([ff.get("log_achieved_factor", ff.get("log_factor", 0.0)) for pf in per for ff in pf]
                      ) if self.residual else None
        return self._predict_matrix(x, lx)

    def _predict_columns(self, ctx: Mapping[str, float], columns: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
        self._require_fitted()
        x = column_matrix(ctx, columns, self.feature_names_, rows)
        lx = np.asarray(columns.get("log_achieved_factor", columns["log_factor"])) if self.residual else None
        return self._predict_matrix(x, lx)

    def _predict_matrix(self, x: np.ndarray, log_achieved: np.ndarray | None) -> np.ndarray:
        """Trees on the design matrix; a ``residual`` model adds the base curve at ``log_achieved``."""
        if log_achieved is None:
            return np.asarray(self.booster_.predict(x, num_threads=self.num_threads), dtype=np.float64)
        raw = np.asarray(self.booster_.predict(x, raw_score=True, num_threads=self.num_threads), dtype=np.float64)
        return np.asarray(1.0 / (1.0 + np.exp(-(raw + self._base_logit(log_achieved)))), dtype=np.float64)

    def _base_logit(self, log_achieved: np.ndarray) -> np.ndarray:
        """Logit of the pooled context-agnostic curve: the trees of a ``residual`` model correct it."""
        if self.base_curve is None:
            raise ArtifactError("residual LightGBM model has no base curve; retrain")
        p = np.clip(np.interp(log_achieved, self.base_curve[0], self.base_curve[1]), 0.01, 0.99)
        return np.asarray(np.log(p / (1.0 - p)), dtype=np.float64)

    def _feature_names(self) -> list[str]:
        return self.feature_names_

    def _params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n_estimators", "learning_rate", "num_leaves", "min_child_samples",
                                             "feature_fraction", "bagging_fraction", "reg_lambda",
                                             "balance_datasets", "num_threads", "seed", "features", "residual",
                                             "base_curve")}

    def _versions(self) -> dict[str, str]:
        import lightgbm as lgb

        return versions(lightgbm=lgb.__version__)

    def _model_bytes(self) -> bytes:
        return str(self.booster_.model_to_string()).encode("utf-8")

    def _load_model(self, data: bytes, card: PredictorCard) -> None:
        import lightgbm as lgb

        if self.features is None:  # cards written before the default set changed carry their own list
            self.features = list(card.feature_names)
        if card.feature_names != self.feature_names_:
            raise ArtifactError("LightGBM card features differ from its parameters; retrain")
        text = data.decode("utf-8")
        if not text.startswith("tree\n"):
            raise ArtifactError("model.txt is not a LightGBM text model")
        try:
            booster = lgb.Booster(model_str=text)
        except lgb.basic.LightGBMError as exc:
            raise ArtifactError(f"LightGBM cannot parse model.txt: {exc}") from exc
        if list(booster.feature_name()) != card.feature_names:
            raise ArtifactError("LightGBM model features differ from its card")
        self.booster_ = booster


# -- MLP -----------------------------------------------------------------------------------
_MLP_NUMERIC = [n for n in FEATURE_NAMES if n != "task_code"]


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
            sample_weight: np.ndarray | None = None) -> MLPPredictor:
        from sklearn.neural_network import MLPRegressor

        self.compressor_ = _single_compressor(records, compressor)
        x, y, _ = training_rows(records, FEATURE_NAMES)
        z = self._inputs(x)
        self.mean_ = np.nanmean(z, axis=0)
        self.mean_ = np.nan_to_num(self.mean_)
        sd = np.nanstd(z, axis=0)
        self.scale_ = np.where(np.isfinite(sd) & (sd > 1e-9), sd, 1.0)
        zs = np.nan_to_num((z - self.mean_) / self.scale_)
        mlp = MLPRegressor(hidden_layer_sizes=self.hidden, alpha=self.alpha, max_iter=self.max_iter,
                           early_stopping=True, random_state=self.seed)
        mlp.fit(zs, y)
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
        obj = _json_model(data)
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


_KINDS: dict[str, type[Predictor]] = {
    "agnostic": ContextAgnosticPredictor,
    "lightgbm": LightGBMPredictor,
    "mlp": MLPPredictor,
}


def make_predictor(kind: str, **params: Any) -> Predictor:
    """A new, unfitted predictor of ``kind`` (``agnostic``, ``lightgbm`` or ``mlp``)."""
    try:
        return _KINDS[kind](**params)
    except KeyError:
        raise ConfigError(f"unknown predictor kind {kind!r}; use one of {', '.join(_KINDS)}") from None


def load_predictor(directory: str | Path, *, compressor: str | None = None) -> Predictor:
    """Load any predictor from its directory (the card says which kind)."""
    return Predictor.load(directory, compressor=compressor)


__all__ = [
    "CONTEXT_FEATURES",
    "FACTOR_FEATURES",
    "ContextAgnosticPredictor",
    "LightGBMPredictor",
    "MLPPredictor",
    "Predictor",
    "load_predictor",
    "make_predictor",
]
