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

Kinds, one module each:

* :class:`ContextAgnosticPredictor` (:mod:`.agnostic`): one isotonic (monotone decreasing) curve of
  performance over log factor per task type, plus a pooled curve for unknown tasks. The baseline.
* :class:`LightGBMPredictor` (:mod:`.lightgbm`): gradient-boosted trees on context features x
  per-factor features.
* :class:`MLPPredictor` (:mod:`.mlp`): a small scikit-learn MLP on the same features, evaluated in
  numpy at predict time from weights stored as JSON.

The shared mechanics are in :mod:`.base` (the :class:`Predictor` base, the running minimum,
persistence), label records become design matrices in :mod:`.design`, and :mod:`.registry` maps
the kind on a card to its class. A new kind is one new module plus one registry entry.
"""

from pocsdk.prediction.features import CONTEXT_FEATURES, FACTOR_FEATURES
from pocsdk.prediction.predictors.agnostic import ContextAgnosticPredictor
from pocsdk.prediction.predictors.base import (
    ContextRows,
    FactorRows,
    Predictor,
    monotone_over_grid,
)
from pocsdk.prediction.predictors.design import (
    check_features,
    check_groups,
    column_matrix,
    dataset_weights,
    design_matrix,
    group_weights,
    record_context,
    record_factor_features,
    summarize,
    training_rows,
)
from pocsdk.prediction.predictors.lightgbm import LIGHTGBM_FEATURES, LightGBMPredictor
from pocsdk.prediction.predictors.mlp import MLPPredictor
from pocsdk.prediction.predictors.registry import load_predictor, make_predictor

__all__ = [
    "CONTEXT_FEATURES",
    "FACTOR_FEATURES",
    "LIGHTGBM_FEATURES",
    "ContextAgnosticPredictor",
    "ContextRows",
    "FactorRows",
    "LightGBMPredictor",
    "MLPPredictor",
    "Predictor",
    "check_features",
    "check_groups",
    "column_matrix",
    "dataset_weights",
    "design_matrix",
    "group_weights",
    "load_predictor",
    "make_predictor",
    "monotone_over_grid",
    "record_context",
    "record_factor_features",
    "summarize",
    "training_rows",
]
