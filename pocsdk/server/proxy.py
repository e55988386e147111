"""A compressing OpenAI-compatible proxy: ``pocsdk proxy --upstream URL --floor 0.9``.

Point any OpenAI client at the proxy (``base_url=http://127.0.0.1:8080/v1``): it compresses
the long context parts of ``POST /v1/chat/completions`` messages (rules in
:mod:`pocsdk.llm.messages`: long user/tool texts, or exactly the ``<compress>...</compress>``
regions when marked; system prompts and the final question stay verbatim) and forwards the
request to the one configured upstream. Responses, streamed SSE and upstream errors come
back unchanged, with the compression stats in ``X-Pocsdk-*`` headers; a stream the upstream
breaks off reaches the client broken off too. Every other ``/v1/...`` endpoint (embeddings,
completions, responses, files) is forwarded unchanged and uncompressed.

Per request: ``X-Pocsdk-Floor`` / ``X-Pocsdk-Keep-Rate`` headers, or a body field
``"pocsdk": {"floor": 0.8}`` / ``{"keep_rate": 0.3}`` / ``{"compress": false}``, removed
before forwarding.

Security and robustness: prompts are never logged; ``Authorization`` goes only to the
configured upstream (never to a URL taken from a request; redirects are not followed);
bodies over ``max_body_bytes`` get 413; upstream timeouts 504, unreachable upstream 502;
malformed requests 400 with OpenAI's error body; beyond ``max_concurrent`` requests in
flight plus ``max_queue`` waiting, 429 with ``Retry-After``. One httpx connection pool
serves all upstream calls (with ``httpx.AsyncClient``'s default headers but not its cookie
jar: the upstream's cookies are never replayed); compression runs on a small thread pool
so the event loop keeps serving, and short or cached prompts skip the pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.util import find_spec
from typing import Any
from urllib.parse import quote, unquote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.types import Send

from pocsdk._version import __version__
from pocsdk.compressor import Compressor
from pocsdk.compressors import DEFAULT_COMPRESSOR
from pocsdk.errors import ConfigError, PocError
from pocsdk.llm.messages import MessageCompressor, MessagePolicy, MessagesStats, strip_compress_tags
from pocsdk.server.common import (
    DEFAULT_MAX_BODY_BYTES,
    ApiError,
    BearerAuth,
    BodySizeLimit,
    ConcurrencyLimiter,
    install_error_handlers,
    is_loopback,
    status_for,
)
from pocsdk.types import check_api_key

log = logging.getLogger("pocsdk.proxy")

UPSTREAM_KEY_ENV = "POCSDK_UPSTREAM_API_KEY"
PROXY_KEY_ENV = "POCSDK_PROXY_API_KEY"
SETTINGS_ENV = "POCSDK_PROXY_SETTINGS"
"""How ``pocsdk proxy --workers N`` hands its settings (JSON) to the worker processes it starts."""
HOST_ENV = "POCSDK_PROXY_HOST"
"""The address the workers listen on, for :meth:`ProxySettings.vet` (unset: checked as a public address)."""

# Never forwarded upstream: hop-by-hop headers, ones httpx sets itself, our own controls.
_DROP_REQUEST = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-authorization",
    "proxy-connection", "te", "trailer", "upgrade", "accept-encoding", "authorization", "cookie",
    "x-pocsdk-floor", "x-pocsdk-keep-rate",
})
_DROP_REQUEST_RAW = frozenset(h.encode("latin-1") for h in _DROP_REQUEST)
# Never copied back from upstream: hop-by-hop and length/encoding (the proxy's server sets them).
_DROP_RESPONSE = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "server", "date",
    "set-cookie",
})
_DROP_RESPONSE_RAW = frozenset(h.encode("latin-1") for h in _DROP_RESPONSE)


class ProxySettings(BaseModel):
    """Everything ``pocsdk proxy`` decides. ``upstream`` is a base URL with its ``/v1``."""

    model_config = ConfigDict(ser_json_inf_nan="constants")  # an infinite timeout survives the trip to workers

    upstream: str
    floor: float | None = None
    keep_rate: float | None = None
    compressor: str = DEFAULT_COMPRESSOR
    min_tokens: int = Field(default=512, ge=1)
    """User/tool texts with at least this many tokens are compressed automatically."""
    upstream_api_key: str | None = Field(default=None, repr=False)
    """Sent upstream instead of the caller's ``Authorization`` when set."""
    api_key: str | None = Field(default=None, repr=False)
    """When set, callers must send it as a bearer token; it is never forwarded."""
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)
    max_concurrent: int = Field(default=64, ge=1)
    """Requests in flight (compressing or waiting on upstream)."""
    max_queue: int = Field(default=64, ge=0)
    """Requests waiting for a slot; beyond this, 429."""
    compress_workers: int = Field(default=max(1, min(4, os.cpu_count() or 1)), ge=1)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0)
    """Upstream silence allowed before 504 (between stream chunks, too)."""
    cache_size: int = Field(default=256, ge=0)
    """Compressed prompts remembered (exact repeats skip compression); 0 disables."""

    def vet(self, host: str) -> None:
        """Refuse configurations that would expose an upstream key to anyone."""
        if self.floor is not None and self.keep_rate is not None:
            raise ConfigError("give either a floor or a keep rate, not both")
        if self.upstream_api_key and not self.api_key and not is_loopback(host):
            raise ConfigError(
                f"an upstream API key on a non-loopback host ({host}) would let anyone spend it: "
                "set a proxy API key too (--api-key / $POCSDK_PROXY_API_KEY)")
        if not self.upstream.startswith(("http://", "https://")):
            raise ConfigError(f"upstream must be an http(s) URL, got {self.upstream!r}")


