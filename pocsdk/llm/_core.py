"""Sans-I/O core of the OpenAI-compatible client: request building, retry decisions, response and SSE parsing.

The sync and async clients are thin shells around these functions, so both send the same
bytes, retry the same way and return the same results; only sending and waiting differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import httpx

from pocsdk.errors import InvalidTypeError
from pocsdk.llm.types import ChatResult, LLMError, RetryPolicy, Timeout, Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"
API_KEY_ENVS = ("POCSDK_LLM_API_KEY", "OPENAI_API_KEY")
BASE_URL_ENVS = ("POCSDK_LLM_BASE_URL", "OPENAI_BASE_URL")

MessageLike = Union[Mapping[str, Any], Any]
MessagesLike = Union[str, Sequence[MessageLike]]


def resolve_api_key(api_key: str | None) -> str | None:
    """The explicit key, else the first of ``$POCSDK_LLM_API_KEY`` / ``$OPENAI_API_KEY``."""
    if api_key is not None:
        return api_key
    for env in API_KEY_ENVS:
        value = os.environ.get(env)
        if value:
            return value
    return None


def resolve_base_url(base_url: str | None) -> str:
    if base_url:
        return base_url.rstrip("/")
    for env in BASE_URL_ENVS:
        value = os.environ.get(env)
        if value:
            return value.rstrip("/")
    return DEFAULT_BASE_URL


def to_httpx_timeout(timeout: Timeout | float | None) -> httpx.Timeout:
    if timeout is None:
        return httpx.Timeout(None)
    if isinstance(timeout, (int, float)):
        return httpx.Timeout(float(timeout))
    return httpx.Timeout(connect=timeout.connect, read=timeout.read, write=timeout.write, pool=timeout.pool)


def normalize_messages(messages: MessagesLike) -> list[dict[str, Any]]:
    """A string becomes one user message; mappings (and pydantic models) become plain dicts."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence):
        raise InvalidTypeError(f"messages must be a string or a list of messages, got {type(messages).__name__}")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if hasattr(m, "model_dump"):
            m = m.model_dump(exclude_none=True)
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise InvalidTypeError(f"message {i} must be a mapping with a string 'role'")
        out.append(dict(m))
    return out


def chat_payload(
    messages: MessagesLike, model: str | None, params: Mapping[str, Any], *, stream: bool
) -> dict[str, Any]:
    if not model:
        raise InvalidTypeError("model is required: pass model=... to the client or to the call")
    payload: dict[str, Any] = {"model": model, "messages": normalize_messages(messages)}
    payload.update({k: v for k, v in params.items() if v is not None})
    if stream:
        payload["stream"] = True
    else:
        payload.pop("stream", None)
    return payload


def auth_headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"accept": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    if extra:  # header names are case-insensitive: an "Authorization" given here replaces the key's
        headers.update({str(k).lower(): v for k, v in extra.items()})
    return headers


def error_from_response(status: int, body: bytes) -> LLMError:
    """An :class:`LLMError` carrying the server's message when the body is OpenAI-style JSON."""
    parsed: Any = None
    message = body[:500].decode("utf-8", "replace")
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
        elif isinstance(err, str):
            message = err
        elif isinstance(parsed.get("detail"), str):
            message = parsed["detail"]
    return LLMError(f"LLM endpoint answered HTTP {status}: {message}", status_code=status, body=parsed or message)


def parse_chat(data: Any) -> ChatResult:
    """Parse a ``chat.completion`` object; a malformed one raises :class:`LLMError`."""
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content") or ""
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        usage = data.get("usage") or {}
        return ChatResult(
            content=content,
            model=str(data.get("model") or ""),
            finish_reason=choice.get("finish_reason"),
            usage=Usage(**{k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}),
            id=data.get("id"),
            raw=data,
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise LLMError(f"malformed chat completion response: {exc!r}") from exc


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise LLMError(f"LLM endpoint answered invalid JSON: {body[:200]!r}") from exc


def parse_chat_body(body: bytes) -> ChatResult:
    """A ``chat.completion`` response body as a :class:`ChatResult`."""
    return parse_chat(parse_json(body))


def parse_models_body(body: bytes) -> list[str]:
    """Model ids from a ``GET /models`` response body."""
    data = parse_json(body)
    return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]


