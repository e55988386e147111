"""The compression service's wire format: request and response bodies of ``/v1/compress`` and friends.

Kept apart from the hosting code so clients and docs can read the contract without the server's machinery.
Numbers are strict (``true`` or ``"0.3"`` are refused, as the local facade refuses them) and metadata is checked
before any work is done, so a request either fits or gets a 422 at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
)

from pocsdk.text.tokens import LONE_SURROGATE
from pocsdk.types import CompressionResult

MAX_INPUTS_PER_REQUEST = 256
MAX_METADATA_DEPTH = 64


class DocumentIn(BaseModel):
    """One document; ``id`` (default: its position) and ``metadata`` come back in the result."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr | StrictInt | None = None
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _writable(cls, value: dict[str, Any]) -> dict[str, Any]:
        # refused before compressing: the result could not be written back (pydantic's serialiser stops at a
        # depth of about 250, and turns lone surrogates in keys into U+FFFD), and a 500 or a silently changed
        # key after the work is done helps no one
        problem = _metadata_problem(value, MAX_METADATA_DEPTH)
        if problem:
            raise ValueError(problem)
        return value


def _metadata_problem(value: dict[str, Any], limit: int) -> str | None:
    """Why ``value`` cannot round-trip, or ``None``; iterative (the input decides how deep it goes), visiting
    containers only and stopping at the first problem."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return f"metadata is nested more than {limit} levels deep"
        if isinstance(item, dict):
            if any(isinstance(k, str) and LONE_SURROGATE.search(k) for k in item):
                return "a metadata key holds a lone surrogate (invalid UTF-16), which JSON cannot carry in a key"
            children = item.values()
        else:
            children = item
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return None


Context = Union[str, list[Union[str, DocumentIn]]]
# Strict numbers: true or "0.3" are refused, as the local facade refuses them (not read as 1.0 or 0.3).
Rate = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False, strict=True)]
Confidence = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False, strict=True)]


def _no_bool_or_text(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise ValueError("must be a number")
    return value


TokenCount = Annotated[int, BeforeValidator(_no_bool_or_text), Field(ge=1)]
"""A whole number of tokens; 300.0 is accepted (as locally), true and "300" are not."""
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Modes(BaseModel):
    keep_rate: Rate | None = None
    """Fraction of tokens to keep, in (0, 1]."""
    target_tokens: TokenCount | None = None
    floor: Rate | None = None
    """Performance floor: the least relative task performance to keep, in (0, 1]."""
    confidence: Confidence | None = None
    compressor: Name | None = None
    """A hosted compressor's name (default: the first one hosted)."""

    def mode(self) -> dict[str, Any]:
        return {k: v for k in ("keep_rate", "target_tokens", "floor", "confidence")
                if (v := getattr(self, k)) is not None}


class CompressRequest(_Modes):
    """Compress one context. Give at most one of ``keep_rate``, ``target_tokens``, ``floor``."""

    model_config = ConfigDict(extra="forbid")

    context: Context
    query: str | None = None


class BatchRequest(_Modes):
    """Compress many inputs in one request; top-level fields are defaults for every input."""

    model_config = ConfigDict(extra="forbid")

    inputs: Annotated[list[CompressRequest], Field(min_length=1)]
    """At most ``MAX_INPUTS_PER_REQUEST``; more is a 413 ``batch_too_large``, which clients split on."""


class BatchResponse(BaseModel):
    """One result per input, in order."""

    results: list[CompressionResult]


def _kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "inputs" in value else "single"


CompressBody = Annotated[
    Union[Annotated[CompressRequest, Tag("single")], Annotated[BatchRequest, Tag("batch")]],
    Discriminator(_kind),
]


class CompressorInfo(BaseModel):
    name: str
    default: bool
    batched: bool
    """True when the compressor scores a batch in one call (``score_batch``)."""
    queue_depth: int
    parameters: dict[str, Any]


class CompressorsResponse(BaseModel):
    default: str
    compressors: list[CompressorInfo]


class Health(BaseModel):
    status: Literal["ok", "draining"]
    version: str
    compressors: list[str]
