"""The calibration labels format (JSONL, one record per example).

``pocsdk calibrate`` writes it; predictors, ``fit-calibration`` and ``evaluate`` read it.
Relative performance at factor f = score(context compressed f times) / score(full context).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from pocsdk.errors import LabelsError

DEFAULT_FACTORS: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0)


class LabelRecord(BaseModel):
    """Labels of one example over the factor grid."""

    id: str
    dataset: str
    task: str
    """Task type (e.g. ``qa``, ``multi_doc_qa``, ``long_qa``, ``summarization``, ``retrieval``)."""
    compressor: str
    judge: str
    factors: list[float]
    """Requested compression factors (keep rate = 1 / factor)."""
    achieved_factors: list[float]
    """Measured original / compressed tokens at each requested factor."""
    performance: list[float]
    """Relative performance at each factor: score(compressed) / score(full), clipped to [0, 1]."""
    full_score: float
    original_tokens: int
    context_features: dict[str, float] = Field(default_factory=dict)
    """Features of the input that do not depend on the factor."""
    factor_features: list[dict[str, float]] = Field(default_factory=list)
    """Features at each factor (e.g. share of relevance mass kept), aligned with ``factors``."""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _aligned(self) -> LabelRecord:
        n = len(self.factors)
        if n == 0:
            raise ValueError("factors must not be empty")
        if len(self.performance) != n or len(self.achieved_factors) != n:
            raise ValueError("factors, achieved_factors and performance must have the same length")
        if self.factor_features and len(self.factor_features) != n:
            raise ValueError("factor_features must have one entry per factor")
        if not all(math.isfinite(f) and f >= 1.0 for f in self.factors):
            raise ValueError(f"factors must be finite numbers >= 1, got {self.factors}")
        if any(b <= a for a, b in zip(self.factors, self.factors[1:], strict=False)):
            raise ValueError(f"factors must be strictly ascending, got {self.factors}")
        if not all(math.isfinite(v) for v in self.performance):  # NaN would never count as missing the floor
            raise ValueError(f"performance must be finite numbers, got {self.performance}")
        if any(math.isnan(a) or a <= 0 for a in self.achieved_factors):  # +inf: nothing of a tiny input kept
            raise ValueError(f"achieved_factors must be positive numbers, got {self.achieved_factors}")
        if not math.isfinite(self.full_score):
            raise ValueError(f"full_score must be a finite number, got {self.full_score}")
        return self


def read_labels(path: str | Path) -> list[LabelRecord]:
    """Read a labels file; raise :class:`LabelsError` naming the first bad line."""
    return list(iter_labels(path))


def iter_labels(path: str | Path) -> Iterator[LabelRecord]:
    p = Path(path)
    if not p.exists():
        raise LabelsError(f"labels file not found: {p}")
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise LabelsError(f"{p}:{lineno}: not valid UTF-8 JSON: {exc!r}") from exc
            if isinstance(obj, dict) and obj.get("error"):
                continue  # a failed example, recorded so that resume does not retry it
            try:
                yield LabelRecord.model_validate(obj)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(x) for x in first["loc"]) or "record"
                raise LabelsError(f"{p}:{lineno}: {where}: {first['msg']}") from exc
