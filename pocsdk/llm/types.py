"""Data models of the LLM layer: chat results, usage, timeouts and the retry policy.

Timeouts and retries are explicit objects (as in httpx), never hidden defaults, so a
caller can see and change exactly how long and how often a request may run.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pocsdk.errors import RemoteError
from pocsdk.types import CompressionResult


class Usage(BaseModel):
    """Token usage as the model server reports it (zeros when it does not)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatResult(BaseModel):
    """One chat completion: the text, why it stopped, usage, and the raw response for auditing."""

    content: str
    model: str = ""
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    id: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


class CompletionResult(BaseModel):
    """What ``Compressor.complete`` returns: the answer and how the context was compressed."""

    answer: str
    compression: CompressionResult
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    finish_reason: str | None = None
    prompt: list[dict[str, Any]] = Field(default_factory=list, repr=False)
    """The messages actually sent to the model (compressed context included)."""


class Timeout(BaseModel):
    """Seconds allowed per phase of one HTTP attempt (``None`` waits forever)."""

    model_config = ConfigDict(frozen=True)

    connect: float | None = 5.0
    read: float | None = 60.0
    write: float | None = 30.0
    pool: float | None = None
    """How long a call may wait for a free pooled connection when every one (1000 per client) is busy with
    other calls of the same client. ``None`` (the default): wait its turn, as long as it takes. When a wait
    runs out the call fails with an :class:`LLMError` at once, without retries: the server is not at fault.
    A plain number given as a client's ``timeout`` bounds the other phases, never this wait."""


class RetryPolicy(BaseModel):
    """Exponential backoff with full jitter on 429, 5xx, connection errors and timeouts.

    Like the official ``openai`` client, a request that timed out is sent again, so the upstream
    may process (and bill) it twice; ``max_retries=0`` where that matters.

    The delay before retry ``n`` (0-based) is uniform in ``[0, min(max_backoff,
    backoff * 2**n)]``; a ``Retry-After`` header wins when present (capped by
    ``max_retry_after``). ``max_retries=0`` disables retries.
    """

    model_config = ConfigDict(frozen=True)

    max_retries: int = Field(default=2, ge=0, le=20)
    backoff: float = Field(default=0.5, ge=0.0)
    max_backoff: float = Field(default=8.0, ge=0.0)
    max_retry_after: float = Field(default=60.0, ge=0.0)
    retry_statuses: frozenset[int] = frozenset({408, 409, 429, *range(500, 600)})
    """The statuses retried, exactly: ``frozenset({429})`` never re-sends after a 5xx."""
    jitter: bool = True

    def should_retry_status(self, status: int) -> bool:
        return status in self.retry_statuses

    def delay(self, attempt: int, headers: Mapping[str, str] | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        after = retry_after_seconds(headers) if headers is not None else None
        if after is not None:
            return min(after, self.max_retry_after)
        cap = min(self.max_backoff, self.backoff * (2.0 ** attempt))
        return random.uniform(0.0, cap) if self.jitter else cap  # jitter, not crypto


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Parse ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date); ``None`` if absent or bad."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # asctime dates carry no zone; HTTP dates are always GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


class LLMError(RemoteError):
    """The model endpoint answered an error (``status_code``) or could not be reached (``None``)."""

    code = "llm_error"

    def __init__(self, message: str, status_code: int | None = None, body: Any = None) -> None:
        super().__init__(message, status_code)
        self.body = body