class _Proxy:
    """Per-app state: the compressor, the shared HTTP client, the limiter, the worker pool."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.base = settings.upstream.rstrip("/")
        mode = {"floor": settings.floor} if settings.keep_rate is None else {"keep_rate": settings.keep_rate}
        if settings.floor is None and settings.keep_rate is None:
            mode = {"floor": 0.9}
        self.messages = MessageCompressor(
            Compressor(compressor=settings.compressor, **mode),
            MessagePolicy(min_tokens=settings.min_tokens), cache_size=settings.cache_size)
        self.limiter = ConcurrencyLimiter(settings.max_concurrent, settings.max_queue)
        self.pool = ThreadPoolExecutor(settings.compress_workers, thread_name_prefix="pocsdk-proxy")
        self.auth = BearerAuth(settings.api_key)
        self._http: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncHTTPTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        s = settings
        self._timeout = httpx.Timeout(connect=s.connect_timeout_s, read=s.read_timeout_s, write=s.read_timeout_s,
                                      pool=s.read_timeout_s)
        self._timeouts = self._timeout.as_dict()
        try:  # parsed once, not per request
            self.chat_url = httpx.URL(self.base + "/chat/completions")
            self.models_url = httpx.URL(self.base + "/models")
        except httpx.InvalidURL as exc:
            raise ConfigError(f"upstream is not a valid URL: {exc}") from exc
        self._default_headers = httpx.Headers()

    def transport(self) -> httpx.AsyncHTTPTransport:
        """The shared connection pool (the client's), made in (and bound to) the serving event loop.

        Requests go to it directly: the client's per-request layers (auth and redirect flows,
        cookie jar, URL merging, event hooks) cost about 0.1-0.2 ms of CPU per request, several
        times the proxy's own parsing of a short request, and the proxy needs none of them (no
        redirects are followed, no auth flow, and the upstream's cookies are neither returned
        nor replayed to other callers). The client's default headers are still sent, merged
        as ``build_request`` merges them.
        """
        loop = asyncio.get_running_loop()
        if self._transport is None or self._loop is not loop:
            self._loop = loop
            s = self.settings
            limits = httpx.Limits(max_connections=s.max_concurrent + 8, max_keepalive_connections=s.max_concurrent + 8)
            # What ``AsyncClient(limits=..., trust_env=False)`` makes for itself.
            self._transport = httpx.AsyncHTTPTransport(verify=True, trust_env=False, limits=limits)
            self._http = httpx.AsyncClient(transport=self._transport, timeout=self._timeout, follow_redirects=False,
                                           trust_env=False)
            self._default_headers = self._http.headers
        return self._transport

    def warm_up(self) -> None:
        """Load what the default mode needs (a floor's predictor) before the first request pays for it."""
        sample = "Warm-up sentence about nothing in particular. " * 40
        try:
            self.messages.compressor.compress(sample, "warm up?")
        except (PocError, ImportError) as exc:  # served requests will answer the same error
            log.warning("warm-up compression failed: %s", exc)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()  # closes the transport too
            self._http = self._transport = None
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- requests ------------------------------------------------------------------------
    def upstream_headers(self, request: Request, content_type: str | None = None) -> list[tuple[bytes, bytes]]:
        """The caller's headers as they came (a repeated name keeps every value), less hop-by-hop ones and
        our controls; ``content_type`` replaces the caller's (a rewritten body is UTF-8 JSON)."""
        drop = _DROP_REQUEST_RAW
        # Hop-by-hop headers the caller named in Connection (RFC 9110 7.6.1) end here too.
        if named := request.headers.get("connection"):
            drop = drop | {n.strip().lower().encode("latin-1") for n in named.split(",")}
        if content_type is not None:
            drop = drop | {b"content-type"}
        # raw bytes both ways: a header value in UTF-8 (X-Title: café) passes as it came
        out: list[tuple[bytes, bytes]] = [(k, v) for k, v in request.scope["headers"] if k.lower() not in drop]
        out.append((b"accept-encoding", b"identity"))
        if content_type is not None:
            out.append((b"content-type", content_type.encode("latin-1")))
        if self.settings.upstream_api_key:
            out.append((b"authorization", f"Bearer {self.settings.upstream_api_key}".encode("latin-1")))
        elif not self.auth.enabled:
            out.extend((k, v) for k, v in request.scope["headers"] if k.lower() == b"authorization")
        return out

    async def compress(self, body: dict[str, Any], mode: dict[str, float]) -> tuple[list[Any], MessagesStats]:
        try:
            return await self.messages.acompress_messages(body["messages"], executor=self.pool, **mode)
        except PocError as exc:
            raise ApiError(status_for(exc), f"compression failed: {exc}", code=exc.code) from exc
        except ImportError as exc:  # floor mode without its predictor module installed
            raise ApiError(501, f"compression mode unavailable on this server: {exc}",
                           code="mode_unavailable") from exc

    async def send(self, method: str, path: str | httpx.URL, request: Request, content: bytes | None,
                   stream: bool = False, content_type: str | None = None) -> httpx.Response:
        """Send to the upstream (``path`` under the base URL, or a prepared URL) with the caller's query
        string; read the body unless ``stream``."""
        transport = self.transport()
        headers = httpx.Headers(self._default_headers)  # as AsyncClient.build_request merges them
        headers.update(self.upstream_headers(request, content_type))
        url = path if isinstance(path, httpx.URL) else httpx.URL(self.base + path)
        if (query := request.scope.get("query_string")) and not url.query:  # Azure-style ?api-version=...
            url = url.copy_with(query=query)
        req = httpx.Request(method, url, content=content, headers=headers, extensions={"timeout": self._timeouts})
        try:
            resp = await transport.handle_async_request(req)
            resp.request = req
            if not _decodable(resp.headers.get("content-encoding")):
                await resp.aclose()
                raise ApiError(502, f"upstream answered in an encoding the proxy cannot decode "
                               f"({resp.headers['content-encoding']}) although it asked for identity",
                               code="upstream_encoding")
            if not stream:
                try:
                    await resp.aread()  # also closes it: the connection goes back to the pool
                except BaseException:
                    await resp.aclose()
                    raise
            return resp
        except httpx.TimeoutException as exc:
            raise ApiError(504, f"upstream timed out ({type(exc).__name__})", type="timeout",
                           code="upstream_timeout") from exc
        except httpx.HTTPError as exc:
            raise ApiError(502, f"upstream unreachable ({type(exc).__name__})", code="upstream_unreachable") from exc


def parse_chat_request(raw: bytes) -> dict[str, Any]:
    """The JSON body, checked just enough to compress it; the upstream validates the rest."""
    try:
        # decoded as json.loads decodes bytes (a UTF-8 BOM, UTF-16/32, encoded lone surrogates all accepted)
        body = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_request")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages", code="invalid_request")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role'",
                           param=f"messages.{i}", code="invalid_request")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ApiError(400, f"messages[{i}].content must be a string, an array or null",
                           param=f"messages.{i}.content", code="invalid_request")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream", code="invalid_request")
    return body


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
"""Refuses NaN, Infinity and numbers out of float range (valid for Python's json, not for JSON)."""


