"""Public data models: what goes into pocsdk and what comes out.

Naming convention, used everywhere in pocsdk:

* ``keep_rate`` = compressed tokens / original tokens, in (0, 1]; 0.25 keeps a quarter.
* ``compression_factor`` = original tokens / compressed tokens, >= 1; 4.0 is "4x".

Results carry numbers, never formatted strings.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from pocsdk.errors import ConfigError, EmptyContextError, EncodingError, InvalidRateError, InvalidTypeError


class Document(BaseModel):
    """One input document. ``id`` and ``metadata`` come back unchanged in the result."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


DocumentLike = Union[str, Document, Mapping[str, Any]]
ContextLike = Union[str, Sequence[DocumentLike]]


class Span(BaseModel):
    """A character range ``[start, end)`` of one input document's text."""

    model_config = ConfigDict(frozen=True)

    start: int
    end: int
    kind: Literal["kept", "skimmed"] = "kept"


class DocumentResult(BaseModel):
    """The compressed form of one input document."""

    id: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    text: str
    original_tokens: int
    compressed_tokens: int
    spans: list[Span] = Field(default_factory=list)


class Timings(BaseModel):
    """Wall-clock milliseconds of each phase."""

    score_ms: float = 0.0
    select_ms: float = 0.0
    predict_ms: float = 0.0
    total_ms: float = 0.0


class FloorDecision(BaseModel):
    """Why a rate was chosen under a performance floor."""

    floor: float
    confidence: float | None = None
    predicted_performance: float
    """Predicted relative performance at the chosen factor (after any calibration margin); 1.0 when the context
    is passed through whole (the predictions over the grid are in ``predictions``)."""
    chosen_factor: float
    """Grid factor the search chose (1.0 means no compression); the result's ``compression_factor`` is what it
    achieved, which can be less when protected text or whole units hold it back (the reason then says so)."""
    met: bool
    """False when the search found no compression that meets the floor and passed the context through; an input
    passed through before the search (too short to compress) keeps the floor trivially: True, and ``reason`` says so."""
    reason: str
    predictor: str
    task: str | None = None
    """The task type the predictor was told (``task=``, or the calibration's), None when none."""
    margin: float = 0.0
    """Calibration margin subtracted from predictions (margin rule)."""
    rule: str | None = None
    """Decision rule: ``margin`` or ``tradeoff``."""
    weight: float | None = None
    """Calibrated trade-off weight w (trade-off rule: maximise log(factor) + w * prediction); ``inf`` when
    nothing can be promised (``null`` in JSON, read back as ``inf`` under the trade-off rule)."""
    grid: list[float] = Field(default_factory=list)
    predictions: list[float] = Field(default_factory=list)

    @field_validator("predicted_performance", mode="before")
    @classmethod
    def _null_prediction_is_nan(cls, value: Any) -> Any:
        """JSON has no NaN: a custom predictor's NaN is written as ``null`` and read back as NaN."""
        return math.nan if value is None else value

    @field_validator("predictions", mode="before")
    @classmethod
    def _null_predictions_are_nan(cls, value: Any) -> Any:
        return [math.nan if v is None else v for v in value] if isinstance(value, list) else value

    @field_validator("weight", mode="before")
    @classmethod
    def _null_weight_is_inf(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON has no infinity: an infinite trade-off weight is written as ``null``."""
        return math.inf if value is None and info.data.get("rule") == "tradeoff" else value


class CompressionResult(BaseModel):
    """Everything a caller needs to use and audit one compression."""

    text: str
    """The compressed context: compressed documents joined by ``separator``."""
    documents: list[DocumentResult]
    original_tokens: int
    compressed_tokens: int
    keep_rate: float
    """Achieved compressed / original tokens."""
    compression_factor: float
    """Achieved original / compressed tokens (``inf`` when nothing is kept; ``null`` in JSON)."""

    @field_validator("compression_factor", mode="before")
    @classmethod
    def _null_factor_is_inf(cls, value: Any) -> Any:
        """JSON has no infinity: results dumped with nothing kept carry ``null``, read back as ``inf``."""
        return math.inf if value is None else value
    requested_keep_rate: float | None = None
    compressor: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str = ""
    passthrough: bool = False
    """True when the context was returned unchanged."""
    reason: str | None = None
    """Why the context passed through unchanged, if it did: ``"input_too_short"`` (under the compressor's
    ``min_tokens``), ``"full_keep_rate"`` (keep_rate 1.0 asked for), or a floor decision's reason."""
    floor: FloorDecision | None = None
    timings: Timings = Field(default_factory=Timings)
    separator: str = "\n\n"

    @property
    def kept_spans(self) -> list[tuple[int, Span]]:
        """(document index, span) pairs of verbatim kept text."""
        return [(i, s) for i, d in enumerate(self.documents) for s in d.spans if s.kind == "kept"]

    @property
    def skimmed_spans(self) -> list[tuple[int, Span]]:
        """(document index, span) pairs of skimmed excerpts."""
        return [(i, s) for i, d in enumerate(self.documents) for s in d.spans if s.kind == "skimmed"]


def factor_from_keep_rate(keep_rate: float) -> float:
    return math.inf if keep_rate <= 0 else 1.0 / keep_rate


def _is_real(value: object) -> bool:
    """A real number that is not a bool (numpy scalars count; ``True`` is not a rate)."""
    if type(value) is float:  # the common case, without the abstract-class check (hot in the floor search)
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def check_keep_rate(keep_rate: object) -> float:
    """Validate a keep rate: a real number in (0, 1]."""
    if not _is_real(keep_rate):
        raise InvalidTypeError(f"keep_rate must be a number in (0, 1], got {type(keep_rate).__name__}")
    value = float(keep_rate)  # type: ignore[arg-type]  # _is_real checked it
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise InvalidRateError(f"keep_rate must be in (0, 1], got {keep_rate!r}")
    return value


def check_target_tokens(value: object) -> int:
    """Validate a token target: a positive whole number (numpy integers and 300.0 included)."""
    if not _is_real(value):
        raise InvalidTypeError(f"target_tokens must be a positive integer, got {type(value).__name__}")
    if isinstance(value, numbers.Integral):
        n = int(value)
    else:
        v = float(value)  # type: ignore[arg-type]  # _is_real checked it
        if math.isnan(v) or not v.is_integer():
            raise InvalidRateError(f"target_tokens must be a positive integer, got {value!r}")
        n = int(v)
    if n < 1:
        raise InvalidRateError(f"target_tokens must be a positive integer, got {value!r}")
    return n


def check_unit_interval(name: str, value: object, *, closed_right: bool = True) -> float:
    """Validate a floor or confidence: a real number in (0, 1] (or (0, 1))."""
    if not _is_real(value):
        raise InvalidTypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)  # type: ignore[arg-type]  # _is_real checked it
    ok = 0.0 < v <= 1.0 if closed_right else 0.0 < v < 1.0
    if math.isnan(v) or not ok:
        interval = "(0, 1]" if closed_right else "(0, 1)"
        raise InvalidRateError(f"{name} must be in {interval}, got {value!r}")
    return v


