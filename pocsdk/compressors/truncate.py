"""Baseline: fill the budget in reading order.

Not a hard cut at one point: a unit that does not fit is skipped and later, shorter units still fill what
is left (as every unit compressor fills its budget), so the output can hold sentences from after the first
gap. The budget is used as fully as by the other compressors, which keeps the baseline comparable.
"""

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
    """Keeps units in reading order (protected ones always), skipping those that no longer fit."""

    name: ClassVar[str] = "truncate"

    def rank(self, unit_texts: list[str], query: str | None, scored: Scored) -> np.ndarray:
        n = len(unit_texts)
        return np.linspace(1.0, 0.0, n, endpoint=False) if n else np.zeros(0)
