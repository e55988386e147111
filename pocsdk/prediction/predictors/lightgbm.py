"""The LightGBM predictor: gradient-boosted trees on context features x per-factor features."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np

from pocsdk.calibration.labels import LabelRecord
from pocsdk.errors import ArtifactError, ConfigError
from pocsdk.prediction.artifacts import PredictorCard, versions
from pocsdk.prediction.features import COVERAGE_FEATURES, FACTOR_FEATURES, FEATURE_NAMES, MONOTONE
from pocsdk.prediction.predictors.agnostic import isotonic_curve
from pocsdk.prediction.predictors.base import Predictor
from pocsdk.prediction.predictors.design import (
    check_features,
    check_groups,
    column_matrix,
    dataset_weights,
    design_matrix,
    group_weights,
    single_compressor,
    summarize,
    training_rows,
)

LIGHTGBM_FEATURES: tuple[str, ...] = (
    *FACTOR_FEATURES,
    *COVERAGE_FEATURES,
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
            sample_weight: np.ndarray | None = None, groups: Sequence[str] | None = None) -> LightGBMPredictor:
        import lightgbm as lgb

        self.compressor_ = single_compressor(records, compressor)
        groups = check_groups(records, groups)
        names = self.feature_names_
        check_features(records, names)
        x, y, idx = training_rows(records, names)
        if sample_weight is not None:
            w = sample_weight
        elif not self.balance_datasets:
            w = np.ones(len(records))
        else:
            w = group_weights(groups) if groups is not None else dataset_weights(records)
        init = None
        if self.residual:
            lx, _, _ = training_rows(records, ["log_achieved_factor"])
            kx, ky = isotonic_curve(lx[:, 0], y, np.asarray(w, dtype=np.float64)[idx])
            self.base_curve = [kx, ky]
            init = self._base_logit(lx[:, 0])
        ds = lgb.Dataset(x, label=y, weight=np.asarray(w)[idx], feature_name=names, init_score=init,
                         categorical_feature=["task_code"] if "task_code" in names else [], free_raw_data=True)
        self.booster_ = lgb.train(self._lgb_params(), ds, num_boost_round=self.n_estimators)
        self.training_ = summarize(records, groups if self.balance_datasets and sample_weight is None else None)
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
        check_tree_sizes(text)
        check_tree_structure(text)
        try:
            booster = lgb.Booster(model_str=text)
        except lgb.basic.LightGBMError as exc:
            raise ArtifactError(f"LightGBM cannot parse model.txt: {exc}") from exc
        if list(booster.feature_name()) != card.feature_names:
            raise ArtifactError("LightGBM model features differ from its card")
        self.booster_ = booster


def check_tree_sizes(text: str) -> None:
    """The trees a LightGBM text model's header announces are all there, whole.

    LightGBM's parser jumps by the header's ``tree_sizes`` without bounds checks: a model cut short
    (with a checksum recomputed to match) crashes the process instead of raising.
    """
    header = re.search(r"^tree_sizes=([0-9 ]*)$", text, flags=re.MULTILINE)
    start = text.find("Tree=0")
    end = text.find("end of trees")
    if header is None or end < 0 or (start < 0 and header.group(1).strip()):
        raise ArtifactError("model.txt is not a whole LightGBM text model (tree sizes or end marker missing)")
    announced = sum(int(n) for n in header.group(1).split())
    if start >= 0 and end - start != announced:
        raise ArtifactError(f"model.txt is cut short or padded: its header announces {announced} bytes of trees, "
                            f"it holds {end - start}")


MAX_LEAVES = 1 << 17


def check_tree_structure(text: str) -> None:
    """Every tree of a LightGBM text model is a well-formed binary tree over the model's features.

    LightGBM trusts these fields: a child index that points back up loops forever in C at the first
    prediction, and array lengths that disagree with ``num_leaves`` abort the process while it parses. A
    model whose checksum was recomputed after such an edit is refused here instead. Categorical splits
    (``task_code``) must point into tables of the size ``num_cat`` gives; linear trees, which pocsdk never
    trains, are refused.
    """
    header = re.search(r"^max_feature_idx=(-?\d+)$", text, flags=re.MULTILINE)
    if header is None:
        raise ArtifactError("model.txt does not say how many features it reads (max_feature_idx)")
    n_features = int(header.group(1)) + 1
    start, end = text.find("Tree="), text.find("end of trees")
    if start < 0:
        return
    for block in text[start:end].split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split("=", 1) for line in block.strip().splitlines() if "=" in line)
        name = block.strip().splitlines()[0]
        _check_tree(name, fields, n_features)


def _ints(fields: dict[str, str], key: str, name: str) -> list[int]:
    try:
        return [int(v) for v in fields.get(key, "").split()]
    except ValueError:
        raise ArtifactError(f"model.txt {name}: {key} holds something other than integers") from None


def _check_tree(name: str, fields: dict[str, str], n_features: int) -> None:
    try:
        leaves = int(fields["num_leaves"])
        categorical = int(fields.get("num_cat", "0"))
    except (KeyError, ValueError):
        raise ArtifactError(f"model.txt {name}: num_leaves / num_cat missing or not integers") from None
    if not 1 <= leaves <= MAX_LEAVES:
        raise ArtifactError(f"model.txt {name}: num_leaves={leaves} is out of range")
    if fields.get("is_linear", "0").strip() != "0":
        raise ArtifactError(f"model.txt {name}: linear trees are not pocsdk predictors")
    if not 0 <= categorical < leaves:
        raise ArtifactError(f"model.txt {name}: num_cat={categorical} is out of range")
    if categorical:  # task_code splits: their bitsets must be where num_cat says
        bounds = _ints(fields, "cat_boundaries", name)
        words = _ints(fields, "cat_threshold", name)
        if (len(bounds) != categorical + 1 or bounds[0] != 0 or any(b < a for a, b in pairwise(bounds))
                or len(words) != bounds[-1] or any(not 0 <= w < 1 << 32 for w in words)):
            raise ArtifactError(f"model.txt {name}: its categorical tables do not match num_cat={categorical}")
    if len(fields.get("leaf_value", "").split()) != leaves:
        raise ArtifactError(f"model.txt {name}: leaf_value does not hold num_leaves={leaves} values")
    if leaves == 1:
        return
    arrays = {key: _ints(fields, key, name) for key in ("split_feature", "decision_type", "left_child", "right_child")}
    arrays_f = fields.get("threshold", "").split()
    if any(len(v) != leaves - 1 for v in arrays.values()) or len(arrays_f) != leaves - 1:
        raise ArtifactError(f"model.txt {name}: its split arrays do not hold num_leaves - 1 = {leaves - 1} values")
    if any(not 0 <= f < n_features for f in arrays["split_feature"]):
        raise ArtifactError(f"model.txt {name}: a split reads a feature the model does not have")
    for d, t in zip(arrays["decision_type"], arrays_f, strict=True):
        if d & 1:  # a categorical split's threshold indexes the tree's categorical tables
            try:
                index = float(t)
            except ValueError:
                raise ArtifactError(f"model.txt {name}: a threshold is no number") from None
            if not (index.is_integer() and 0 <= index < categorical):
                raise ArtifactError(f"model.txt {name}: a categorical split points outside its num_cat={categorical} "
                                    "tables")
    seen_nodes, seen_leaves, stack = {0}, set(), [0]
    while stack:  # every internal node and leaf reached exactly once from the root: a tree, no cycles
        node = stack.pop()
        for child in (arrays["left_child"][node], arrays["right_child"][node]):
            if child >= 0:
                if child >= leaves - 1 or child in seen_nodes:
                    raise ArtifactError(f"model.txt {name}: node {node} points to node {child}, which is no tree")
                seen_nodes.add(child)
                stack.append(child)
            else:
                leaf = ~child
                if leaf >= leaves or leaf in seen_leaves:
                    raise ArtifactError(f"model.txt {name}: node {node} points to leaf {leaf}, which is no tree")
                seen_leaves.add(leaf)
    if len(seen_nodes) != leaves - 1 or len(seen_leaves) != leaves:
        raise ArtifactError(f"model.txt {name}: some nodes or leaves are not reached from the root")