def normalize_context(context: object) -> list[Document]:
    """Turn a string or a list of documents into ``Document`` objects with ids.

    A plain string becomes one document with id ``"0"``; list items without an id get
    their position as id. Raises typed errors for anything else.
    """
    if isinstance(context, (bytes, bytearray, memoryview)):
        raise InvalidTypeError(
            f"context is {type(context).__name__}: decode it to str first "
            "(e.g. data.decode('utf-8'), or pocsdk.types.decode_text(data) for a typed error on bad bytes)"
        )
    if isinstance(context, str):
        docs = [Document(id="0", text=context)]
    elif isinstance(context, (list, tuple)):
        if not context:
            raise EmptyContextError("context is an empty list: pass at least one document")
        docs = [_to_document(item, i) for i, item in enumerate(context)]
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            twice = next(i for n, i in enumerate(ids) if i in ids[:n])
            raise InvalidTypeError(f"document ids must be unique within one context: {twice!r} appears twice "
                                   "(a document without an id takes its position as id)")
    else:
        hint = "; wrap a single document in a list" if isinstance(context, (Mapping, Document)) else ""
        raise InvalidTypeError(
            "context must be a string or a list of documents (strings or {id, text, metadata}), "
            f"got {type(context).__name__}{hint}"
        )
    if all(not d.text.strip() for d in docs):
        raise EmptyContextError("context is empty or whitespace only")
    return docs