def _dump(body: dict[str, Any]) -> bytes:
    """The rewritten request as UTF-8 JSON; text with a lone surrogate (valid JSON, not valid UTF-8)
    is sent with ASCII escapes instead, as the caller wrote it."""
    text = json.dumps(body, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(body).encode()


def request_mode(body: dict[str, Any], headers: Mapping[str, str]) -> dict[str, float] | None:
    """Per-request floor / keep rate (header or ``pocsdk`` body field); ``None`` skips compression.

    Removes the ``pocsdk`` field from ``body``.
    """
    opts = body.pop("pocsdk", None)
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "'pocsdk' must be an object like {\"floor\": 0.9}", param="pocsdk",
                       code="invalid_request")
    opts = dict(opts or {})
    unknown = set(opts) - {"floor", "keep_rate", "compress"}
    if unknown:
        raise ApiError(400, f"unknown pocsdk option(s): {', '.join(sorted(unknown))}", param="pocsdk",
                       code="invalid_request")
    if "compress" in opts and not isinstance(opts["compress"], bool):
        raise ApiError(400, f"pocsdk.compress must be true or false, got {opts['compress']!r}",
                       param="pocsdk.compress", code="invalid_request")
    if opts.get("compress") is False:
        return None
    body_mode = {name: _rate(opts[name], f"pocsdk.{name}", name) for name in ("floor", "keep_rate")
                 if opts.get(name) is not None}
    header_mode = {name: _rate(headers[header], header, name, text=True)
                   for name, header in (("floor", "x-pocsdk-floor"), ("keep_rate", "x-pocsdk-keep-rate"))
                   if headers.get(header) is not None}
    mode = body_mode or header_mode  # the body field wins over the headers (a client's defaults)
    if len(mode) > 1:
        raise ApiError(400, "give either a floor or a keep rate, not both", param="pocsdk", code="invalid_request")
    return mode


