"""Client for a ``pocsdk serve`` service: the SDK's API and result model, over HTTP.

``Compressor(endpoint="http://host:8000", api_key=...)`` delegates here, so local and
remote code read the same. One implementation drives every call: :meth:`_exchange` is a
generator that yields the request to send (or a pause before retrying) and decides what
each response means; :meth:`_drive` and :meth:`_adrive` are the thin sync and async
shells that do the I/O with pooled httpx clients.

Retries: 429 and 503 (honouring ``Retry-After``) and connection failures, with
exponential backoff. Compression is a pure function of its input, so a retried request
is safe. Errors are typed: a server error answers with :class:`~pocsdk.errors.RemoteError`
(``status_code`` set); a rejected input raises the same class the local SDK would raise,
made a subclass of ``RemoteError`` too, so ``except EmptyContextError`` works either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import httpx

from pocsdk import errors as _errors
from pocsdk._aio import LoopBoundClient
from pocsdk._version import __version__
from pocsdk.errors import ConfigError, InvalidTypeError, PocError, RemoteError
from pocsdk.text.tokens import LONE_SURROGATE
from pocsdk.types import (
    CompressionResult,
    ContextLike,
    batch_items,
    check_api_key,
    check_keep_rate,
    check_target_tokens,
    check_unit_interval,
    normalize_context,
    unpack_item,
)

API_KEY_ENV = "POCSDK_API_KEY"
MAX_INPUTS_PER_REQUEST = 64
SERVER_MAX_INPUTS = 256
"""``pocsdk serve``'s limit of inputs per request (``pocsdk.server.service_models.MAX_INPUTS_PER_REQUEST``)."""
MAX_CONCURRENT_CHUNKS = 4
_MODES = ("keep_rate", "target_tokens", "floor")

T = TypeVar("T")
_Step = Union[httpx.Request, float]  # send this request, or sleep this many seconds