def _to_document(item: object, index: int) -> Document:
    if isinstance(item, Document):
        return item
    if isinstance(item, str):
        return Document(id=str(index), text=item)
    if isinstance(item, Mapping):
        text = item.get("text", item.get("page_content"))
        if isinstance(text, (bytes, bytearray)):
            raise InvalidTypeError(f"document {index} has bytes text: decode it to str first")
        if not isinstance(text, str):
            raise InvalidTypeError(f"document {index} needs a string 'text' field")
        raw_id = item.get("id", index)
        if not isinstance(raw_id, (str, numbers.Integral)) or isinstance(raw_id, bool):
            raise InvalidTypeError(f"document {index} has an id that is not a string or integer")
        if isinstance(raw_id, numbers.Integral):
            raw_id = int(raw_id)  # numpy and pandas integers too: "3", not "np.int64(3)"
        metadata = item.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise InvalidTypeError(f"document {index} has metadata that is not a mapping")
        bad_keys = [k for k in metadata if not isinstance(k, str)]
        if bad_keys:  # a list, not next(..., None): None itself is a bad key
            raise InvalidTypeError(f"document {index} has a metadata key that is not a string: {bad_keys[0]!r}")
        return Document(id=str(raw_id), text=text, metadata=dict(metadata))
    if isinstance(item, (bytes, bytearray, memoryview)):
        raise InvalidTypeError(f"document {index} is {type(item).__name__}: decode it to str first")
    raise InvalidTypeError(
        f"document {index} must be a string or a mapping with 'text', got {type(item).__name__}"
    )


def decode_text(data: bytes, source: str = "input") -> str:
    """Decode UTF-8 bytes (a BOM is dropped) or raise :class:`EncodingError` saying where it broke."""
    try:
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EncodingError(
            f"{source} is not valid UTF-8 (byte {exc.start}: {exc.reason}); re-encode it as UTF-8"
        ) from None


def check_api_key(what: str, key: object) -> None:
    """Refuse, when a client or server is built, an API key no HTTP header can carry: a line break (a key
    read from a file keeps its newline), another control character, a space at either end, or a non-ASCII
    character. Such a key failed later, on every request (callers never authenticated, the upstream answered
    502, httpx raised a bare UnicodeEncodeError or an h11 error quoting the key). ``None`` or ``""``: no key.
    The key is never quoted."""
    if key is None or key == "":
        return
    if not isinstance(key, str):
        raise InvalidTypeError(f"{what} must be a string, got {type(key).__name__}")
    bad = next((c for c in key if ord(c) < 0x20 or c == "\x7f"), None)
    if bad is not None:
        kind = "a line break" if bad in "\r\n" else "a control character"
        raise ConfigError(f"{what} contains {kind} (U+{ord(bad):04X}); strip it (a key read from a file keeps "
                          "its newline)")
    if key != key.strip(" "):
        end = "begins" if key[0] == " " else "ends"
        raise ConfigError(f"{what} {end} with a space, which an HTTP header cannot carry; strip it (a key copied "
                          "from a web page or a .env file may keep one)")
    if not key.isascii():
        raise ConfigError(f"{what} has a non-ASCII character, which HTTP clients cannot send as is; use an "
                          "ASCII key")


def check_count(name: str, value: object, *, minimum: int = 0) -> int:
    """Validate an integer parameter (a size limit, a token count, a seed) at construction time."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__}")
    if int(value) < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def batch_items(items: object) -> Iterable[Any]:
    """The inputs of a batch: any iterable except a lone string (which would be split into characters)."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidTypeError(f"compress_many takes an iterable of inputs, got {type(items).__name__}")
    return items


def unpack_item(item: Any) -> tuple[ContextLike, str | None]:
    """One batch input: a context, a ``(context, query)`` pair or a ``{context, query}`` mapping.

    A tuple is always a pair, never a context of documents (pass those as a list): otherwise two
    documents in a tuple would silently become one document and a query.
    """
    if isinstance(item, tuple):
        if len(item) != 2 or not (item[1] is None or isinstance(item[1], str)):
            raise InvalidTypeError(
                f"a tuple item is a (context, query) pair with a str or None query, got a tuple of {len(item)} "
                + ("" if len(item) != 2 else f"with a {type(item[1]).__name__} query ")
                + "(pass a context of several documents as a list)")
        return item[0], item[1]
    if isinstance(item, Mapping):
        if "context" not in item:
            raise InvalidTypeError("each mapping item needs a 'context' field")
        other = sorted(str(k) for k in item if k not in ("context", "query"))
        if other:  # a typo ("qurey") or a per-item mode would otherwise be dropped without a word
            raise InvalidTypeError(f"a mapping item holds 'context' and 'query' only, not {', '.join(other)} "
                                   "(give a mode to compress_many for all items, or call compress per item)")
        return item["context"], item.get("query")
    if isinstance(item, (str, Sequence)):
        return item, None
    raise InvalidTypeError(f"cannot compress an item of type {type(item).__name__}")