# -- retries -------------------------------------------------------------------------------
@dataclass
class Retrying:
    """The retry decisions of one request, without the waiting.

    The shell sends; after a failed attempt it asks this object how long to wait before the
    next one, and sleeps (``time.sleep`` or ``asyncio.sleep``). When the policy says stop,
    the same methods raise the :class:`LLMError` to give the caller.
    """

    policy: RetryPolicy
    base_url: str
    attempt: int = 0
    """Retries made so far (0 during the first attempt)."""

    def after_transport_error(self, exc: Exception) -> float:
        """Seconds to wait after a connection error; raises when retries are spent, or at once when
        the request could never be sent (a URL without http(s), a header value with a newline)."""
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
            raise LLMError(f"request to {self.base_url} could not be sent (check the base URL and the API key "
                           f"or headers for stray characters): {exc!r}") from exc
        if self.attempt >= self.policy.max_retries:
            raise LLMError(f"cannot reach {self.base_url}: {exc!r}") from exc
        return self._next(self.policy.delay(self.attempt))

    def after_error_status(self, status: int, headers: Mapping[str, str], body: bytes) -> float:
        """Seconds to wait after an HTTP error answer (status >= 400); raises when it is final."""
        if self.attempt < self.policy.max_retries and self.policy.should_retry_status(status):
            return self._next(self.policy.delay(self.attempt, headers))
        raise error_from_response(status, body)

    def _next(self, delay: float) -> float:
        self.attempt += 1
        return delay


class SSEDecoder:
    """Incremental Server-Sent Events decoder yielding the ``data`` payload of each event.

    Multi-line ``data:`` fields are joined with newlines; comments and other fields are
    ignored. ``[DONE]`` ends the stream.
    """

    def __init__(self) -> None:
        self._data: list[str] = []
        self.done = False

    def feed_line(self, line: str) -> str | None:
        """Feed one line (without its newline); returns an event's data when an event ends."""
        if line == "":
            if not self._data:
                return None
            data = "\n".join(self._data)
            self._data = []
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        return None

    def flush(self) -> str | None:
        return self.feed_line("")


_DONE = object()


def delta_from_event(data: str) -> object:
    """The text delta of one SSE payload, ``""`` when it has none, ``_DONE`` at the end; errors raise."""
    if data.strip() == "[DONE]":
        return _DONE
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise LLMError(f"malformed stream event: {data[:200]!r}") from exc
    if isinstance(chunk, dict) and "error" in chunk:
        err = chunk["error"]
        msg = err.get("message") if isinstance(err, dict) else str(err)
        raise LLMError(f"LLM stream error: {msg}", body=chunk)
    try:
        choices = chunk.get("choices") or []
        # the first choice only: with n > 1 the chunks of every choice interleave
        first = next((c for c in choices if c.get("index", 0) == 0), None)
        if first is None:
            return ""
        delta = first.get("delta") or {}
        return delta.get("content") or ""
    except (AttributeError, TypeError) as exc:
        raise LLMError(f"malformed stream chunk: {data[:200]!r}") from exc


def is_done(value: object) -> bool:
    return value is _DONE


def is_json_answer(headers: Mapping[str, str]) -> bool:
    """A server that ignored ``stream: true`` answers one JSON ``chat.completion`` instead of SSE."""
    return headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


class DeltaStream:
    """Lines of a streamed chat completion in, text deltas out (sans-I/O).

    ``feed_line`` returns the non-empty delta an event carries (else ``None``) and sets
    ``done`` at ``[DONE]``, after which the shell stops reading; ``finish`` parses an event
    left unterminated when the body ended.
    """

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self.done = False

    def feed_line(self, line: str) -> str | None:
        data = self._sse.feed_line(line)
        if data is None:
            return None
        delta = delta_from_event(data)
        if is_done(delta):
            self.done = True
            return None
        return str(delta) if delta else None

    def finish(self) -> str | None:
        tail = self._sse.flush()
        if tail is None:
            return None
        delta = delta_from_event(tail)
        return delta if isinstance(delta, str) and delta else None
