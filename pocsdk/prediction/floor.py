"""The floor search: the most aggressive compression whose predicted performance meets the floor.

For one scored input, :meth:`FloorPolicy.compress` selects at every grid factor in one pass
(cheap: the compressor scored the input once, and the rates share their sorting and budget walks,
:mod:`pocsdk.compressors.grid`), computes the features once as arrays over the grid, predicts the
whole grid in one vectorised call, and takes the most aggressive factor whose prediction, at the keep rate the
compressor actually achieved there, minus the calibration margin (when a confidence is set)
still reaches the floor. When no factor does, the context passes through unchanged and the
result says so (``passthrough=True``, ``floor.met=False``).

Predictors ship in ``predictors/<compressor>/`` (repo folder for editable installs,
``pocsdk/_predictors`` inside the wheel; ``$POCSDK_PREDICTORS`` overrides both): a LightGBM
model with its card and a ``calibration.json``; ``agnostic/`` and ``mlp/`` sub-folders hold the
alternatives, selectable by name (``predictor="agnostic"``). Shipped calibrations are
cross-dataset (:func:`~pocsdk.prediction.conformal.cross_dataset_calibration`): the promise is
meant to hold on a new task no harder for the predictor than the hardest of the calibration
datasets; a few-shot calibration on the user's own task (``pocsdk fit-calibration``) usually
compresses more.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocsdk.compressors.base import Scored, Selection, TextCompressor, passthrough_selection, render
from pocsdk.compressors.grid import select_many
from pocsdk.errors import ArtifactError, ConfigError, PredictorMismatchWarning
from pocsdk.prediction.conformal import NO_PROMISE, Calibration, model_sha256
from pocsdk.prediction.decision import PASSTHROUGH, choose, choose_tradeoff
from pocsdk.prediction.features import context_features, factor_columns, factor_rows
from pocsdk.prediction.predictors import Predictor, load_predictor
from pocsdk.types import CompressionResult, FloorDecision, check_unit_interval

CALIBRATION_FILE = "calibration.json"
RULES = ("tradeoff", "margin")
PREDICTOR_NAMES = ("default", "lightgbm", "agnostic", "mlp")
FLOOR_NOT_MET = "floor_not_met"


def predictors_root() -> Path:
    """Folder of the shipped predictors (``$POCSDK_PREDICTORS``, wheel, or repo checkout)."""
    env = os.environ.get("POCSDK_PREDICTORS")
    if env:
        return Path(env)
    pkg = Path(__file__).resolve().parents[1]
    inside = pkg / "_predictors"
    if inside.is_dir():
        return inside
    return pkg.parent / "predictors"


def default_predictor_dir(compressor: str, name: str = "default") -> Path:
    base = predictors_root() / compressor
    return base if name in ("default", "lightgbm") else base / name


class FloorPolicy:
    """A predictor (+ optional calibration) that turns a floor into a compression factor.

    ``factors`` is the grid searched (ascending; defaults to the calibration's grid, else the
    predictor's training grid); ``task`` selects per-task calibration margins when known.

    ``rule`` says how a confidence is honoured (without a confidence both pick the most aggressive
    factor whose prediction reaches the floor):

    * ``"tradeoff"`` (default): per input, the factor maximising ``log(factor) + w * prediction``,
      with the weight ``w`` calibrated so that at least ``confidence`` of inputs meet the floor.
      It takes risk where compression pays most; on the real labels it compresses about a third
      more than ``"margin"`` for the same promise (benchmarks/RESULTS.md, Predictor section).
    * ``"margin"``: the most aggressive factor whose prediction minus a calibrated margin reaches
      the floor: every single input clears the floor with room to spare.
    """

    def __init__(self, predictor: Predictor, calibration: Calibration | None = None, *,
                 compressor: str | None = None, factors: Sequence[float] | None = None,
                 task: str | None = None, rule: str = "tradeoff") -> None:
        if rule not in RULES:
            raise ConfigError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        self.rule = rule
        self.predictor = predictor
        self.calibration = calibration
        self.compressor = compressor or getattr(predictor, "compressor_", None)
        grid = factors if factors is not None else (calibration.factors if calibration else
                                                    getattr(predictor, "factors_", None))
        if grid is None:
            raise ConfigError(f"predictor {type(predictor).__name__} names no factor grid: give it a factors_ "
                              "attribute (the compression factors it predicts for), or pass factors=")
        self.factors = sorted(float(f) for f in grid)
        self.task = task if task is not None else (calibration.task if calibration is not None else None)
        names = getattr(predictor, "feature_names_", None)
        self._needed: list[str] | None = list(names) if isinstance(names, list) else None
        # warned at the first promise asked for: predictions for 'other' are no calibrated ones
        self._warn_task = self.task is None and calibration is not None and getattr(predictor, "reads_task", False)
        # pocsdk's own predictors take the feature arrays as they are (no per-factor dicts)
        self._columns = isinstance(predictor, Predictor) and type(predictor).predict is Predictor.predict
        if calibration is not None:
            _check_calibration(calibration, predictor, self.compressor, self.factors)

    @classmethod
    def for_compressor(cls, name: str, predictor: Any = None, calibration: Any = None,
                       task: str | None = None, rule: str = "tradeoff") -> FloorPolicy:
        """The policy for compressor ``name``.

        ``predictor``: ``None`` (the shipped default), a predictor object, a directory, or a
        shipped name (``default``/``lightgbm``, ``agnostic``, ``mlp``). ``calibration``: ``None``
        (the ``calibration.json`` next to a loaded predictor, if any), a path or a
        :class:`Calibration`.
        """
        pred_dir: Path | None = None
        if predictor is None or (isinstance(predictor, str) and predictor in PREDICTOR_NAMES):
            pred_dir = default_predictor_dir(name, predictor or "default")
            if not (pred_dir / "card.json").is_file():
                raise ArtifactError(
                    f"no shipped predictor {predictor or 'default'!r} for compressor {name!r} (looked in {pred_dir}); "
                    "train one with `pocsdk train-predictor` and pass predictor=<directory>"
                )
            pred = load_predictor(pred_dir, compressor=name)
        elif isinstance(predictor, (str, Path)):
            pred_dir = Path(predictor)
            pred = load_predictor(pred_dir, compressor=name)
        elif isinstance(predictor, Predictor) or hasattr(predictor, "predict"):
            pred = predictor
            if getattr(pred, "compressor_", None) not in (None, name):
                raise ArtifactError(f"predictor was trained for compressor {pred.compressor_!r}, not {name!r}")
        else:
            raise ConfigError(
                f"predictor must be a name, a directory or a predictor object, not {type(predictor).__name__}"
            )

        cal: Calibration | None
        if calibration is None:
            path = pred_dir / CALIBRATION_FILE if pred_dir is not None else None
            cal = Calibration.load(path) if path is not None and path.is_file() else None
        elif isinstance(calibration, Calibration):
            cal = calibration
        elif isinstance(calibration, (str, Path)):
            cal = Calibration.load(calibration)
        else:
            raise ConfigError(f"calibration must be a path or a Calibration, not {type(calibration).__name__}")
        return cls(pred, cal, compressor=name, task=task, rule=rule)

    # -- the search ----------------------------------------------------------------------
    def margin(self, floor: float, confidence: float | None) -> float:
        if confidence is None:
            return 0.0
        if self.calibration is None:
            raise ConfigError(
                "confidence needs a calibration: pass calibration='calib.json' (pocsdk fit-calibration) "
                "or use a predictor shipped with one"
            )
        return self.calibration.margin(floor, confidence, self.task)

    def weight(self, floor: float, confidence: float) -> float:
        if self.calibration is None:
            raise ConfigError(
                "confidence needs a calibration: pass calibration='calib.json' (pocsdk fit-calibration) "
                "or use a predictor shipped with one"
            )
        return self.calibration.weight(floor, confidence, self.task)

    def predict(self, compressor: TextCompressor, scored: Scored) -> tuple[np.ndarray, list[Any]]:
        """Predicted performance over :attr:`factors` and the selection at each factor."""
        # factor 1 keeps everything: no need to ask the compressor
        asked = iter(select_many(compressor, scored, [1.0 / f for f in self.factors if f > 1.0]))
        selections = [Selection(keep=np.ones(len(scored.units), dtype=bool), keep_rate=1.0) if f <= 1.0
                      else next(asked) for f in self.factors]
        ctx = context_features(scored, self.task, self._needed)
        return self._predict_grid(ctx, factor_columns(scored, self.factors, selections)), selections

    def _predict_grid(self, ctx: dict[str, float], columns: dict[str, np.ndarray]) -> np.ndarray:
        """One prediction per grid factor."""
        if self._columns:
            pred = self.predictor.predict_columns(ctx, self.factors, columns)
        else:  # any object with ``predict``: the documented per-factor dicts
            pred = self.predictor.predict(ctx, self.factors, [factor_rows(columns)])
        out = np.asarray(pred, dtype=np.float64).reshape(-1)
        if out.shape[0] != len(self.factors):  # a custom predictor's bug, named instead of an IndexError later
            name = getattr(self.predictor, "name", type(self.predictor).__name__)
            raise ArtifactError(f"predictor {name!r} returned {out.shape[0]} predictions for a grid of "
                                f"{len(self.factors)} factors; predict must return one per factor")
        if not self._columns:  # performance never rises with the factor: a custom curve that rises is clipped
            known = ~np.isnan(out)  # a NaN stays where it was (never chosen); inf and -inf are clipped like others
            out = np.where(known, np.minimum.accumulate(np.where(known, out, np.inf)), out)
        return out

    def compress(self, compressor: TextCompressor, scored: Scored, floor: float,
                 confidence: float | None = None) -> CompressionResult:
        """Compress ``scored`` as hard as the floor allows (see the module docstring)."""
        floor = check_unit_interval("floor", floor)
        if confidence is not None:
            confidence = check_unit_interval("confidence", confidence, closed_right=False)
        if confidence is not None and self._warn_task:
            self._warn_task = False
            warnings.warn(
                f"the {getattr(self.predictor, 'name', type(self.predictor).__name__)} predictor predicts per task "
                "type and its calibration names no task (it was fitted on several tasks, or made before pocsdk "
                "recorded one): without task=... it predicts for 'other', which the promise does not cover",
                PredictorMismatchWarning, stacklevel=3)
        t0 = time.perf_counter()
        tradeoff = confidence is not None and self.rule == "tradeoff"
        weight = self.weight(floor, confidence) if tradeoff and confidence is not None else None
        margin = 0.0 if tradeoff else self.margin(floor, confidence)
        name = getattr(self.predictor, "name", type(self.predictor).__name__)
        rule = None if confidence is None else ("tradeoff" if tradeoff else "margin")
        if scored.passthrough_reason:
            result = render(scored, passthrough_selection(scored, 1.0, scored.passthrough_reason))
            result.floor = FloorDecision(
                floor=floor, confidence=confidence, predicted_performance=1.0, chosen_factor=1.0, met=True,
                reason=f"input passed through before the search ({scored.passthrough_reason})",
                predictor=name, task=self.task, margin=margin, rule=rule, weight=weight, grid=self.factors,
                predictions=[],
            )
            return result
        pred, selections = self.predict(compressor, scored)
        if weight is not None:
            i = int(choose_tradeoff(pred, self.factors, weight))
        else:
            i = int(choose(pred, self.factors, floor, margin))
        predict_ms = (time.perf_counter() - t0) * 1000.0
        if i == PASSTHROUGH:
            if weight is not None and not np.isfinite(weight):
                why = (f"the calibration cannot promise floor {floor:g} at confidence {confidence:g} for any "
                       "compression (too few calibration examples, or none kept the floor when compressed); "
                       "context passed through unchanged")
            elif weight is not None:
                why = (f"the trade-off rule calibrated for floor {floor:g} at confidence {confidence:g} "
                       f"(weight {weight:g}) keeps this input whole; context passed through unchanged")
            elif margin >= NO_PROMISE:
                why = (f"the calibration cannot promise floor {floor:g} at confidence {confidence:g} "
                       "for any compression; context passed through unchanged")
            else:
                why = (f"no compression (factor above 1x) is predicted to keep {floor:g} of the performance"
                       f"{f' with margin {margin:.3f}' if margin else ''}; context passed through unchanged")
            result = render(scored, passthrough_selection(scored, 1.0, FLOOR_NOT_MET), requested_keep_rate=1.0)
            decision = FloorDecision(
                floor=floor, confidence=confidence, predicted_performance=1.0,  # the whole context comes back
                chosen_factor=1.0, met=False, reason=why, predictor=name, task=self.task, margin=margin, rule=rule,
                weight=weight, grid=self.factors, predictions=[float(p) for p in pred],
            )
        else:
            f = self.factors[i]
            result = render(scored, selections[i], requested_keep_rate=1.0 / f)
            nxt = (f"; {self.factors[i + 1]:g}x is predicted at {pred[i + 1]:.3f}" if i + 1 < len(self.factors)
                   else "; it is the largest factor of the grid")
            if weight is not None:
                why = (f"{f:g}x (predicted {pred[i]:.3f}) maximises log(factor) + {weight:g} x predicted performance, "
                       f"the trade-off calibrated so that >= {confidence:g} of inputs keep {floor:g}{nxt}")
            else:
                why = (f"most aggressive factor with predicted performance{' - margin' if margin else ''} "
                       f">= {floor:g}: {f:g}x at {pred[i]:.3f}{f' - {margin:.3f}' if margin else ''}{nxt}")
            if result.compression_factor < 0.9 * f:  # the grid factor is a request; say what it gave
                why += (f"; achieved {result.compression_factor:.2f}x (protected text or whole units "
                        "kept it from going further)")
            decision = FloorDecision(
                floor=floor, confidence=confidence, predicted_performance=float(pred[i] - margin),
                chosen_factor=f, met=True, reason=why,
                predictor=name, task=self.task, margin=margin, rule=rule, weight=weight, grid=self.factors,
                predictions=[float(p) for p in pred],
            )
        result.floor = decision
        result.timings.predict_ms = predict_ms
        result.timings.total_ms += predict_ms
        return result


def _check_calibration(cal: Calibration, predictor: Any, compressor: str | None, factors: Sequence[float]) -> None:
    if compressor is not None and cal.compressor != compressor:
        raise ArtifactError(f"calibration is for compressor {cal.compressor!r}, not {compressor!r}")
    sha = getattr(predictor, "sha256_", "") or model_sha256(predictor)
    name = getattr(predictor, "name", None)
    if cal.predictor_sha256 and sha:
        if cal.predictor_sha256 != sha:
            raise ArtifactError(
                "calibration was fitted for another predictor model (checksum differs); "
                "re-run `pocsdk fit-calibration` with this predictor"
            )
    elif isinstance(name, str) and cal.predictor != name:  # no checksum to compare: the names must agree
        raise ArtifactError(
            f"calibration was fitted for predictor {cal.predictor!r}, not {name!r}; "
            "re-run `pocsdk fit-calibration` with this predictor"
        )
    if [float(f) for f in cal.factors] != list(factors):
        raise ArtifactError("calibration factor grid differs from the search grid")
