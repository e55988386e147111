"""The registry of predictor kinds: the name on a card -> the class that reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pocsdk.errors import ConfigError
from pocsdk.prediction.predictors.agnostic import ContextAgnosticPredictor
from pocsdk.prediction.predictors.base import Predictor
from pocsdk.prediction.predictors.lightgbm import LightGBMPredictor
from pocsdk.prediction.predictors.mlp import MLPPredictor

KINDS: dict[str, type[Predictor]] = {
    "agnostic": ContextAgnosticPredictor,
    "lightgbm": LightGBMPredictor,
    "mlp": MLPPredictor,
}


def make_predictor(kind: str, **params: Any) -> Predictor:
    """A new, unfitted predictor of ``kind`` (``agnostic``, ``lightgbm`` or ``mlp``)."""
    try:
        return KINDS[kind](**params)
    except KeyError:
        raise ConfigError(f"unknown predictor kind {kind!r}; use one of {', '.join(KINDS)}") from None


def load_predictor(directory: str | Path, *, compressor: str | None = None) -> Predictor:
    """Load any predictor from its directory (the card says which kind)."""
    return Predictor.load(directory, compressor=compressor)
