"""Pieces every pocsdk server shares: auth, size limits, error bodies, load shedding.

Used by the compression service (:mod:`pocsdk.server.service`) and the OpenAI proxy, so the
API here is small and stable:

* :func:`is_loopback`, :func:`resolve_api_key` - decide at start-up whether auth is on;
* :class:`BearerAuth` - a FastAPI dependency checking ``Authorization: Bearer <key>``
  in constant time;
* :class:`ApiError`, :func:`error_response`, :func:`install_error_handlers` - one JSON error
  shape, OpenAI-compatible: ``{"error": {"message", "type", "code", "param"}}``;
* :class:`BodySizeLimit` - ASGI middleware answering 413 beyond a byte limit;
* :class:`ConcurrencyLimiter` - bounds work in flight and waiting; beyond that, 429 with
  ``Retry-After`` (:class:`Overloaded`).

Nothing here logs request bodies: prompts stay out of logs.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from pocsdk.errors import (
    ArtifactError,
    ConfigError,
    InputTooLargeError,
    InvalidInputError,
    InvalidTypeError,
    MissingDependencyError,
    PocError,
    RemoteError,
    UnknownCompressorError,
)
from pocsdk.types import check_api_key

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("the pocsdk server", "server", "fastapi, uvicorn") from exc

log = logging.getLogger("pocsdk.server")

API_KEY_ENV = "POCSDK_API_KEY"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- start-up decisions ------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def resolve_api_key(api_key: str | None, *, no_auth: bool, host: str, env_var: str = API_KEY_ENV) -> str | None:
    """The key to require, or ``None`` when auth is explicitly off.

    Auth is on unless ``no_auth`` is set, and ``no_auth`` is refused on any host that is
    not loopback, so a service is never exposed without a key by accident.
    """
    if no_auth:
        if api_key:
            raise ConfigError("give either an API key or --no-auth, not both")
        if not is_loopback(host):
            raise ConfigError(f"--no-auth is only allowed on a loopback host, not {host!r}; set an API key")
        return None
    key = api_key or os.environ.get(env_var) or ""
    if not key.strip():
        raise ConfigError(f"no API key: pass --api-key, set {env_var}, or use --no-auth on a loopback host")
    check_api_key("the API key", key)
    return key


# -- errors ------------------------------------------------------------------------------
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error_type(status: int) -> str:
    """The OpenAI ``error.type`` for an HTTP status."""
    return _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class ApiError(Exception):
    """An error with an HTTP status; handlers turn it into the shared JSON error body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