def _rate(raw: Any, where: str, name: str, *, text: bool = False) -> float:
    """A floor or keep rate in (0, 1]: a JSON number in the body, a decimal string in a header."""
    value = math.nan
    if (text and isinstance(raw, str)) or (not text and isinstance(raw, (int, float)) and not isinstance(raw, bool)):
        try:
            value = float(raw)
        except (ValueError, OverflowError):  # OverflowError: an integer past float's range (10**400)
            pass
    if not 0.0 < value <= 1.0:
        raise ApiError(400, f"{name} must be a number in (0, 1], got {raw!r}", param=where, code="invalid_rate")
    return value


def _response_headers(upstream: httpx.Response, stats: MessagesStats | None) -> list[tuple[bytes, bytes]]:
    """The upstream's headers as raw bytes (every value of a repeated one) less hop-by-hop ones, plus our
    stats, which replace those of a pocsdk proxy further upstream."""
    drop = _DROP_RESPONSE_RAW if stats is None else _DROP_RESPONSE_RAW | _STATS_HEADERS
    out = [(k.lower(), v) for k, v in upstream.headers.raw if k.lower() not in drop]
    if stats is not None:
        out.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in stats.headers().items())
    return out


def _response(content: bytes, upstream: httpx.Response, stats: MessagesStats | None) -> Response:
    out = Response(content, status_code=upstream.status_code)
    out.raw_headers.extend(_response_headers(upstream, stats))
    return out


