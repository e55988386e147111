"""The compression service: ``POST /v1/compress`` over the same ``Compressor`` facade as the SDK.

One process hosts one or more compressors (and, under a floor, their predictors). Each
compressor gets a :class:`~pocsdk.server.batching.Batcher`: requests arriving within a few
milliseconds are scored in one call when the compressor offers the optional hook
``score_batch(list[(context, query)]) -> list[Scored]`` (a model-backed compressor can then run one
forward pass for all, as ``llmlingua2`` does), else one by one in the compressor's worker
thread. Selection and rendering then go through the facade per item, so results equal local ``compress`` calls.

Admission is bounded (``max_queue`` inputs waiting or running, uploads still being read counted too;
beyond that 429 with ``Retry-After``), checked before a body is read; every request has a timeout (504; a
batch that ran out of time because of its own size is a 413 ``batch_too_large``, which clients split), and
shutdown drains queued work.
Request bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from fastapi import Body, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic_core import PydanticSerializationError

from pocsdk import compressors as _compressors
from pocsdk._version import __version__
from pocsdk.compressor import DEFAULT_COMPRESSOR, Compressor
from pocsdk.compressors import TextCompressor, get_compressor
from pocsdk.compressors.base import Scored, Selection
from pocsdk.compressors.grid import select_many
from pocsdk.errors import ConfigError, PocError, UnknownCompressorError
from pocsdk.prediction.artifacts import read_card
from pocsdk.prediction.floor import PREDICTOR_NAMES
from pocsdk.server.batching import Batcher, BatcherClosed, BatchTimeout, DirectRunner
from pocsdk.server.common import (
    DEFAULT_MAX_BODY_BYTES,
    ApiError,
    BearerAuth,
    BodySizeLimit,
    ConcurrencyLimiter,
    Message,
    Receive,
    Scope,
    Send,
    install_error_handlers,
    status_for,
)
from pocsdk.server.metrics import ServiceMetrics
from pocsdk.server.service_models import (
    MAX_INPUTS_PER_REQUEST,
    BatchRequest,
    BatchResponse,
    CompressBody,
    CompressorInfo,
    CompressorsResponse,
    CompressRequest,
    Health,
    _Modes,
)
from pocsdk.types import CompressionResult, check_api_key

log = logging.getLogger("pocsdk.server")



# -- configuration -----------------------------------------------------------------------
@dataclass
class ServiceConfig:
    """Everything ``pocsdk serve`` decides; ``api_key=None`` means auth is off (already vetted)."""

    compressors: list[str] = field(default_factory=lambda: [DEFAULT_COMPRESSOR])
    model: str | None = None
    """Model for model-backed compressors (their ``model`` parameter)."""
    device: str = "auto"
    """Device for compressors that take one (``auto``, ``cuda``, ``cpu``)."""
    compressor_params: dict[str, Any] = field(default_factory=dict)
    """More constructor parameters (``--param``), each given to the hosted compressors that take it."""
    predictor: str | None = None
    """Predictor artifact for floor mode (default: the compressor's shipped predictor)."""
    api_key: str | None = None
    max_queue: int = 512
    """Most inputs admitted at once (waiting or running); more get 429."""
    batch_window_ms: float = 5.0
    """How long a batch gathers inputs; 0 turns batching off (each request runs on its own)."""
    max_batch: int = 32
    request_timeout_s: float = 60.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cors_origins: list[str] = field(default_factory=list)
    unbatched_workers: int = 4

    def __post_init__(self) -> None:
        if not self.compressors:
            raise ConfigError("host at least one compressor")
        if len(set(self.compressors)) != len(self.compressors):
            raise ConfigError("each compressor can be hosted once")
        if self.max_queue < 1 or self.max_batch < 1 or self.unbatched_workers < 1 or self.max_body_bytes < 1:
            raise ConfigError("max_queue, max_batch, unbatched_workers and max_body_bytes must be >= 1")
        if not (math.isfinite(self.batch_window_ms) and self.batch_window_ms >= 0):
            raise ConfigError(f"batch_window_ms must be a finite number >= 0, not {self.batch_window_ms!r}")
        if not (self.request_timeout_s > 0 and not math.isnan(self.request_timeout_s)):
            raise ConfigError(f"the request timeout must be > 0 (inf for none), not {self.request_timeout_s!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key is empty: give a key, or None to turn authentication off")
        check_api_key("api_key", self.api_key)  # as `pocsdk serve` does: a key no client could send, refused now
        if self.device not in ("auto", "cuda", "cpu") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cuda, cuda:N or cpu, not {self.device!r}")


# -- hosting -----------------------------------------------------------------------------
_PRESCORED: contextvars.ContextVar[Scored | None] = contextvars.ContextVar("pocsdk_prescored", default=None)


class _Prescorable:
    """Wraps a compressor so the facade can reuse a score computed by ``score_batch``.

    The batch worker sets the pre-computed ``Scored`` in a context variable around each
    ``Compressor.compress`` call; everything else (floor search, selection, rendering) is
    the facade's own code, so service results equal local ones.
    """

    def __init__(self, inner: TextCompressor) -> None:
        self.inner = inner
        self.name = inner.name

    def score(self, context: Any, query: str | None = None) -> Scored:
        pre = _PRESCORED.get()
        return pre if pre is not None else self.inner.score(context, query)

    def select(self, scored: Scored, keep_rate: float) -> Selection:
        return self.inner.select(scored, keep_rate)

    def select_many(self, scored: Scored, keep_rates: Sequence[float]) -> list[Selection]:
        """The floor search's grid of selections, shared work as for the inner compressor."""
        return select_many(self.inner, scored, keep_rates)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


OWN_TIMEOUT_SHARE = 0.5
"""Inputs that began within this share of the timeout began promptly (see ``_too_large``)."""


@dataclass
class _Job:
    context: Any
    query: str | None
    mode: dict[str, Any]
    abandoned: bool = False
    """Set when its caller stopped waiting (504, cancelled): a batch already running skips it."""
    started: float | None = None
    """``time.perf_counter()`` when its compression (or its batch's scoring) began."""
    ended: threading.Event = field(default_factory=threading.Event)
    """Set when the worker is done with it (finished, failed or skipped): its worker is free again."""


class _Abandoned(RuntimeError):
    """The result of a job nobody waits for any more (never sent to anyone)."""


class Hosted:
    """One hosted compressor: its facade and its batcher (or unbatched runner)."""

    def __init__(self, name: str, facade: Compressor, inner: TextCompressor, config: ServiceConfig,
                 metrics: ServiceMetrics) -> None:
        self.name = name
        self.facade = facade
        self.inner = inner
        self.metrics = metrics
        score_batch = getattr(inner, "score_batch", None)
        self.score_batch: Callable[[list[tuple[Any, str | None]]], list[Scored]] | None = (
            score_batch if callable(score_batch) else None)
        self.config = config
        self.runner = self._new_runner()
        self._closed = False
        self._recent: deque[float] = deque(maxlen=16)
        """Compression times of the last inputs, for the admission estimate (their median: one outlier, such
        as a huge input, must not make every later request look too slow to admit)."""
        metrics.track_queue(name, lambda: float(self.runner.depth))

    @property
    def workers(self) -> int:
        """Inputs compressed at once: one (batched, or one by one) or the unbatched pool's workers."""
        return 1 if self.config.batch_window_ms > 0 else self.config.unbatched_workers

    def expected_wait(self) -> float:
        """Seconds the queue ahead would take before a new input starts (0 with nothing queued, so an input is
        never refused on the estimate alone: one slow input must not lock every later one out)."""
        depth = self.runner.depth
        return depth * self.seconds_per_input / self.workers if depth else 0.0

    @property
    def seconds_per_input(self) -> float:
        """Median compression time of the recent inputs (0.0 before any)."""
        recent = list(self._recent)
        return statistics.median(recent) if recent else 0.0

    @seconds_per_input.setter
    def seconds_per_input(self, value: float) -> None:  # tests set an estimate
        self._recent.clear()
        if value:
            self._recent.append(value)

    def _new_runner(self) -> Batcher[_Job, CompressionResult] | DirectRunner[_Job, CompressionResult]:
        cfg = self.config
        if cfg.batch_window_ms > 0:
            if self.score_batch is None:
                # nothing to share between inputs: one at a time in arrival order, each answered when done
                # (a batch answers all at its end, so early inputs waited for the last and met 504s)
                return Batcher(self.run_batch, window_s=0.0, max_batch=1, name=self.name, on_batch=self._on_batch)
            return Batcher(self.run_batch, window_s=cfg.batch_window_ms / 1000.0, max_batch=cfg.max_batch,
                           name=self.name, on_batch=self._on_batch)
        return DirectRunner(self.run_batch, workers=cfg.unbatched_workers, name=self.name, on_batch=self._on_batch)

    def open(self) -> None:
        """Start serving (again, after a previous lifespan closed it)."""
        if self._closed:
            self.runner = self._new_runner()
            self._closed = False
        self.runner.start()

    async def close(self) -> None:
        """Finish queued work and stop."""
        self._closed = True
        await self.runner.close()

    def run_batch(self, all_jobs: Sequence[_Job]) -> list[CompressionResult | BaseException]:
        """Score the jobs (in one call when the compressor can), then finish each through the facade; a job
        whose caller has stopped waiting (timed out, gone) is skipped, before scoring and between inputs."""
        try:
            return self._run_batch(all_jobs)
        finally:
            for job in all_jobs:
                job.ended.set()

    def _run_batch(self, all_jobs: Sequence[_Job]) -> list[CompressionResult | BaseException]:
        out: list[CompressionResult | BaseException] = [_Abandoned()] * len(all_jobs)
        live = [i for i, j in enumerate(all_jobs) if not j.abandoned]
        jobs = [all_jobs[i] for i in live]
        now = time.perf_counter()
        if self.score_batch is not None and len(jobs) > 1:
            for job in jobs:  # scored together: they all begin now
                job.started = now
        scored: list[Scored] | None = None
        share = 0.0  # each input's part of the batched scoring, counted in its compression time
        if self.score_batch is not None and len(jobs) > 1:
            t0 = time.perf_counter()
            try:
                scored = list(self.score_batch([(j.context, j.query) for j in jobs]))
                if len(scored) != len(jobs):
                    scored = None
            except Exception:  # one bad input (or a batch-only failure): score one by one,
                scored = None  # so only that input fails, not every client's request in the batch
            if scored is not None:
                share = (time.perf_counter() - t0) / len(jobs)
        for i, job in enumerate(jobs):
            if job.abandoned:
                continue
            t0 = time.perf_counter()
            if job.started is None:
                job.started = t0
            token = _PRESCORED.set(scored[i] if scored is not None else None)
            try:
                res = self.facade.compress(job.context, job.query, **job.mode)
                spent = time.perf_counter() - t0 + share
                self.metrics.compress_seconds.labels(self.name).observe(spent)
                self._recent.append(spent)
                out[live[i]] = res
            except Exception as exc:
                out[live[i]] = exc
            finally:
                _PRESCORED.reset(token)
                if scored is None:  # one by one: its worker moves on (a batch's end sets the rest)
                    job.ended.set()
        return out

    def _on_batch(self, size: int, seconds: float, waits: list[float]) -> None:
        self.metrics.batch_size.labels(self.name).observe(size)
        for w in waits:
            self.metrics.queue_seconds.labels(self.name).observe(w)

    def info(self, default: str) -> CompressorInfo:
        params_fn = getattr(self.inner, "parameters", None)
        params = params_fn() if callable(params_fn) else {}
        return CompressorInfo(name=self.name, default=self.name == default, batched=self.score_batch is not None,
                              queue_depth=self.runner.depth, parameters=params)


def _accepts(name: str, param: str) -> bool:
    """Does the registered factory for ``name`` take keyword ``param``?"""
    target = _compressors._REGISTRY.get(name)
    if target is None:
        raise UnknownCompressorError(
            f"unknown compressor {name!r}; available: {', '.join(_compressors.available())}")
    factory = _compressors._resolve(target) if isinstance(target, str) else target
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == param or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def build_compressor(name: str, *, model: str | None = None, device: str = "auto",
                     params: dict[str, Any] | None = None) -> TextCompressor:
    """Build a hosted compressor, giving ``model``, ``device`` and ``params`` only to compressors that take them."""
    params = {k: v for k, v in (params or {}).items() if _accepts(name, k)}
    if model is not None and _accepts(name, "model"):
        params["model"] = model
    if _accepts(name, "device"):
        params["device"] = device
    elif device.startswith("cuda"):
        log.warning("compressor %r runs on the CPU; --device %s does not apply to it", name, device)
    return get_compressor(name, **params)


# -- the app -----------------------------------------------------------------------------
_ROUTES = frozenset({"/v1/compress", "/v1/compressors", "/healthz", "/metrics", "/openapi.json"})


class _RequestMetrics:
    """ASGI middleware: count requests by route and status, observe latency (bounded label set)."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in _ROUTES else "other"
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(route, status, time.perf_counter() - t0)


class ServiceState:
    """What the routes share: hosted compressors, the admission limiter, metrics."""

    def __init__(self, config: ServiceConfig, hosted: dict[str, Hosted], metrics: ServiceMetrics,
                 auth: BearerAuth | None = None) -> None:
        self.config = config
        self.hosted = hosted
        self.default = config.compressors[0]
        self.metrics = metrics
        self.auth = auth or BearerAuth(config.api_key)
        self.limiter = ConcurrencyLimiter(max_concurrent=config.max_queue, max_queue=0)
        self.draining = False
        """Set when the server starts to stop (its stop signal, or the lifespan's end): /healthz answers
        "draining" and new work 503."""
        metrics.in_flight.set_function(lambda: float(self.limiter.in_flight))

    def get(self, name: str | None) -> Hosted:
        key = name or self.default
        try:
            return self.hosted[key]
        except KeyError:
            raise UnknownCompressorError(
                f"compressor {key!r} is not hosted here; hosted: {', '.join(self.hosted)}") from None

    def _check_wait(self, jobs: list[tuple[Hosted, _Job]]) -> None:
        """429 now for work the queue ahead could not let finish within the request timeout: it would be
        computed only to be answered 504, crowding out requests that could still be served. (A request's own
        inputs are not estimated: the recent pace says little about inputs of another size, or batched ones.)"""
        timeout = self.config.request_timeout_s
        if not math.isfinite(timeout):
            return
        wait = max(h.expected_wait() for h, _ in jobs)
        if wait > timeout:
            raise ApiError(429, f"the queue ahead would take about {wait:.1f} s, over the {timeout:g} s timeout; "
                                "retry later", type="Overloaded", code="overloaded",
                           headers={"Retry-After": str(max(1, math.ceil(wait - timeout)))})

    async def compress(self, jobs: list[tuple[Hosted, _Job]]) -> list[CompressionResult]:
        if self.draining:
            raise _shutting_down()
        weight = len(jobs)
        self._check_wait(jobs)
        await self.limiter.acquire(weight)
        t0 = time.perf_counter()
        timeout = self.config.request_timeout_s

        async def one(h: Hosted, job: _Job) -> CompressionResult:
            try:
                return await h.runner.submit(job, timeout)
            except BaseException:
                job.abandoned = True  # timed out or cancelled: a batch that holds it skips it
                raise

        try:
            outcomes = await asyncio.gather(*(one(h, job) for h, job in jobs), return_exceptions=True)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when --graceful-timeout runs out; its own answer would be
            # a plain-text 500, so answer what a client can act on (retry elsewhere) while the socket is open
            uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python >= 3.11
            if uncancel is not None:
                uncancel()
            raise ApiError(503, "server is shutting down", type="Unavailable", code="shutting_down",
                           headers={"Retry-After": "1"}) from None
        finally:
            self.limiter.observe(time.perf_counter() - t0)
            self.limiter.release(weight)
        results: list[CompressionResult] = []
        for i, out in enumerate(outcomes):
            if isinstance(out, CompressionResult):
                results.append(out)
                continue
            done = sum(isinstance(o, CompressionResult) for o in outcomes)
            if isinstance(out, BatchTimeout) and _too_large(jobs, outcomes, t0 + OWN_TIMEOUT_SHARE * timeout):
                # its own inputs outran the timeout: a smaller batch would finish, and clients split on
                # batch_too_large (a 504 they gave up on). Its inputs still running cannot be stopped, so the
                # answer waits for them (up to one more timeout): halves sent at once would queue behind them
                await _ended([j for _, j in jobs if j.started is not None], timeout)
                raise ApiError(413, f"a batch of {len(jobs)} inputs did not finish within the {timeout:g} s "
                                    f"timeout ({done} did); split it", type="InputTooLargeError",
                               code="batch_too_large", param="inputs")
            where = f"inputs[{i}]" if len(jobs) > 1 else None
            raise _api_error(out, where)
        for (h, _), res in zip(jobs, results, strict=True):  # counted once the request succeeds as a whole
            self.metrics.observe_tokens(h.name, res.original_tokens, res.compressed_tokens)
        return results


def _too_large(jobs: list[tuple[Hosted, _Job]], outcomes: Sequence[object], prompt: float) -> bool:
    """Did a request of several inputs time out because of its own size, so that halves would finish?

    Yes when its inputs were scored together (one ``score_batch``) from a start before ``prompt``: a smaller
    batch is a shorter pass. One by one, yes when its work began before ``prompt`` and its unfinished inputs
    began after it (or never): its own earlier inputs took the time. No when an unfinished input began before
    ``prompt``: it had at least half the timeout to itself, and splitting would run it again for a 504 that
    names no input. A request that waited behind other clients' work (nothing began before ``prompt``) keeps
    its 504."""
    if len(jobs) < 2:
        return False
    starts = [j.started for _, j in jobs]
    if all(t is not None for t in starts) and len(set(starts)) == 1:
        return starts[0] is not None and starts[0] <= prompt
    begun = [t for t in starts if t is not None]
    if not begun or min(begun) > prompt:
        return False
    unfinished = [t for t, o in zip(starts, outcomes, strict=True) if not isinstance(o, CompressionResult)]
    alone = [t for t in unfinished if t is not None and t <= prompt]
    if alone:  # one input that had half the timeout and did not finish: no; a batch scored together: yes
        return len(alone) > 1 and len(set(alone)) == 1
    return bool(unfinished)


async def _ended(jobs: list[_Job], timeout: float) -> None:
    """Wait, up to ``timeout`` seconds in all, until the workers are done with ``jobs``."""
    waiting = [j for j in jobs if not j.ended.is_set()]
    if not waiting:
        return
    deadline = time.monotonic() + (timeout if math.isfinite(timeout) else 60.0)

    def wait() -> None:
        for job in waiting:
            job.ended.wait(max(0.0, deadline - time.monotonic()))

    await asyncio.to_thread(wait)


def _has_shipped_predictor(inner: TextCompressor) -> bool:
    from pocsdk.prediction.floor import default_predictor_dir

    return (default_predictor_dir(getattr(inner, "name", "")) / "card.json").is_file()


def _warm_up(facade: Compressor) -> None:
    """One floor compression before the port opens: the first floor request would otherwise load the predictor
    and fit the (0.9, 0.9) calibration, about a second, and meet a short ``--timeout`` with a 504."""
    try:
        facade.compress("Warm-up sentence about nothing in particular. " * 20, "warm up?", floor=0.9,
                        confidence=0.9)
    except (PocError, ImportError) as exc:  # no predictor for this compressor: floor requests answer the same
        log.info("floor warm-up skipped: %s", exc)


class _AdmittedRoute(APIRoute):
    """The route of ``POST /v1/compress``: the key, shutdown and room are checked, and the upload counted while
    it is read, before the body is read and parsed (FastAPI reads it first). Each upload buffers up to the body
    limit: stalled ones piled up without bound, none refused until its last byte came. The parsing, and so
    every answer to a malformed body, stays FastAPI's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def admitted(request: Request) -> Response:
            state: ServiceState = request.app.state.pocsdk
            await state.auth(request)
            if state.draining:
                raise _shutting_down()
            with state.limiter.reading(weight=1):  # 429 now when full; counted until read
                await request.body()  # kept on the request: the handler parses it from there
            return await handler(request)

        return admitted


def _shutting_down() -> ApiError:
    return ApiError(503, "server is shutting down", type="Unavailable", code="shutting_down",
                    headers={"Retry-After": "1"})


async def _abandon_on_disconnect(request: Request, jobs: list[_Job]) -> None:
    """Mark the jobs abandoned when the client goes away (the body is read, so the next message is the
    disconnect): a batch that holds them skips them instead of compressing for no one."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for job in jobs:
                job.abandoned = True
            return


def _api_error(exc: BaseException, where: str | None) -> ApiError:
    prefix = f"{where}: " if where else ""
    if isinstance(exc, BatchTimeout):
        return ApiError(504, f"{prefix}compression did not finish in time ({exc})", type="Timeout", code="timeout",
                        param=where)
    if isinstance(exc, _Abandoned):  # the client left; nobody reads this answer
        return ApiError(499, f"{prefix}the client closed the request", type="ClientClosed", code="client_closed",
                        param=where)
    if isinstance(exc, (BatcherClosed, asyncio.CancelledError)):  # closing, or cancelled at shutdown
        return ApiError(503, f"{prefix}server is shutting down", type="Unavailable", code="shutting_down",
                        param=where, headers={"Retry-After": "1"})
    if isinstance(exc, PocError):
        return ApiError(status_for(exc), f"{prefix}{exc}", type=type(exc).__name__, code=exc.code, param=where)
    if isinstance(exc, ImportError):  # an optional part (e.g. floor mode's predictor) is not installed
        return ApiError(501, f"{prefix}not available on this server: {exc}", type="MissingDependencyError",
                        code="missing_dependency", param=where)
    log.error("compression failed with %s", type(exc).__name__, exc_info=exc)  # never the input itself
    return ApiError(500, f"{prefix}internal error while compressing", type="InternalError", code="internal_error",
                    param=where)


def _job(item: CompressRequest, defaults: _Modes | None = None) -> _Job:
    mode = item.mode()
    if defaults is not None and not {"keep_rate", "target_tokens", "floor"} & mode.keys():
        base = defaults.mode()
        if "confidence" in mode:
            base["confidence"] = mode["confidence"]
        mode = base
    elif defaults is not None and "confidence" not in mode and defaults.confidence is not None:
        mode["confidence"] = defaults.confidence  # a default too, when the input names its own floor
    ctx = item.context
    context: Any = ctx if isinstance(ctx, str) else [
        d if isinstance(d, str) else d.model_dump(exclude_none=True) for d in ctx]
    return _Job(context=context, query=item.query, mode=mode)


def _json(result: CompressionResult) -> str:
    try:
        return result.model_dump_json()
    except PydanticSerializationError:  # a lone surrogate (valid JSON escape, not UTF-8): written escaped
        return json.dumps(_finite(result.model_dump(mode="json")))


def _finite(value: Any) -> Any:
    """JSON has no infinity: non-finite numbers become ``null``, as ``model_dump_json`` writes them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _steered_by_predictor(cfg: ServiceConfig, inners: dict[str, TextCompressor]) -> set[str]:
    """The hosted compressors ``--predictor`` applies to: a shipped name applies to each, an artifact to the
    ones of the compressor it was trained for, under whatever name they are hosted (the others keep their
    shipped predictors)."""
    if cfg.predictor is None or cfg.predictor in PREDICTOR_NAMES:
        return set(inners)
    trained_for = read_card(cfg.predictor).compressor
    steered = {name for name, inner in inners.items() if getattr(inner, "name", name) == trained_for}
    if not steered:
        raise ConfigError(f"predictor {cfg.predictor} was trained for compressor {trained_for!r}, which is not "
                          f"hosted ({', '.join(inners)})")
    return steered


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """Build the service app. Compressors (and models) load here, before the port opens."""
    cfg = config or ServiceConfig()
    metrics = ServiceMetrics()
    hosted: dict[str, Hosted] = {}
    unused = [k for k in cfg.compressor_params if not any(_accepts(n, k) for n in cfg.compressors)]
    if unused:
        raise ConfigError(f"parameter {', '.join(unused)} applies to none of the hosted compressors "
                          f"({', '.join(cfg.compressors)})")
    inners = {name: build_compressor(name, model=cfg.model, device=cfg.device, params=cfg.compressor_params)
              for name in cfg.compressors}
    steered = _steered_by_predictor(cfg, inners)
    for name, inner in inners.items():
        facade = Compressor(compressor=_Prescorable(inner), predictor=cfg.predictor if name in steered else None)
        if name in steered and cfg.predictor not in PREDICTOR_NAMES:
            facade.prepare()  # a bad artifact fails here, before the port opens, not on every floor request
        if name in steered and (cfg.predictor is not None or _has_shipped_predictor(inner)):
            _warm_up(facade)
        hosted[name] = Hosted(name, facade, inner, cfg, metrics)
    auth = BearerAuth(cfg.api_key)
    state = ServiceState(cfg, hosted, metrics, auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.draining = False
        for h in hosted.values():
            h.open()
        yield
        # uvicorn has stopped accepting and waited for open requests; finish anything still queued.
        state.draining = True
        await asyncio.gather(*(h.close() for h in hosted.values()))

    app = FastAPI(
        title="pocsdk compression service",
        version=__version__,
        description="Context compression under a performance floor or at a fixed rate.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.pocsdk = state
    install_error_handlers(app, hide_loc=("single", "batch"))
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    if cfg.cors_origins:  # added after (so around) the body limit: its 413 carries the CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_RequestMetrics, metrics=metrics)
    secured = [Depends(auth)]
    errors: dict[int | str, dict[str, Any]] = {
        code: {"description": desc} for code, desc in (
            (400, "invalid input (typed error)"), (401, "missing or invalid API key"),
            (404, "compressor not hosted"), (413, "request too large"), (422, "malformed request"),
            (429, "queue full; see Retry-After"), (504, "timed out"))}

    @app.get("/healthz", response_model=Health, tags=["service"])
    async def healthz() -> JSONResponse:
        """Liveness: 200 while serving, 503 while draining."""
        body = Health(status="draining" if state.draining else "ok", version=__version__,
                      compressors=list(hosted))
        return JSONResponse(body.model_dump(), status_code=503 if state.draining else 200)

    app.head("/healthz", include_in_schema=False)(healthz)  # load balancers that check with HEAD

    @app.get("/v1/compressors", response_model=CompressorsResponse, dependencies=secured, tags=["service"],
             responses={401: errors[401]})
    async def list_compressors() -> CompressorsResponse:
        """The hosted compressors and their parameters."""
        return CompressorsResponse(default=state.default, compressors=[h.info(state.default) for h in hosted.values()])

    async def compress(body: Annotated[CompressBody, Body()], request: Request) -> Response:
        """Compress one context, or a batch ``{"inputs": [...]}``; results are the SDK's ``CompressionResult``."""
        if isinstance(body, BatchRequest):
            if len(body.inputs) > MAX_INPUTS_PER_REQUEST:
                raise ApiError(413, f"a batch of {len(body.inputs)} inputs is over the limit of "
                                    f"{MAX_INPUTS_PER_REQUEST} per request; split it", type="InputTooLargeError",
                               code="batch_too_large", param="inputs")
            jobs = [(state.get(item.compressor or body.compressor), _job(item, body)) for item in body.inputs]
        else:
            jobs = [(state.get(body.compressor), _job(body))]
        watcher = asyncio.get_running_loop().create_task(_abandon_on_disconnect(request, [job for _, job in jobs]))
        try:
            results = await state.compress(jobs)
        finally:
            watcher.cancel()
        if isinstance(body, BatchRequest):
            content = '{"results":[' + ",".join(_json(r) for r in results) + "]}"
        else:
            content = _json(results[0])
        return Response(content=content, media_type="application/json")

    app.router.add_api_route(  # not @app.post: the route class checks admission before the body is read
        "/v1/compress",
        compress,
        methods=["POST"],
        dependencies=secured,
        tags=["compress"],
        response_model=None,
        responses={200: {"model": Union[CompressionResult, BatchResponse],
                         "description": "a CompressionResult, or {results: [...]} for a batch"}, **errors},
        route_class_override=_AdmittedRoute,
    )

    @app.get("/metrics", dependencies=secured, tags=["service"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                        401: errors[401]})
    async def prometheus() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
