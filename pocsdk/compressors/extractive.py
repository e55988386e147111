"""Query-aware sentence selection under a token budget, original order kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pocsdk.compressors.base import (
    Scored,
    UnitCompressor,
)
from pocsdk.text.relevance import Relevance, get_relevance


@dataclass
class ExtractiveCompressor(UnitCompressor):
    """Keeps the sentences most relevant to the query (BM25 by default) until the budget is spent.

    Protected units are kept first; the rest are taken by relevance, and any unit that
    still fits after a larger one did not is taken too, so the achieved rate tracks the
    requested one closely.
    """

    name: ClassVar[str] = "extractive"

    relevance: str | Relevance | None = field(default="bm25")

    def rank(self, unit_texts: list[str], query: str | None, scored: Scored) -> np.ndarray:
        return get_relevance(self.relevance).score(unit_texts, query)

    def parameters(self) -> dict[str, Any]:
        rel = self.relevance if isinstance(self.relevance, str) or self.relevance is None else self.relevance.name
        return {**super().parameters(), "relevance": rel or "bm25"}
