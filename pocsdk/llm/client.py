"""OpenAI-compatible chat clients on httpx: ``LLMClient`` and its async twin ``AsyncLLMClient``.

Both share names, arguments and results; request building and parsing live in
:mod:`pocsdk.llm._core`, so the shells here only send, wait and retry. Each client owns
one pooled httpx client; close it (or use ``with``) when done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx

from pocsdk.llm import _core
from pocsdk.llm._core import MessagesLike
from pocsdk.llm.types import ChatResult, LLMError, RetryPolicy, Timeout

DEFAULT_TIMEOUT = Timeout()
DEFAULT_RETRY = RetryPolicy()
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class _ClientBase:
    """Configuration shared by both shells."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        model: str | None = None,
        timeout: Timeout | float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = _core.resolve_base_url(base_url)
        self.model = model
        self.retry = retry
        self.timeout = timeout
        self._headers = _core.auth_headers(_core.resolve_api_key(api_key), headers)

    def _payload(
        self, messages: MessagesLike, model: str | None, params: dict[str, Any], stream: bool
    ) -> dict[str, Any]:
        return _core.chat_payload(messages, model or self.model, params, stream=stream)

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r})"


class LLMClient(_ClientBase):
    """Blocking OpenAI-compatible chat client.

    >>> with LLMClient("http://127.0.0.1:8000/v1", model="gpt-4o-mini") as llm:  # doctest: +SKIP
    ...     llm.chat("Hello").content
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        model: str | None = None,
        timeout: Timeout | float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, model=model, timeout=timeout, retry=retry, headers=headers)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=_core.to_httpx_timeout(timeout),
            limits=DEFAULT_LIMITS, transport=transport,
        )

    def chat(self, messages: MessagesLike, model: str | None = None, **params: Any) -> ChatResult:
        """One chat completion. ``params`` (temperature, max_tokens, ...) are sent as given."""
        payload = self._payload(messages, model, params, stream=False)
        resp = self._send(payload)
        return _core.parse_chat(_core.parse_json(resp.content))

    def stream(self, messages: MessagesLike, model: str | None = None, **params: Any) -> Iterator[str]:
        """Yield text deltas as they arrive (retries only happen before the first byte)."""
        payload = self._payload(messages, model, params, stream=True)
        resp = self._send(payload, stream=True)
        try:
            decoder = _core.SSEDecoder()
            for line in resp.iter_lines():
                data = decoder.feed_line(line)
                if data is None:
                    continue
                delta = _core.delta_from_event(data)
                if _core.is_done(delta):
                    return
                if delta:
                    yield str(delta)
            tail = decoder.flush()
            if tail is not None:
                delta = _core.delta_from_event(tail)
                if isinstance(delta, str) and delta:
                    yield delta
        except httpx.HTTPError as exc:
            raise LLMError(f"stream interrupted: {exc!r}") from exc
        finally:
            resp.close()

    def models(self) -> list[str]:
        """Model ids the endpoint lists under ``GET /models``."""
        resp = self._send(None, method="GET", path="/models")
        data = _core.parse_json(resp.content)
        return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]

    def _send(self, payload: dict[str, Any] | None, *, stream: bool = False, method: str = "POST",
              path: str = "/chat/completions") -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, path, json=payload)
                resp = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_retries:
                    raise LLMError(f"cannot reach {self.base_url}: {exc!r}") from exc
                time.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if resp.status_code < 400:
                return resp
            body = resp.read()
            resp.close()
            if attempt < self.retry.max_retries and self.retry.should_retry_status(resp.status_code):
                time.sleep(self.retry.delay(attempt, resp.headers))
                attempt += 1
                continue
            raise _core.error_from_response(resp.status_code, body)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncLLMClient(_ClientBase):
    """Async twin of :class:`LLMClient`: same arguments, same results, ``await`` / ``async for``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        model: str | None = None,
        timeout: Timeout | float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, model=model, timeout=timeout, retry=retry, headers=headers)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=_core.to_httpx_timeout(timeout),
            limits=DEFAULT_LIMITS, transport=transport,
        )

    async def chat(self, messages: MessagesLike, model: str | None = None, **params: Any) -> ChatResult:
        """One chat completion. ``params`` (temperature, max_tokens, ...) are sent as given."""
        payload = self._payload(messages, model, params, stream=False)
        resp = await self._send(payload)
        return _core.parse_chat(_core.parse_json(resp.content))

    async def stream(self, messages: MessagesLike, model: str | None = None, **params: Any) -> AsyncIterator[str]:
        """Yield text deltas as they arrive (retries only happen before the first byte)."""
        payload = self._payload(messages, model, params, stream=True)
        resp = await self._send(payload, stream=True)
        try:
            decoder = _core.SSEDecoder()
            async for line in resp.aiter_lines():
                data = decoder.feed_line(line)
                if data is None:
                    continue
                delta = _core.delta_from_event(data)
                if _core.is_done(delta):
                    return
                if delta:
                    yield str(delta)
            tail = decoder.flush()
            if tail is not None:
                delta = _core.delta_from_event(tail)
                if isinstance(delta, str) and delta:
                    yield delta
        except httpx.HTTPError as exc:
            raise LLMError(f"stream interrupted: {exc!r}") from exc
        finally:
            await resp.aclose()

    async def models(self) -> list[str]:
        """Model ids the endpoint lists under ``GET /models``."""
        resp = await self._send(None, method="GET", path="/models")
        data = _core.parse_json(resp.content)
        return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]

    async def _send(self, payload: dict[str, Any] | None, *, stream: bool = False, method: str = "POST",
                    path: str = "/chat/completions") -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, path, json=payload)
                resp = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_retries:
                    raise LLMError(f"cannot reach {self.base_url}: {exc!r}") from exc
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if resp.status_code < 400:
                return resp
            body = await resp.aread()
            await resp.aclose()
            if attempt < self.retry.max_retries and self.retry.should_retry_status(resp.status_code):
                await asyncio.sleep(self.retry.delay(attempt, resp.headers))
                attempt += 1
                continue
            raise _core.error_from_response(resp.status_code, body)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLLMClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
