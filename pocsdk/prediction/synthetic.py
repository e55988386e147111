"""Synthetic label records with a known ground truth, for tests and quick experiments.

Each example has a hidden "difficulty" visible (noisily) through its features; the chance that
compression at factor ``f`` keeps the answer falls with ``log f`` and with difficulty. Labels
are Bernoulli draws (like a retention judge) or the probabilities themselves (``binary=False``).
"""

from __future__ import annotations

import math

import numpy as np

from pocsdk.calibration.labels import DEFAULT_FACTORS, LabelRecord
from pocsdk.prediction.features import CONTEXT_FEATURES, task_code


def true_curve(difficulty: float, factors: np.ndarray) -> np.ndarray:
    """Probability that the answer survives at each factor (non-increasing in the factor)."""
    z = 4.0 - 2.2 * difficulty * np.log(factors) - 0.5 * difficulty
    p = 1.0 / (1.0 + np.exp(-z))
    p[factors <= 1.0] = 1.0
    return p


def synthetic_records(n: int, *, seed: int = 0, compressor: str = "extractive", dataset: str = "synth",
                      task: str = "qa", binary: bool = True, shift: float = 0.0,
                      factors: tuple[float, ...] = DEFAULT_FACTORS) -> list[LabelRecord]:
    """``n`` records; ``shift`` makes the dataset harder on average (for leave-one-dataset-out tests)."""
    rng = np.random.default_rng(seed)
    f = np.asarray(factors, dtype=np.float64)
    out: list[LabelRecord] = []
    for i in range(n):
        difficulty = float(np.clip(rng.gamma(2.0, 0.5) + shift, 0.05, 6.0))
        p = true_curve(difficulty, f)
        perf = (rng.random(f.size) < p).astype(float) if binary else p
        perf[f <= 1.0] = 1.0
        achieved = f * rng.uniform(0.97, 1.05, f.size)
        achieved[f <= 1.0] = 1.0
        ctx = {name: float(rng.normal()) for name in CONTEXT_FEATURES}
        ctx["rel_gini"] = float(1.0 / (1.0 + difficulty) + rng.normal(0, 0.05))
        ctx["rel_entropy"] = float(difficulty / 6.0 + rng.normal(0, 0.05))
        ctx["task_code"] = float(task_code(task))
        ff = []
        for fa, a in zip(f, achieved, strict=True):
            mass = float(np.clip(math.exp(-0.3 * difficulty * math.log(a)), 0.0, 1.0))
            ff.append({"factor": float(fa), "log_factor": math.log(fa), "achieved_factor": float(a),
                       "log_achieved_factor": math.log(a), "keep_rate": 1.0 / float(a), "mass_kept": mass,
                       "top1_kept": 1.0 if mass > 0.5 else 0.0, "topk_kept": mass, "skim_mass": 0.0,
                       "skim_token_share": 0.0, "protected_share": 0.0,
                       "qcov_kept": mass, "best_kept_unit_qcov": 0.5 * mass,
                       "best_dropped_unit_qcov": 0.5 * (1.0 - mass), "qcov_gap": mass - 0.5})
        out.append(LabelRecord(
            id=f"{dataset}-{i}", dataset=dataset, task=task, compressor=compressor, judge="synthetic",
            factors=list(factors), achieved_factors=[float(a) for a in achieved], performance=[float(x) for x in perf],
            full_score=1.0, original_tokens=1000, context_features=ctx, factor_features=ff,
            metadata={"difficulty": difficulty},
        ))
    return out
