"""Baseline: keep randomly chosen units (seeded, so runs repeat) until the budget is spent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pocsdk.compressors.base import (
    Scored,
    UnitCompressor,
)


@dataclass
class RandomCompressor(UnitCompressor):
    """Random unit selection: the floor any real compressor must beat."""

    name: ClassVar[str] = "random"

    seed: int = 0

    def rank(self, unit_texts: list[str], query: str | None, scored: Scored) -> np.ndarray:
        return np.random.default_rng(self.seed).random(len(unit_texts))

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "seed": self.seed}