class Overloaded(ApiError):
    """Too much work queued: 429 with ``Retry-After`` (seconds)."""

    def __init__(self, retry_after: int, message: str = "server is busy: queue full, retry later") -> None:
        super().__init__(429, message, type="Overloaded", code="overloaded",
                         headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The shared error JSON (OpenAI's shape): ``{"error": {message, type, code, param}}``."""
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def error_response(
    status_code: int,
    message: str,
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    openai_types: bool = False,
) -> JSONResponse:
    """A JSON error response. With ``openai_types`` the type is OpenAI's for the status."""
    kind = openai_error_type(status_code) if openai_types or type is None else type
    return JSONResponse(error_body(message, type=kind, code=code, param=param), status_code=status_code,
                        headers=dict(headers or {}))


def status_for(exc: PocError) -> int:
    """HTTP status for a pocsdk error: caller mistakes are 4xx, the rest 5xx."""
    if isinstance(exc, InputTooLargeError):
        return 413
    if isinstance(exc, UnknownCompressorError):
        return 404
    if isinstance(exc, (InvalidInputError, InvalidTypeError, ConfigError)):
        return 400
    if isinstance(exc, (MissingDependencyError, ArtifactError)):
        return 501  # the server lacks an optional part (an extra, a predictor): not the caller's fault
    if isinstance(exc, RemoteError):
        return 502
    return 500


_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none"})


def _union_tag(part: object, last: bool) -> bool:
    """A location part naming a union branch that pydantic added (``list[union[str,DocumentIn]]``, a model
    name such as ``DocumentIn`` inside the path, a scalar type such as ``str``), not a field the caller sent:
    the last part of a location is the field itself (an unknown key ``Query`` stays), unless it is a scalar tag."""
    if not isinstance(part, str):
        return False
    if part in _SCALAR_TAGS or "[" in part:
        return True
    return not last and part[:1].isupper() and part.isidentifier()


def install_error_handlers(app: FastAPI, *, openai_types: bool = False, hide_loc: Collection[str] = ()) -> None:
    """Make every error on ``app`` answer with the shared JSON body (never an HTML page).

    Typed pocsdk errors keep their class name as ``type`` and their ``code``; with
    ``openai_types`` the type is OpenAI's (``invalid_request_error``, ...) for SDK clients.
    Unexpected exceptions answer 500 and are logged without the request body. ``hide_loc``
    names location parts left out of validation messages (e.g. tagged-union tags).
    """
    hidden = {"body", *hide_loc}

    def _resp(status: int, message: str, type: str, code: str | None, param: str | None = None,
              headers: Mapping[str, str] | None = None) -> JSONResponse:
        return error_response(status, message, type=type, code=code, param=param, headers=headers,
                              openai_types=openai_types)

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _resp(exc.status_code, exc.message, exc.type or openai_error_type(exc.status_code), exc.code,
                     exc.param, exc.headers)

    async def on_poc_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PocError)
        return _resp(status_for(exc), str(exc), type(exc).__name__, exc.code)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        # the deepest error first: of a union's branches, the one that got furthest is the one meant (a document
        # list with a bad field, not "context: Input should be a valid string")
        first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {}
        parts = list(first.get("loc", ()))
        loc = ".".join(str(p) for i, p in enumerate(parts)
                       if p not in hidden and not _union_tag(p, last=i == len(parts) - 1))
        msg = f"{loc}: {first.get('msg', 'invalid request')}" if loc else str(first.get("msg", "invalid request"))
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more)"
        return _resp(422, msg, "InvalidInputError", "invalid_request", loc or None)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc, _BodyTooLarge):  # a streamed body over the limit: the same answer as a declared one
            return _resp(413, str(exc.detail), "InputTooLargeError", "request_too_large")
        headers = getattr(exc, "headers", None)
        return _resp(exc.status_code, str(exc.detail), "HTTPError", f"http_{exc.status_code}", None, headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientDisconnect):  # the caller left during its upload: nobody reads an answer
            log.debug("client left during its upload on %s %s", request.method, request.url.path)
            return Response(status_code=499)
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__,
                  exc_info=exc)
        return _resp(500, "internal server error", "InternalError", "internal_error")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(PocError, on_poc_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)  # what escapes the middleware below
    app.add_middleware(_AnswerUnexpected, answer=on_unexpected)