def _sleep(seconds: float) -> None:
    """Retry wait; a module-level hook so tests replace this module's waits only, not ``time.sleep``."""
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    """Async retry wait; see :func:`_sleep`."""
    await asyncio.sleep(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry 429 / 503 answers and connection failures."""

    attempts: int = 4
    """Tries in all (1 = no retry)."""
    backoff_s: float = 0.25
    """First pause; doubled after each try."""
    max_backoff_s: float = 30.0
    """Cap on one pause, including a server's ``Retry-After``."""
    statuses: frozenset[int] = frozenset({429, 503})

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Pause before try ``attempt + 1``: the server's ``Retry-After`` if given, else backoff."""
        wait = self.backoff_s * (2 ** (attempt - 1))
        if retry_after:
            parsed = _parse_retry_after(retry_after)
            if parsed is not None:
                wait = parsed
        return float(min(self.max_backoff_s, max(0.0, wait)))


def _parse_retry_after(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


class RemoteCompressor:
    """Compress through a remote ``pocsdk serve``; same methods and results as :class:`pocsdk.Compressor`.

    ``compressor`` picks one of the hosted compressors (default: the server's default);
    ``keep_rate`` / ``target_tokens`` / ``floor`` / ``confidence`` are per-call defaults.
    The key defaults to ``$POCSDK_API_KEY``. Close it (or use ``with``) to free connections.
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str | None = None,
        *,
        compressor: str | None = None,
        keep_rate: float | None = None,
        target_tokens: int | None = None,
        floor: float | None = None,
        confidence: float | None = None,
        timeout: float | httpx.Timeout = 120.0,
        retry: RetryPolicy | None = None,
        max_inputs_per_request: int = MAX_INPUTS_PER_REQUEST,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            given = type(endpoint).__name__ if not isinstance(endpoint, str) else repr(endpoint) \
                if "@" not in endpoint else "a URL with credentials (not shown)"  # it may hold a password
            raise ConfigError(f"endpoint must be an http(s) URL, got {given}")
        if compressor is not None and not isinstance(compressor, str):
            raise ConfigError("a remote compressor is chosen by name; compressor objects live on the server")
        self._key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        check_api_key("the API key", self._key)
        key_source = "" if not self._key else "the api_key argument" if api_key is not None else f"${API_KEY_ENV}"
        self._base, self._auth, self._shown = _checked_endpoint(endpoint.rstrip("/"), key_source)
        self.endpoint = self._shown
        """The endpoint, credentials in it masked (``https://user:***@host``): they go as Basic auth, never in
        a request's URL (httpx logs it at INFO), a message or this attribute."""
        self.compressor_name = compressor
        self.name: str = compressor or "remote"
        self.defaults = _merge_modes({}, dict(keep_rate=keep_rate, target_tokens=target_tokens, floor=floor,
                                              confidence=confidence), strict=False)
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=10.0)
        self.retry = retry or RetryPolicy()
        if not 1 <= max_inputs_per_request <= SERVER_MAX_INPUTS:
            raise ConfigError(f"max_inputs_per_request must be in [1, {SERVER_MAX_INPUTS}] (the service's limit per "
                              f"request), not {max_inputs_per_request!r}")
        self.max_inputs_per_request = max_inputs_per_request
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._aclients = self._loop_clients()

    def _loop_clients(self) -> LoopBoundClient:
        """One pooled async client per event loop (threads each running a loop share this object)."""
        timeout, transport, auth = self.timeout, self._async_transport, self._auth
        return LoopBoundClient(lambda: httpx.AsyncClient(timeout=timeout, transport=transport, auth=auth),
                               owns_transport=transport is None)

    @classmethod
    def for_facade(cls, endpoint: str, api_key: str | None, compressor: Any, *, keep_rate: float | None,
                   target_tokens: int | None, floor: float | None, confidence: float | None,
                   local_only: Mapping[str, Any]) -> RemoteCompressor:
        """The client behind ``Compressor(endpoint=...)``; refuses options that only work locally."""
        given = sorted(k for k, v in local_only.items() if v is not None and v != {})
        if given:
            raise ConfigError(f"{', '.join(given)} cannot be used with endpoint=: the server owns its compressors "
                              "and predictors (choose a hosted compressor by name)")
        return cls(endpoint, api_key, compressor=compressor, keep_rate=keep_rate, target_tokens=target_tokens,
                   floor=floor, confidence=confidence)

    # -- the SDK's API -------------------------------------------------------------------
    def compress(self, context: ContextLike, query: str | None = None, **overrides: Any) -> CompressionResult:
        """Compress one context on the server (same arguments and result as ``Compressor.compress``)."""
        result: CompressionResult = self._drive(self._compress_one(context, query, overrides))
        return result

    async def acompress(self, context: ContextLike, query: str | None = None, **overrides: Any) -> CompressionResult:
        """Async twin of :meth:`compress`."""
        result: CompressionResult = await self._adrive(self._compress_one(context, query, overrides))
        return result

    def compress_many(self, items: Iterable[Any], **overrides: Any) -> list[CompressionResult]:
        """Compress many inputs in as few requests as the server allows (results in input order)."""
        items = batch_items(items)  # a lone string is an error, as locally (not one input per character)
        out: list[CompressionResult] = []
        pending = list(reversed(self._chunks(items, overrides)))
        while pending:
            chunk = pending.pop()
            try:
                out.extend(_one_per_input(chunk, self._drive(self._exchange("POST", "/v1/compress", chunk,
                                                                            batch=True))))
            except _errors.InputTooLargeError as exc:
                halves = _halves(chunk, exc)
                if halves is None:
                    raise
                pending.extend(reversed(halves))
        return out

    async def acompress_many(self, items: Iterable[Any], **overrides: Any) -> list[CompressionResult]:
        """Async twin of :meth:`compress_many`; up to four chunks go concurrently.

        Once the server has refused a batch as larger than its capacity, the inputs in flight are
        kept to the size that fitted, so the chunks do not crowd each other out into 429s; a chunk
        answered 429 while others are in flight waits for them and fewer chunks go at once from then
        on (down to one, as in the sync twin, which then retries as usual). The first failure cancels
        the other chunks' requests, as the sync twin stops at it.
        """
        items = batch_items(items)
        gate = _InputGate(MAX_CONCURRENT_CHUNKS)

        async def one(chunk: dict[str, Any]) -> list[CompressionResult]:
            inputs = chunk["inputs"]
            if len(inputs) > gate.capacity:  # cut to the capacity already shown, not sent whole to get a 413
                size = int(gate.capacity)
                out: list[CompressionResult] = []
                for i in range(0, len(inputs), size):
                    out += await one({**chunk, "inputs": inputs[i:i + size]})
                return out
            try:
                while True:
                    try:
                        async with gate.admit(len(chunk["inputs"])):
                            part: list[CompressionResult] = await self._adrive(self._exchange(
                                "POST", "/v1/compress", chunk, batch=True, crowded=gate.crowded))
                        return _one_per_input(chunk, part)
                    except _Crowded:
                        continue  # the gate now sends fewer chunks at once: wait for a turn, then again
            except _errors.InputTooLargeError as exc:
                halves = _halves(chunk, exc)
                if halves is None:
                    raise
                if getattr(exc, "server_code", "") == "batch_too_large":
                    gate.learn(len(halves[0]["inputs"]))
                return await one(halves[0]) + await one(halves[1])  # one after the other, as in the sync twin

        tasks = [asyncio.ensure_future(one(chunk)) for chunk in self._chunks(items, overrides)]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [r for part in parts for r in part]

    def health(self) -> dict[str, Any]:
        """The server's ``/healthz`` answer, ``{"status": "draining", ...}`` (a 503) included; not retried."""
        data: dict[str, Any] = self._drive(self._exchange("GET", "/healthz", None, health=True))
        return data

    def compressors(self) -> dict[str, Any]:
        """The server's hosted compressors (``GET /v1/compressors``)."""
        data: dict[str, Any] = self._drive(self._exchange("GET", "/v1/compressors", None))
        return data

    # A remote compressor scores on the server; these keep it a TextCompressor for the facade.
    def score(self, context: ContextLike, query: str | None = None) -> Any:
        raise ConfigError("a remote compressor scores on the server: call compress()")

    def select(self, scored: Any, keep_rate: float) -> Any:
        raise ConfigError("a remote compressor selects on the server: call compress()")

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close the pooled clients (the running loop's at once, other loops' with their loops); like
        :meth:`close`, the object stays usable and opens new ones when called again."""
        self.close()
        clients, self._aclients = self._aclients, self._loop_clients()
        await clients.aclose()

    def __enter__(self) -> RemoteCompressor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RemoteCompressor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one implementation --------------------------------------------------------------
    def _compress_one(self, context: ContextLike, query: str | None,
                      overrides: Mapping[str, Any]) -> Generator[_Step, httpx.Response | None, Any]:
        payload = {**self._item(context, query), **self._modes(overrides)}
        if self.compressor_name:
            payload["compressor"] = self.compressor_name
        return self._exchange("POST", "/v1/compress", payload)

    def _chunks(self, items: Iterable[Any], overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
        inputs = [self._item(*unpack_item(it)) for it in items]
        base: dict[str, Any] = self._modes(overrides)
        if self.compressor_name:
            base["compressor"] = self.compressor_name
        n = self.max_inputs_per_request
        return [{**base, "inputs": inputs[i:i + n]} for i in range(0, len(inputs), n)]

    def _item(self, context: ContextLike, query: str | None) -> dict[str, Any]:
        """Validate locally (same typed errors as the SDK) and turn one input into JSON-ready data."""
        if query is not None and not isinstance(query, str):
            raise InvalidTypeError(f"query must be a string or None, got {type(query).__name__}")
        docs = normalize_context(context)
        ctx: Any = context if isinstance(context, str) else [
            {"id": d.id, "text": d.text, "metadata": d.metadata} for d in docs]
        item: dict[str, Any] = {"context": ctx}
        if query is not None:
            item["query"] = query
        return item

    def _modes(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(overrides) - {*_MODES, "confidence"}
        if unknown:
            # as Python (and the local Compressor) answers a misspelt keyword: TypeError, sync and async alike
            raise TypeError(f"compress() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        return _merge_modes(self.defaults, overrides, strict=True)

    def _url(self, path: str) -> str:
        return self._base + path

    def _request(self, method: str, path: str, payload: Any) -> httpx.Request:
        headers = {"Accept": "application/json", "User-Agent": f"pocsdk/{__version__}"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        content = None
        if payload is not None:
            try:
                text = json.dumps(payload, allow_nan=False, ensure_ascii=False)
                try:
                    content = text.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates: sent as JSON escapes, as the server writes them back
                    content = LONE_SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", text).encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise InvalidTypeError(f"input is not JSON-serialisable (check document metadata): {exc}") from None
            headers["Content-Type"] = "application/json"
        return httpx.Request(method, self._url(path), content=content, headers=headers,
                             extensions={"timeout": self.timeout.as_dict()})

    def _exchange(self, method: str, path: str, payload: Any, *, batch: bool = False, health: bool = False,
                  crowded: Callable[[], bool] | None = None) -> Generator[_Step, httpx.Response | None, Any]:
        """Yield requests to send and pauses to take; return the decoded answer or raise a typed error.

        ``crowded`` (concurrent chunks): called on a 429; when it returns True, :class:`_Crowded` is raised
        instead of a retry, so the chunk waits for the others in flight rather than racing them for room.
        """
        request = self._request(method, path, payload)
        if health:  # its 503 is an answer (draining), not a reason to ask again
            try:
                response = yield request
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from _cause(exc)
            assert response is not None
            if response.status_code == 503:
                try:
                    data = response.json()
                except ValueError:
                    data = None
                if isinstance(data, dict) and "status" in data:
                    return data
            return _decode(response, path, batch)
        attempts = max(1, self.retry.attempts)
        for attempt in range(1, attempts + 1):
            try:
                response = yield request
            except httpx.TransportError as exc:
                retryable = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                                             httpx.ReadError, httpx.WriteError, httpx.PoolTimeout))
                if not retryable or attempt == attempts:
                    raise self._unreachable(exc) from _cause(exc)
                yield self.retry.delay(attempt)
                continue
            assert response is not None
            if response.status_code == 429 and crowded is not None and crowded():
                raise _Crowded
            if response.status_code in self.retry.statuses and attempt < attempts:
                yield self.retry.delay(attempt, response.headers.get("retry-after"))
                continue
            return _decode(response, path, batch)
        raise AssertionError("unreachable")  # pragma: no cover

    def _unreachable(self, exc: httpx.TransportError) -> RemoteError:
        """The error for a request that failed before an answer came. A request httpx/h11 refused to send
        (a header no HTTP request can carry) is named by its type only: its text quotes the header value,
        the key included."""
        if isinstance(exc, (httpx.LocalProtocolError, httpx.UnsupportedProtocol)):
            return RemoteError(f"request to {self._shown} could not be sent (check the endpoint and the API key "
                               f"for stray characters): {type(exc).__name__}")
        return RemoteError(f"cannot reach {self._shown}: {type(exc).__name__}: {exc}")

    # -- thin shells ---------------------------------------------------------------------
    def _drive(self, gen: Generator[_Step, httpx.Response | None, T]) -> T:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, transport=self._transport, auth=self._auth)
        client = self._client
        try:
            step = next(gen)
            while True:
                if isinstance(step, httpx.Request):
                    try:
                        response = client.send(step)
                    except httpx.TransportError as exc:
                        step = gen.throw(exc)
                        continue
                    step = gen.send(response)
                else:
                    _sleep(step)
                    step = gen.send(None)
        except StopIteration as stop:
            return stop.value

    async def _adrive(self, gen: Generator[_Step, httpx.Response | None, T]) -> T:
        client = await self._aclients.get()
        try:
            step = next(gen)
            while True:
                if isinstance(step, httpx.Request):
                    try:
                        response = await client.send(step)
                    except httpx.TransportError as exc:
                        step = gen.throw(exc)
                        continue
                    step = gen.send(response)
                else:
                    await _async_sleep(step)
                    step = gen.send(None)
        except StopIteration as stop:
            return stop.value


class _Crowded(Exception):
    """A chunk was answered 429 while other chunks were in flight: it waits for them (not a retry)."""


def _cause(exc: httpx.TransportError) -> BaseException | None:
    """What a RemoteError chains: nothing for an error whose text may quote a header value (a traceback or
    ``logging.exception`` prints the cause's text)."""
    return None if isinstance(exc, (httpx.LocalProtocolError, httpx.UnsupportedProtocol)) else exc


def _checked_endpoint(endpoint: str, key_source: str = "") -> tuple[str, httpx.BasicAuth | None, str]:
    """Refuse, at construction, an endpoint that no request can go to (a bad URL, a port out of range, no
    host): they failed on the first call with httpx's own errors, or, async, a bare ExceptionGroup.

    Returns the endpoint requests go to, without credentials (httpx logs each request's URL at INFO); the
    credentials (``https://user:password@host``, or a lone user part, often a token) as Basic auth; and the
    endpoint as messages show it, credentials masked. As the ``Authorization`` header carries either them or
    the API key (``key_source`` names where it came from), both at once are a ConfigError (httpx let the URL's
    Basic auth replace the key's Bearer silently)."""
    try:
        url = httpx.URL(endpoint)
        port = url.port
    except (httpx.InvalidURL, ValueError) as exc:  # its text may quote a part of the URL: the password too
        detail = f" ({exc})" if "@" not in endpoint else ""
        raise ConfigError(f"endpoint is not a valid URL{detail}") from None
    if not url.host:
        raise ConfigError("endpoint has no host: give http(s)://host[:port]")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"endpoint port must be in 1..65535, not {port}")
    if not url.userinfo:
        return endpoint, None, endpoint
    if key_source:
        raise ConfigError(f"the endpoint carries a user name or password (Basic auth) and an API key is set too "
                          f"({key_source}); both would set the Authorization header: remove the credentials from "
                          f'the endpoint, or pass api_key="" to send them instead')
    user, sep, _ = url.userinfo.partition(b":")
    masked = user + b":***" if sep and user else b"***"  # a lone user part may be a token too
    return (str(url.copy_with(userinfo=b"")), httpx.BasicAuth(url.username, url.password),
            str(url.copy_with(userinfo=masked)))


class _InputGate:
    """Admits chunks of a concurrent ``acompress_many``: at most ``chunks`` at once and, once the server
    has shown its capacity (``learn``), at most that many inputs in flight (a lone chunk always goes).
    A 429 while other chunks are in flight (``crowded``) lowers the chunks at once to those others."""

    def __init__(self, chunks: int) -> None:
        self._chunks = chunks
        self._capacity = math.inf
        self._running = 0
        self._inputs = 0
        self._changed = asyncio.Condition()

    @property
    def capacity(self) -> float:
        """Inputs the server has shown it takes at once (``inf`` until a split shows it)."""
        return self._capacity

    def learn(self, capacity: int) -> None:
        self._capacity = min(self._capacity, max(1, capacity))

    def crowded(self) -> bool:
        """Called by a chunk answered 429 (it is in flight): if others are too, they took the room it asked
        for, so at most that many chunks go at once from now on, and it waits for its turn (True); alone, it
        retries as the sync twin would (False)."""
        others = self._running - 1
        if others < 1:
            return False
        self._chunks = min(self._chunks, others)
        return True

    @contextlib.asynccontextmanager
    async def admit(self, n: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self._running == 0 or (
                self._running < self._chunks and self._inputs + n <= self._capacity))
            self._running += 1
            self._inputs += n
        try:
            yield
        finally:
            async with self._changed:
                self._running -= 1
                self._inputs -= n
                self._changed.notify_all()


def _merge_modes(defaults: Mapping[str, Any], overrides: Mapping[str, Any], *, strict: bool) -> dict[str, Any]:
    """One mode (per-call wins over default) plus confidence, validated like the local facade."""
    given = {k: overrides[k] for k in _MODES if overrides.get(k) is not None}
    if len(given) > 1:
        raise ConfigError(f"give one of keep_rate, target_tokens or floor, not {' and '.join(given)}")
    mode = given or {k: defaults[k] for k in _MODES if k in defaults}
    if strict and not mode:
        raise ConfigError("no compression target: give keep_rate, target_tokens or floor")
    out: dict[str, Any] = {}
    for k, v in mode.items():
        if k == "keep_rate":
            out[k] = check_keep_rate(v)
        elif k == "floor":
            out[k] = check_unit_interval("floor", v)
        else:
            out[k] = check_target_tokens(v)  # the facade's rule: numpy integers and 300.0 pass
    conf = overrides.get("confidence")
    if conf is None:
        conf = defaults.get("confidence")
    if conf is not None:
        out["confidence"] = check_unit_interval("confidence", conf, closed_right=False)
    return out


def _result(data: Any) -> CompressionResult:
    if isinstance(data, dict) and data.get("compression_factor") is None:
        data = {**data, "compression_factor": math.inf}  # JSON carries inf as null
    return CompressionResult.model_validate(data)


_SPLITTABLE = frozenset({"batch_too_large", "request_too_large"})


def _halves(chunk: dict[str, Any], exc: Exception) -> list[dict[str, Any]] | None:
    """A batch the server found too large (more inputs than its capacity, or a body over its limit) in two
    halves, tried again one after the other; ``None`` when splitting cannot help: a single input, or one
    input too large by itself (the server's error names it)."""
    if getattr(exc, "server_code", "") not in _SPLITTABLE:
        return None
    inputs = chunk["inputs"]
    if len(inputs) < 2:
        return None
    mid = len(inputs) // 2
    return [{**chunk, "inputs": inputs[:mid]}, {**chunk, "inputs": inputs[mid:]}]


def _decode(response: httpx.Response, path: str, batch: bool) -> Any:
    status = response.status_code
    try:
        data = response.json()
    except ValueError:
        data = None
    if 200 <= status < 300:
        if data is None:
            raise RemoteError(f"{path}: the server answered {status} without JSON", status)
        if path != "/v1/compress":
            return data
        try:
            if batch:
                return [_result(r) for r in data["results"]]
            return _result(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"{path}: unexpected answer from the server: {exc}", status) from None
    raise _error(status, data, response.reason_phrase)


def _one_per_input(chunk: dict[str, Any], results: list[CompressionResult]) -> list[CompressionResult]:
    """A batch answer must line up with its inputs: a short or long one would shift every result after it."""
    if len(results) != len(chunk["inputs"]):
        raise RemoteError(f"/v1/compress: the server answered {len(results)} results for {len(chunk['inputs'])} "
                          "inputs")
    return results


_REMOTE_CLASSES: dict[type[PocError], type[RemoteError]] = {}


def _error(status: int, data: Any, reason: str) -> RemoteError:
    """The typed error for a non-2xx answer: the SDK's own class (also a RemoteError) when known."""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return RemoteError(f"server answered {status} {reason}", status)
    message = str(err.get("message") or reason)
    cls = getattr(_errors, str(err.get("type")), None)
    known = (isinstance(cls, type) and issubclass(cls, PocError) and not issubclass(cls, RemoteError)
             and cls is not _errors.MissingDependencyError)
    if known and (status < 500 or cls is _errors.ArtifactError):
        assert isinstance(cls, type) and issubclass(cls, PocError)
        remote_cls = _REMOTE_CLASSES.get(cls)
        if remote_cls is None:
            remote_cls = type(cls.__name__, (cls, RemoteError), {"__module__": __name__,
                                                                  "__doc__": f"{cls.__name__} from the server."})
            _REMOTE_CLASSES[cls] = remote_cls
        exc = remote_cls(message, status)
        exc.server_code = str(err.get("code") or "")
        return exc
    return RemoteError(f"server answered {status}: {message}", status)