_STATS_HEADERS = frozenset(h.lower().encode("latin-1") for h in MessagesStats().headers())


def _decodable(encoding: str | None) -> bool:
    """Can httpx undo this Content-Encoding? (It passes encodings it does not know through as they are.)"""
    if not encoding:
        return True
    return all(e.strip().lower() in _DECODABLE for e in encoding.split(",") if e.strip())


_DECODABLE = frozenset({"identity", "gzip", "deflate"}
                       | ({"br"} if find_spec("brotli") or find_spec("brotlicffi") else set())
                       | ({"zstd"} if find_spec("zstandard") else set()))


def _safe_path(path: str, what: str, code: str = "invalid_path") -> str:
    """``path`` as percent-encoded segments: ids like ``org/model`` pass, but ``..``, ``?`` or ``#`` can't
    steer the request (with the upstream key) outside the upstream's base URL or to another path."""
    parts = path.split("/")
    if parts[-1] == "" and len(parts) > 1:  # a trailing slash is kept as it came
        parts = parts[:-1]
        tail = "/"
    else:
        tail = ""
    if any(p in ("", ".", "..") for p in parts):
        raise ApiError(400, f"invalid {what} {path!r}", code=code)
    return "/".join(quote(p, safe="") for p in parts) + tail


def _raw_path(request: Request, path: str, code: str = "invalid_path") -> str:
    """The path under ``/v1/`` as the caller encoded it (``a%2Fb`` stays one segment), checked like
    :func:`_safe_path` on its decoded segments."""
    if any(p in (".", "..") for p in path.split("/")):  # the decoded path first: "..%2F" must not climb either
        raise ApiError(400, f"invalid path {path!r}", code=code)
    prefix = (request.scope.get("root_path", "") + "/v1/").encode("latin-1")
    raw = request.scope.get("raw_path")
    if not isinstance(raw, bytes) or not raw.startswith(prefix):
        return _safe_path(path, "path", code=code)
    text = raw[len(prefix):].decode("latin-1")
    parts = text.split("/")
    if parts[-1] == "" and len(parts) > 1:  # a trailing slash is kept as it came
        parts = parts[:-1]
    # a decoded backslash too: an upstream that reads "\\" as a separator would climb with "..%5C.."
    if any(unquote(p) in ("", ".", "..") or "\\" in unquote(p) for p in parts) or any(c in text for c in "?#\\"):
        raise ApiError(400, f"invalid path {path!r}", code=code)
    return text


def proxy_app_from_env() -> FastAPI:
    """The app of one worker process of ``pocsdk proxy --workers N`` (a uvicorn factory).

    Compression is Python code holding the GIL, so one process compresses on one core at a time;
    worker processes (uvicorn's supervisor, one listening socket) spread it over the cores. Each
    worker keeps its own prompt cache and limits (``max_concurrent`` and ``max_queue`` are per worker).
    """
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise ConfigError(f"${SETTINGS_ENV} is not set: start workers with `pocsdk proxy --workers N`")
    try:
        settings = ProxySettings.model_validate_json(raw)
    except ValidationError as exc:
        raise ConfigError(f"${SETTINGS_ENV} does not hold proxy settings: {exc}") from exc
    settings.vet(os.environ.get(HOST_ENV, "0.0.0.0"))
    return create_proxy_app(settings)


