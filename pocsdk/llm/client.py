"""OpenAI-compatible chat clients on httpx: ``LLMClient`` and its async twin ``AsyncLLMClient``.

Both share names, arguments and results; request building, retry decisions and parsing
live in :mod:`pocsdk.llm._core`, so the shells here only send, read and sleep. Each client owns
one pooled httpx client (the async one, one per event loop); close it (or use ``with``) when done.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx

from pocsdk._aio import LoopBoundClient
from pocsdk.llm import _core
from pocsdk.llm._core import MessagesLike
from pocsdk.llm.types import ChatResult, LLMError, RetryPolicy, Timeout

DEFAULT_TIMEOUT = Timeout()
DEFAULT_RETRY = RetryPolicy()
DEFAULT_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
"""Connections each pooled client may open at once (the official ``openai`` client's limits); a call beyond
them waits for a free one, as long as ``Timeout.pool`` allows (by default, as long as it takes)."""


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
        key = _core.resolve_api_key(api_key)
        self._headers = _core.auth_headers(key, headers)
        key_source = "" if not key else "the api_key argument" if api_key is not None else \
            next((f"${env}" for env in _core.API_KEY_ENVS if os.environ.get(env)), "the environment")
        if headers and any(_core._header_name(k).lower() == "authorization" for k in headers):
            key_source = ""  # the Authorization header replaces the key's
        self._endpoint = _core.split_base_url(self.base_url, self._headers, key_source)

    def _payload(
        self, messages: MessagesLike, model: str | None, params: dict[str, Any], stream: bool
    ) -> dict[str, Any]:
        return _core.chat_payload(messages, model or self.model, params, stream=stream)

    def _http_options(self) -> dict[str, Any]:
        """Keyword arguments of the pooled ``httpx.Client`` / ``httpx.AsyncClient``."""
        endpoint = self._endpoint  # no credentials in the URL (httpx logs it), no query string (httpx would
        # append the path after it): they go as Basic auth and as parameters of every request
        return {"base_url": endpoint.url, "params": endpoint.params, "auth": endpoint.auth, "headers": self._headers,
                "timeout": _core.to_httpx_timeout(self.timeout), "limits": DEFAULT_LIMITS}

    def _retrying(self) -> _core.Retrying:
        return _core.Retrying(self.retry, self.base_url)

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(base_url={_core.display_url(self.base_url)!r}, model={self.model!r})"


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
        self._http = httpx.Client(**self._http_options(), transport=transport)

    def chat(self, messages: MessagesLike, model: str | None = None, **params: Any) -> ChatResult:
        """One chat completion. ``params`` (temperature, max_tokens, ...) are sent as given."""
        payload = self._payload(messages, model, params, stream=False)
        resp = self._send(payload)
        return _core.parse_chat_body(resp.content)

    def stream(self, messages: MessagesLike, model: str | None = None, **params: Any) -> Iterator[str]:
        """Yield text deltas as they arrive (retries only happen before the first byte)."""
        payload = self._payload(messages, model, params, stream=True)
        resp = self._send(payload, stream=True)
        owned = True  # False once a drain thread closes it
        try:
            if _core.is_json_answer(resp.headers):  # the server ignored stream=True: one answer, one delta
                if text := _core.parse_chat_body(resp.read()).content:
                    yield text
                return
            deltas = _core.DeltaStream()
            lines = resp.iter_lines()
            for line in lines:
                delta = deltas.feed_line(line)
                if deltas.done:  # the body's end is read in the background, so the connection goes back
                    _drain_in_background(resp, lines)  # to the pool without the caller waiting for it
                    owned = False
                    return
                if delta:
                    yield delta
            if tail := deltas.finish(resp.headers):
                yield tail
        except httpx.LocalProtocolError as exc:  # its text may quote a header value: chain nothing
            raise LLMError(f"stream interrupted: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise LLMError(f"stream interrupted: {exc!r}") from exc
        finally:
            if owned:
                resp.close()

    def models(self) -> list[str]:
        """Model ids the endpoint lists under ``GET /models``."""
        resp = self._send(None, method="GET", path="/models")
        return _core.parse_models_body(resp.content)

    def _send(self, payload: dict[str, Any] | None, *, stream: bool = False, method: str = "POST",
              path: str = "/chat/completions") -> httpx.Response:
        retrying = self._retrying()
        while True:
            try:
                request = self._http.build_request(method, path, json=payload)
                resp = self._http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                time.sleep(retrying.after_transport_error(exc))
                continue
            if resp.status_code < 300:
                return resp
            try:  # a cut-off error body still leaves the status to decide on
                body = resp.read()
            except httpx.HTTPError:
                body = b""
            finally:
                resp.close()
            time.sleep(retrying.after_error_status(resp.status_code, resp.headers, body))

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
        options = self._http_options()
        # one pooled client per event loop: a client shared by several asyncio.run calls keeps working
        self._http = LoopBoundClient(lambda: httpx.AsyncClient(**options, transport=transport),
                                     owns_transport=transport is None)

    async def chat(self, messages: MessagesLike, model: str | None = None, **params: Any) -> ChatResult:
        """One chat completion. ``params`` (temperature, max_tokens, ...) are sent as given."""
        payload = self._payload(messages, model, params, stream=False)
        resp = await self._send(payload)
        return _core.parse_chat_body(resp.content)

    async def stream(self, messages: MessagesLike, model: str | None = None, **params: Any) -> AsyncIterator[str]:
        """Yield text deltas as they arrive (retries only happen before the first byte)."""
        payload = self._payload(messages, model, params, stream=True)
        resp = await self._send(payload, stream=True)
        try:
            if _core.is_json_answer(resp.headers):  # the server ignored stream=True: one answer, one delta
                if text := _core.parse_chat_body(await resp.aread()).content:
                    yield text
                return
            deltas = _core.DeltaStream()
            lines = resp.aiter_lines()
            async for line in lines:
                delta = deltas.feed_line(line)
                if deltas.done:
                    await _drain(lines)
                    return
                if delta:
                    yield delta
            if tail := deltas.finish(resp.headers):
                yield tail
        except httpx.LocalProtocolError as exc:  # its text may quote a header value: chain nothing
            raise LLMError(f"stream interrupted: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise LLMError(f"stream interrupted: {exc!r}") from exc
        finally:
            await resp.aclose()

    async def models(self) -> list[str]:
        """Model ids the endpoint lists under ``GET /models``."""
        resp = await self._send(None, method="GET", path="/models")
        return _core.parse_models_body(resp.content)

    async def _send(self, payload: dict[str, Any] | None, *, stream: bool = False, method: str = "POST",
                    path: str = "/chat/completions") -> httpx.Response:
        retrying = self._retrying()
        http = await self._http.get()
        while True:
            try:
                request = http.build_request(method, path, json=payload)
                resp = await http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                await asyncio.sleep(retrying.after_transport_error(exc))
                continue
            if resp.status_code < 300:
                return resp
            try:  # a cut-off error body still leaves the status to decide on
                body = await resp.aread()
            except httpx.HTTPError:
                body = b""
            finally:
                await resp.aclose()
            await asyncio.sleep(retrying.after_error_status(resp.status_code, resp.headers, body))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLLMClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def _drain_in_background(resp: httpx.Response, lines: Iterator[str], seconds: float = 0.25) -> None:
    """Sync twin of :func:`_drain`: a worker thread reads what follows ``[DONE]`` and closes the response.

    Blocking reads cannot be bounded from outside, so the caller does not wait for them: a server that
    keeps the stream open after ``[DONE]`` holds one connection (until its read timeout), never the caller.
    """
    def rest() -> None:
        deadline = time.monotonic() + seconds
        try:
            for _ in lines:
                if time.monotonic() > deadline:
                    break
        except httpx.HTTPError:
            pass
        finally:
            try:
                resp.close()
            except httpx.HTTPError:
                pass

    threading.Thread(target=rest, name="pocsdk-llm-drain", daemon=True).start()


async def _drain(lines: AsyncIterator[str], seconds: float = 0.25) -> None:
    """Read what follows ``[DONE]`` (the chunked body's end) so the connection goes back to the pool.

    Bounded: a server that keeps the stream open after ``[DONE]`` costs at most ``seconds``, and the
    response is then closed as before; a broken tail is no error, every delta has been delivered.
    """
    async def rest() -> None:
        async for _ in lines:
            pass

    try:
        await asyncio.wait_for(rest(), seconds)
    except (asyncio.TimeoutError, httpx.HTTPError):
        pass
