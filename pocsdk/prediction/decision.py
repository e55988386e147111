"""The decision rule shared by the floor search, the calibration and the evaluation.

Given predicted relative performance over an ascending factor grid, choose the most
aggressive factor whose prediction minus a margin still reaches the floor. Factor 1 (no
compression) is never "chosen": when nothing above 1 qualifies, the input passes through.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PASSTHROUGH = -1
EPS = 1e-9


def choose(pred: np.ndarray, factors: Sequence[float], floor: float, margin: float | np.ndarray = 0.0) -> np.ndarray:
    """Index of the chosen factor per input (``-1`` = pass through).

    ``pred`` has shape ``(..., n_factors)`` over ``factors`` in ascending order; ``margin`` may be a
    scalar or an array broadcasting against ``pred[..., 0]`` (e.g. one margin per leading row).
    """
    f = np.asarray(factors, dtype=np.float64)
    m = np.asarray(margin, dtype=np.float64)[..., None]
    ok = (pred - m >= floor - EPS) & (f > 1.0 + EPS)
    any_ok = ok.any(axis=-1)
    last = ok.shape[-1] - 1 - np.argmax(ok[..., ::-1], axis=-1)
    return np.where(any_ok, last, PASSTHROUGH)


def outcome(actual: np.ndarray, achieved: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Actual performance and achieved factor of each input's decision (1.0 and 1.0 on pass-through).

    ``actual`` and ``achieved`` are ``(n, n_factors)``; ``idx`` is ``(..., n)`` from :func:`choose`.
    """
    n = actual.shape[0]
    rows = np.broadcast_to(np.arange(n), idx.shape)
    safe = np.where(idx < 0, 0, idx)
    perf = np.where(idx < 0, 1.0, actual[rows, safe])
    fac = np.where(idx < 0, 1.0, achieved[rows, safe])
    return perf, fac


def choose_tradeoff(pred: np.ndarray, factors: Sequence[float], weight: float | np.ndarray) -> np.ndarray:
    """Index per input maximising ``log(factor) + weight * prediction`` (``-1`` = pass through).

    The "trade-off" rule of the calibrated promise: instead of asking every input to clear the
    floor by a margin, it spends risk where compression pays most, and the weight is calibrated so
    that the share of inputs meeting the floor is still at least the confidence on average. A larger
    weight is more conservative. ``weight`` may be an array broadcasting against ``pred[..., 0]``.
    """
    f = np.asarray(factors, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)[..., None]
    finite = np.isfinite(w)
    score = np.log(f) + np.where(finite, w, 0.0) * pred
    valid = np.isfinite(pred)  # a factor without a (finite) prediction is never chosen
    score = np.where(valid, score, -np.inf)
    j = np.argmax(score, axis=-1)
    return np.where((f[j] <= 1.0 + EPS) | ~finite[..., 0] | ~valid.any(axis=-1), PASSTHROUGH, j)