def create_proxy_app(settings: ProxySettings) -> FastAPI:
    """The proxy as an ASGI app (run it with uvicorn, or ``pocsdk proxy``)."""
    check_api_key("the proxy API key", settings.api_key)
    check_api_key("the upstream API key", settings.upstream_api_key)
    proxy = _Proxy(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(proxy.warm_up)
        proxy.transport()  # the connection pool (and its TLS context) before the first request
        yield
        await proxy.close()

    app = FastAPI(title="pocsdk proxy", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.proxy = proxy
    install_error_handlers(app, openai_types=True)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, openai_types=True)

    @app.head("/healthz", include_in_schema=False)  # load balancers that check with HEAD
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness of the proxy itself (the upstream is not called)."""
        return JSONResponse({"status": "ok", "version": __version__, "in_flight": proxy.limiter.in_flight,
                             "waiting": proxy.limiter.waiting})

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        """Forwarded to the upstream unchanged."""
        await proxy.auth(request)
        async with proxy.limiter.slot():
            resp = await proxy.send("GET", proxy.models_url, request, None)
            return _response(resp.content, resp, None)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        """Forwarded to the upstream unchanged."""
        await proxy.auth(request)
        async with proxy.limiter.slot():
            path = "/" + _raw_path(request, "models/" + model_id, code="invalid_model")  # as the caller encoded it
            resp = await proxy.send("GET", path, request, None)
            return _response(resp.content, resp, None)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """Compress the context parts, forward, answer with the upstream's response (streamed or not)."""
        await proxy.auth(request)
        # Read the body before taking a slot (a slow upload must not hold one), but only when there
        # is room: a caller that will be refused is refused before its body is buffered.
        with proxy.limiter.reading():
            raw = await request.body()
        try:
            slot = await _acquire_while_connected(proxy.limiter, request)
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it
        try:
            return await _chat(proxy, request, raw, slot)
        finally:
            if not slot.handed_off:
                slot.release()

    @app.api_route("/v1/{path:path}", methods=["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"])
    async def passthrough(path: str, request: Request) -> Response:
        """Every other endpoint (embeddings, completions, responses, files, ...) goes to the upstream
        unchanged and uncompressed, and its answer (streamed or not) comes back as it arrives."""
        if request.method == "POST" and path == "chat/completions/":  # not a way around compression
            return await chat_completions(request)
        await proxy.auth(request)
        url = proxy.base + "/" + _raw_path(request, path)  # the query string is added by send
        with proxy.limiter.reading():
            content = await request.body()
        try:
            slot = await _acquire_while_connected(proxy.limiter, request)
        except _ClientGone:
            return Response(status_code=499)
        try:
            resp = await proxy.send(request.method, httpx.URL(url), request, content or None, stream=True)
            return _relay(resp, slot, None)
        finally:
            if not slot.handed_off:
                slot.release()

    return app


class _Slot:
    """A limiter slot released exactly once, by the handler or, for streams, when the stream ends."""

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self.limiter = limiter
        self.handed_off = False
        self._released = False
        self._taken = time.perf_counter()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.limiter.observe(time.perf_counter() - self._taken)  # feeds Retry-After with real hold times
            self.limiter.release()


class _ClientGone(Exception):
    """The caller disconnected while waiting for a slot."""


async def _acquire_while_connected(limiter: ConcurrencyLimiter, request: Request) -> _Slot:
    """A slot, unless the caller leaves first: a queued caller that gave up must not keep its place, nor be
    compressed and sent upstream (billed) for no one. The body is read, so the next message is the disconnect."""
    if limiter.free():  # the common case: no wait, nothing to watch
        await limiter.acquire()
        return _Slot(limiter)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    taking = asyncio.ensure_future(limiter.acquire())
    watching = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({taking, watching}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled: the slot must not be taken later for no one
        watching.cancel()
        taking.cancel()
        await asyncio.gather(taking, return_exceptions=True)
        if not taking.cancelled() and taking.exception() is None:
            limiter.release()
        raise
    watching.cancel()
    if not taking.done():
        taking.cancel()
        await asyncio.gather(taking, return_exceptions=True)
    if taking.done() and not taking.cancelled() and taking.exception() is None:
        if watching.done() and not watching.cancelled():  # took a slot just as the caller left: give it back
            limiter.release()
            raise _ClientGone()
        return _Slot(limiter)
    if taking.cancelled():
        raise _ClientGone()
    raise taking.exception()  # type: ignore[misc]


async def _chat(proxy: _Proxy, request: Request, raw: bytes, slot: _Slot) -> Response:
    body = parse_chat_request(raw)
    had_options = "pocsdk" in body
    mode = request_mode(body, request.headers)
    stats: MessagesStats | None = None
    changed = False
    if mode is not None:
        new_messages, stats = await proxy.compress(body, mode)
        changed = new_messages != body["messages"]
        body["messages"] = new_messages
    else:  # compression off: the tags still never reach the model
        new_messages = strip_compress_tags(body["messages"])
        changed = new_messages != body["messages"]
        body["messages"] = new_messages
    # Unchanged requests go upstream byte for byte.
    content = _dump(body) if changed or had_options else raw
    if log.isEnabledFor(logging.INFO):  # (the message is built only when it is logged)
        log.info("chat request: %d messages, %s", len(body["messages"]),
                 "no compression" if stats is None else
                 f"{stats.original_tokens}->{stats.compressed_tokens} tokens in {stats.compress_ms:.1f} ms")
    content_type = "application/json" if content is not raw else None  # _dump writes UTF-8 (or ASCII)
    if body.get("stream") is not True:
        resp = await proxy.send("POST", proxy.chat_url, request, content, content_type=content_type)
        return _response(resp.content, resp, stats)
    resp = await proxy.send("POST", proxy.chat_url, request, content, stream=True, content_type=content_type)
    if resp.status_code >= 400:
        try:
            data = await resp.aread()
        except httpx.TimeoutException as exc:  # the error body stalled: as send() answers a stalled body
            raise ApiError(504, f"upstream timed out ({type(exc).__name__})", type="timeout",
                           code="upstream_timeout") from exc
        except httpx.HTTPError as exc:
            raise ApiError(502, f"upstream unreachable ({type(exc).__name__})", code="upstream_unreachable") from exc
        finally:
            await resp.aclose()
        return _response(data, resp, stats)
    return _relay(resp, slot, stats)


class _RelayResponse(StreamingResponse):
    """A streamed upstream body that, when the upstream breaks off, ends without its final chunk.

    The server then drops the connection, so the client sees a broken stream (as it would from the
    upstream itself) instead of a clean end that looks like a whole answer, and nothing is raised
    through the app, so no traceback is logged for an upstream's failure.
    """

    broken = False

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not self.broken:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _relay(resp: httpx.Response, slot: _Slot, stats: MessagesStats | None) -> StreamingResponse:
    """Stream an upstream response back as it arrives; the slot is freed when it ends or the client leaves."""

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_bytes():  # decoded: the Content-Encoding header is not copied
                yield chunk
        except httpx.HTTPError as exc:  # the status line is already sent
            log.warning("upstream stream broke off: %s", type(exc).__name__)
            relay.broken = True
        finally:
            await resp.aclose()
            slot.release()

    async def cleanup() -> None:  # also runs when the client leaves before the first chunk
        await resp.aclose()
        slot.release()

    slot.handed_off = True
    relay = _RelayResponse(chunks(), status_code=resp.status_code, background=BackgroundTask(cleanup))
    relay.raw_headers.extend(_response_headers(resp, stats))
    return relay
