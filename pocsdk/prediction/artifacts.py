"""Predictor artifacts on disk: a model file and a JSON card that vouches for it.

A predictor directory holds ``card.json`` and one model file (LightGBM's native text model,
or JSON for the agnostic curves and the MLP weights). The card records the schema and
version, the predictor kind, the compressor it was trained for, the feature names and
their version, and the SHA-256 of the model file. Loading checks all of them and raises
:class:`~pocsdk.errors.ArtifactError` on any mismatch, so a corrupted, foreign or swapped
artifact is refused before a single byte of the model is parsed. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pocsdk._version import __version__
from pocsdk.errors import ArtifactError
from pocsdk.prediction.features import FEATURES_VERSION

CARD_FILE = "card.json"
CARD_SCHEMA = "pocsdk.predictor"
CARD_VERSION = 1
PredictorKind = Literal["agnostic", "lightgbm", "mlp"]


class TrainingSummary(BaseModel):
    """What a predictor was trained on."""

    examples: int = 0
    rows: int = 0
    datasets: dict[str, int] = Field(default_factory=dict)
    tasks: dict[str, int] = Field(default_factory=dict)
    judges: list[str] = Field(default_factory=list)
    factors: list[float] = Field(default_factory=list)
    mean_performance: float | None = None
    groups: dict[str, int] = Field(default_factory=dict)
    """Examples per group when training balanced groups given by the caller (labels files); empty when it
    balanced ``datasets`` or nothing."""


class PredictorCard(BaseModel):
    """The JSON card written next to every predictor model file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["pocsdk.predictor"] = Field(default="pocsdk.predictor", alias="schema")
    card_version: int = CARD_VERSION
    kind: PredictorKind
    compressor: str
    model_file: str
    sha256: str
    features_version: int = FEATURES_VERSION
    feature_names: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    metrics: dict[str, float] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    created: str = ""


MAX_MODEL_BYTES = 64 * 1024 * 1024
"""The largest model file a predictor loads (shipped ones are under 1 MB; LightGBM with thousands of trees stays
well under this)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions(**extra: str) -> dict[str, str]:
    import numpy

    return {"pocsdk": __version__, "python": platform.python_version(), "numpy": numpy.__version__, **extra}


def write_artifact(directory: str | Path, card: PredictorCard, model_bytes: bytes) -> Path:
    """Write the model file and its card (with the model's checksum) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model_path = d / card.model_file
    model_path.write_bytes(model_bytes)
    card.sha256 = hashlib.sha256(model_bytes).hexdigest()
    card.created = card.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    (d / CARD_FILE).write_text(json.dumps(card.model_dump(by_alias=True), indent=2) + "\n", encoding="utf-8")
    return d


def read_card(directory: str | Path) -> PredictorCard:
    """Parse and validate ``card.json`` of a predictor directory."""
    d = Path(directory)
    path = d / CARD_FILE
    if not path.is_file():
        raise ArtifactError(f"no predictor card at {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"predictor card {path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("schema") != CARD_SCHEMA:
        raise ArtifactError(f"{path} is not a pocsdk predictor card (schema must be {CARD_SCHEMA!r})")
    if raw.get("card_version") != CARD_VERSION:
        raise ArtifactError(f"{path}: card version {raw.get('card_version')!r} is not supported (need {CARD_VERSION})")
    try:
        card = PredictorCard.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "card"
        raise ArtifactError(f"{path}: {where}: {first['msg']}") from exc
    if card.features_version != FEATURES_VERSION:
        raise ArtifactError(
            f"{path}: features version {card.features_version} does not match this pocsdk ({FEATURES_VERSION}); "
            "retrain the predictor"
        )
    return card


def read_model_bytes(directory: str | Path, card: PredictorCard) -> bytes:
    """The model file's bytes, after checking them against the card's SHA-256."""
    d = Path(directory)
    name = Path(card.model_file).name
    if name != card.model_file:
        raise ArtifactError(f"model_file must be a plain file name, got {card.model_file!r}")
    path = d / name
    if not path.is_file():
        raise ArtifactError(f"model file missing: {path}")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:  # checked before anything is read: a huge file is no predictor of ours
        raise ArtifactError(f"{path} holds {size:,} bytes, more than a predictor model may ({MAX_MODEL_BYTES:,})")
    with path.open("rb") as fh:
        data = fh.read(MAX_MODEL_BYTES + 1)
    if len(data) > MAX_MODEL_BYTES:  # it grew while being read
        raise ArtifactError(f"{path} is larger than a predictor model may be ({MAX_MODEL_BYTES:,} bytes)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise ArtifactError(f"checksum mismatch for {path}: the card says {card.sha256[:12]}…, file is {digest[:12]}…")
    return data


def check_card(card: PredictorCard, *, kind: str | None = None, compressor: str | None = None,
               feature_names: list[str] | None = None) -> None:
    """Refuse a card of another kind, another compressor, or with unknown feature names."""
    if kind is not None and card.kind != kind:
        raise ArtifactError(f"artifact is a {card.kind!r} predictor, not {kind!r}")
    if compressor is not None and card.compressor != compressor:
        raise ArtifactError(
            f"predictor was trained for compressor {card.compressor!r}, not {compressor!r}"
        )
    if feature_names is not None:
        unknown = [n for n in card.feature_names if n not in feature_names]
        if unknown:
            raise ArtifactError(f"card names unknown features: {', '.join(unknown[:5])}")