class ResponseStarted:
    """An ASGI ``send`` that notes whether the response has started: after that, an error can no longer be
    answered with a body of its own."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class _AnswerUnexpected:
    """ASGI middleware: an unexpected exception before the response starts gets the 500 body and ends there.

    Starlette's own handler for ``Exception`` answers and then re-raises, and the server then closes the
    connection, so a keep-alive client's next request on it failed; here the 500 is an answer like any other.
    """

    def __init__(self, app: ASGIApp, answer: Callable[[Request, Exception], Awaitable[Response]]) -> None:
        self.app = app
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = ResponseStarted(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if tracked.started:
                raise
            response = await self.answer(Request(scope, receive), exc)
            await response(scope, receive, send)


# -- auth --------------------------------------------------------------------------------
class BearerAuth:
    """FastAPI dependency: require ``Authorization: Bearer <key>`` (constant-time compare).

    ``BearerAuth(None)`` lets everything through (auth explicitly off). Use it as
    ``dependencies=[Depends(auth)]`` on a router or route.
    """

    def __init__(self, api_key: str | None) -> None:
        self._key = api_key.encode("utf-8") if api_key else None

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def check(self, authorization: str | None) -> bool:
        """Does this ``Authorization`` header value carry the right key?"""
        if self._key is None:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), self._key)

    async def __call__(self, request: Request) -> None:
        if not self.check(request.headers.get("authorization")):
            raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           type="AuthenticationError", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})


# -- request size ------------------------------------------------------------------------
class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: answer 413 when a request body exceeds ``max_bytes``.

    Checks ``Content-Length`` up front and counts streamed (chunked) bodies as they arrive.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES, *, openai_types: bool = False) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.openai_types = openai_types

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        seen = 0
        tracked = ResponseStarted(send)

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, counting_receive, tracked)
        except _BodyTooLarge:
            if tracked.started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body over the limit of {self.max_bytes} bytes",
                                  type="InputTooLargeError", code="request_too_large",
                                  openai_types=self.openai_types)
        await response(scope, receive, send)


# -- load shedding -----------------------------------------------------------------------
class ConcurrencyLimiter:
    """Bounds work in flight (``max_concurrent``) and waiting (``max_queue``); beyond both, 429.

    ``acquire`` / ``release`` take a ``weight`` (a batch request counts as its number of
    inputs). ``Retry-After`` is estimated from a moving average of how long slots are held.
    Use from one event loop.
    """

    def __init__(self, max_concurrent: int, max_queue: int = 0) -> None:
        if max_concurrent < 1 or max_queue < 0:
            raise ConfigError("max_concurrent must be >= 1 and max_queue >= 0")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._active = 0
        self._waiting = 0
        self._reading = 0  # requests whose bodies are being read, before they ask for a slot
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._hold_s = 0.05

    @property
    def in_flight(self) -> int:
        """Weight currently holding slots."""
        return self._active

    @property
    def waiting(self) -> int:
        """Weight waiting for a slot."""
        return self._waiting

    def retry_after(self) -> int:
        """Seconds a rejected client should wait, 1 to 60."""
        est = self._hold_s * (self._waiting + self._active + 1) / self.max_concurrent
        return int(min(60, max(1, math.ceil(est))))

    def observe(self, seconds: float) -> None:
        """Record how long a slot was held (``slot`` does this itself)."""
        self._hold_s = 0.8 * self._hold_s + 0.2 * max(0.0, seconds)

    def free(self, weight: int = 1) -> bool:
        """Would :meth:`acquire` take ``weight`` slots at once, without waiting?"""
        return not self._waiters and self._active + weight <= self.max_concurrent

    def check(self, weight: int = 1) -> None:
        """Raise :class:`Overloaded` now if :meth:`acquire` would: a caller refused anyway is refused
        before its body is read (a server that reads first buffers every rejected upload)."""
        full = bool(self._waiters) or self._active + weight > self.max_concurrent
        if full and self._waiting + self._reading + weight > self.max_queue:
            raise Overloaded(self.retry_after())
        if self._active + self._waiting + self._reading + weight > self.max_concurrent + self.max_queue:
            raise Overloaded(self.retry_after())  # uploads under way count too: memory stays bounded

    @contextmanager
    def reading(self, weight: int = 1) -> Iterator[None]:
        """``with limiter.reading(): body = await request.body()``: :meth:`check`, then count the upload
        until it is read, so that slow or stalled uploads cannot pile up past the limits (each one buffers
        up to the body limit before it asks for a slot)."""
        self.check(weight)
        self._reading += weight
        try:
            yield
        finally:
            self._reading -= weight

    async def acquire(self, weight: int = 1) -> None:
        """Take ``weight`` slots, waiting in line if the queue has room; else raise :class:`Overloaded`."""
        if weight > self.max_concurrent:
            raise ApiError(413, f"request of {weight} items is larger than the server's capacity "
                                f"of {self.max_concurrent}; split it", type="InputTooLargeError",
                           code="batch_too_large")
        if not self._waiters and self._active + weight <= self.max_concurrent:
            self._active += weight
            return
        if self._waiting + weight > self.max_queue:
            raise Overloaded(self.retry_after())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, fut)
        self._waiters.append(entry)
        self._waiting += weight
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(weight)  # granted just as we were cancelled
            elif entry in self._waiters:  # still in line (``_wake`` may have dropped it already)
                self._waiters.remove(entry)
                self._waiting -= weight
                self._wake()
            raise

    def release(self, weight: int = 1) -> None:
        """Give back ``weight`` slots and admit waiters that now fit."""
        self._active = max(0, self._active - weight)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._active + self._waiters[0][0] <= self.max_concurrent:
            weight, fut = self._waiters.popleft()
            self._waiting -= weight
            if fut.done():
                continue
            self._active += weight
            fut.set_result(None)

    @asynccontextmanager
    async def slot(self, weight: int = 1) -> AsyncIterator[None]:
        """``async with limiter.slot(): ...`` - acquire, run, release, record the hold time."""
        await self.acquire(weight)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - t0)
            self.release(weight)
