"""Baseline: keep the beginning of the context until the budget is spent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pocsdk.compressors.base import (
    Scored,
    UnitCompressor,
)


@dataclass
class TruncateCompressor(UnitCompressor):
    """Keeps units in reading order (protected ones always) until the budget is spent."""

    name: ClassVar[str] = "truncate"

    def rank(self, unit_texts: list[str], query: str | None, scored: Scored) -> np.ndarray:
        n = len(unit_texts)
        return np.linspace(1.0, 0.0, n, endpoint=False) if n else np.zeros(0)
