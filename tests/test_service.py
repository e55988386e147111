"""The compression service as a real process on loopback: parity, auth, load, overload, shutdown.

Servers start with ``python -c 'from pocsdk.cli import main; main()' serve ...`` on a free
port and are terminated in teardown. This module also defines the slow stub compressor the
servers import with ``--import test_service``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import httpx
import numpy as np
import pytest

from pocsdk import Compressor
from pocsdk.compressors import TextCompressor, register
from pocsdk.compressors.base import Scored
from pocsdk.compressors.extractive import ExtractiveCompressor

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TESTS = Path(__file__).resolve().parent
KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


# -- stub compressors (imported by the server processes too) -------------------------------
@dataclass
class SlowCompressor(ExtractiveCompressor):
    """Extractive, but a query ``sleep:<seconds>`` makes scoring sleep that long."""

    name: ClassVar[str] = "slow-stub"

    def score(self, context: Any, query: str | None = None) -> Scored:
        if query and query.startswith("sleep:"):
            time.sleep(float(query.split(":", 1)[1]))
        if query == "stopiter":  # a bare next() on an empty iterator, as custom code may do
            next(iter([]))
        return super().score(context, query)


@dataclass
class BatchStub(ExtractiveCompressor):
    """Extractive with the optional ``score_batch`` hook; records batch sizes."""

    name: ClassVar[str] = "batch-stub"
    batches: list[int] | None = None

    def score_batch(self, pairs: list[tuple[Any, str | None]]) -> list[Scored]:
        if self.batches is not None:
            self.batches.append(len(pairs))
        return [self.score(c, q) for c, q in pairs]

    def score(self, context: Any, query: str | None = None) -> Scored:
        if query == "stopiter":
            raise StopIteration("the iterator ran dry")
        return super().score(context, query)


@dataclass
class BatchSlow(ExtractiveCompressor):
    """Batched scoring that costs 0.1 s per input, as a model's forward pass does on a CPU."""

    name: ClassVar[str] = "batch-slow"

    def score_batch(self, pairs: list[tuple[Any, str | None]]) -> list[Scored]:
        time.sleep(0.1 * len(pairs))
        return [ExtractiveCompressor.score(self, c, q) for c, q in pairs]


register("slow-stub", cast("Callable[..., TextCompressor]", SlowCompressor))
register("batch-slow", cast("Callable[..., TextCompressor]", BatchSlow))
register("batch-stub", cast("Callable[..., TextCompressor]", BatchStub))


# -- helpers -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]


def start_server(*args: str, key: str | None = KEY, timeout: float = 40.0) -> Server:
    """Start ``pocsdk serve`` on a free loopback port and wait for ``/healthz``."""
    port = free_port()
    auth = ["--api-key", key] if key else ["--no-auth"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("POCSDK_API_KEY", None)
    cmd = [sys.executable, "-c", "from pocsdk.cli import main; main()", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--import", "test_service", "--log-level", "warning", *auth, *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {err[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return Server(url, proc)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(Server(url, proc))
    raise RuntimeError("server did not become healthy in time")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=5)
    if server.proc.stderr:
        server.proc.stderr.close()


def long_text(n: int = 120, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    topics = ["weather", "football", "election", "harvest", "markets", "river", "museum"]
    return " ".join(
        f"Sentence {i} reports on the {topics[int(rng.integers(len(topics)))]} near town {int(rng.integers(50))}."
        for i in range(n))


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A result without timings (the only field that differs between runs)."""
    return {k: v for k, v in result.items() if k != "timings"}


_shared: list[Server] = []
_users: list[int] = [0]


def shared_server() -> Iterator[Server]:
    """One server for test_service and test_remote (both take it session-scoped; the last user stops it)."""
    if not _shared:
        _shared.append(start_server("-c", "skim", "-c", "extractive", "-c", "truncate", "-c", "random",
                                    "--max-queue", "1000", "--max-body-mb", "1"))
    _users[0] += 1
    try:
        yield _shared[0]
    finally:
        _users[0] -= 1
        if _users[0] == 0:
            stop_server(_shared.pop())


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    yield from shared_server()


# -- parity with the local SDK -----------------------------------------------------------
@pytest.mark.parametrize("name", ["extractive", "skim", "truncate", "random"])
def test_results_equal_local_compression(server: Server, name: str) -> None:
    docs = [{"id": "a", "text": long_text(80, 1), "metadata": {"source": "x"}}, {"id": "b", "text": long_text(60, 2)}]
    cases: list[tuple[Any, str | None, dict[str, Any]]] = [
        (long_text(), "football near town 3", {"keep_rate": 0.3}),
        (docs, "harvest", {"target_tokens": 200}),
        ("too short to compress", None, {"keep_rate": 0.5}),
    ]
    for context, query, mode in cases:
        r = httpx.post(server.url + "/v1/compress", headers=AUTH,
                       json={"context": context, "query": query, "compressor": name, **mode})
        assert r.status_code == 200, r.text
        local = Compressor(compressor=name).compress(context, query, **mode).model_dump(mode="json")
        assert comparable(r.json()) == comparable(local)


def test_batch_request_equals_compress_many(server: Server) -> None:
    items = [{"context": long_text(50, i), "query": "river"} for i in range(5)]
    r = httpx.post(server.url + "/v1/compress", headers=AUTH,
                   json={"inputs": [*items[:4], {**items[4], "keep_rate": 0.8}], "keep_rate": 0.25})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    last = Compressor(keep_rate=0.8).compress(items[4]["context"], items[4]["query"])
    local = [*Compressor(keep_rate=0.25).compress_many(items[:4]), last]
    assert [comparable(x) for x in results] == [comparable(x.model_dump(mode="json")) for x in local]


# -- auth, limits, typed errors ----------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": "Bearer"}])
def test_auth_rejects_bad_or_missing_tokens(server: Server, headers: dict[str, str]) -> None:
    body = {"context": long_text(), "keep_rate": 0.5}
    for method, path in (("POST", "/v1/compress"), ("GET", "/v1/compressors"), ("GET", "/metrics")):
        r = httpx.request(method, server.url + path, headers=headers, json=body if method == "POST" else None)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_no_auth_refused_off_loopback() -> None:
    from typer.testing import CliRunner

    from pocsdk.cli import app

    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--no-auth"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["serve", "--host", "127.0.0.1"], env={"POCSDK_API_KEY": ""})
    assert result.exit_code == 2


def test_typed_errors(server: Server) -> None:
    def post(body: Any) -> httpx.Response:
        return httpx.post(server.url + "/v1/compress", headers=AUTH, json=body)

    r = post({"context": "   ", "keep_rate": 0.5})
    assert (r.status_code, r.json()["error"]["type"]) == (400, "EmptyContextError")
    r = post({"context": "x", "keep_rate": 0.5, "compressor": "nope"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_compressor")
    r = post({"context": "x", "keep_rate": 1.5})
    assert r.status_code == 422 and r.json()["error"]["param"] == "keep_rate"
    r = post({"context": "x", "keep_rate": 0.5, "floor": 0.9})
    assert r.status_code == 400
    r = post({"context": "x"})
    assert (r.status_code, r.json()["error"]["type"]) == (400, "ConfigError")
    r = post({"inputs": [{"context": "fine text"}, {"context": ""}], "keep_rate": 0.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "inputs[1]"
    r = httpx.post(server.url + "/v1/compress", headers={**AUTH, "Content-Type": "application/json"},
                   content=b"{not json")
    assert r.status_code == 422
    big = {"context": "word " * 300_000, "keep_rate": 0.5}  # 1.5 MB, over --max-body-mb 1
    r = post(big)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
    # refused as the local facade refuses them, not read as 1.0 / 1 token / 0.3
    for bad in ({"keep_rate": True}, {"target_tokens": True}, {"keep_rate": "0.3"}, {"target_tokens": "50"}):
        assert post({"context": long_text(), **bad}).status_code == 422, bad
    assert post({"context": [{"id": True, "text": long_text()}], "keep_rate": 0.5}).status_code == 422
    assert post({"context": long_text(), "target_tokens": 50.0}).status_code == 200  # a whole number, as locally


def test_batch_defaults_include_confidence_when_an_input_names_its_floor(server: Server) -> None:
    body = {"confidence": 0.95, "inputs": [{"context": long_text(), "query": "football", "floor": 0.9}]}
    r = httpx.post(server.url + "/v1/compress", headers=AUTH, json=body)
    assert r.status_code == 200 and r.json()["results"][0]["floor"]["confidence"] == 0.95


def test_config_refuses_values_that_would_break_every_request() -> None:
    from pocsdk.errors import ConfigError
    from pocsdk.server.service import ServiceConfig

    for bad in ({"request_timeout_s": float("nan")}, {"max_body_bytes": 0}, {"api_key": ""},
                {"batch_window_ms": float("inf")}, {"unbatched_workers": 0}):
        with pytest.raises(ConfigError):
            ServiceConfig(**bad)  # type: ignore[arg-type]
    ServiceConfig(request_timeout_s=float("inf"))  # no timeout is allowed


def test_predictor_applies_to_the_compressor_it_was_trained_for() -> None:
    from pocsdk.errors import ArtifactError, ConfigError
    from pocsdk.server.service import ServiceConfig, create_app

    root = Path(__file__).resolve().parents[1] / "predictors"
    if not (root / "extractive" / "card.json").is_file():
        pytest.skip("no shipped predictor for extractive")
    with pytest.raises(ConfigError, match="not hosted"):
        create_app(ServiceConfig(compressors=["skim"], predictor=str(root / "extractive")))
    with pytest.raises(ArtifactError):  # at start-up, not on every floor request
        create_app(ServiceConfig(compressors=["extractive"], predictor="/nonexistent/predictor"))
    app = create_app(ServiceConfig(compressors=["extractive", "skim"], predictor=str(root / "extractive")))
    hosted = app.state.pocsdk.hosted
    assert hosted["extractive"].facade._policy is not None  # loaded up front
    assert hosted["skim"].facade._predictor_spec is None  # skim keeps its own shipped predictor


def test_compressors_and_metrics(server: Server) -> None:
    r = httpx.get(server.url + "/v1/compressors", headers=AUTH)
    assert r.status_code == 200
    info = r.json()
    assert info["default"] == "skim"  # the first hosted
    assert [c["name"] for c in info["compressors"]] == ["skim", "extractive", "truncate", "random"]
    httpx.post(server.url + "/v1/compress", headers=AUTH, json={"context": long_text(), "keep_rate": 0.4})
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    for name in ("pocsdk_requests_total", "pocsdk_request_seconds_bucket", "pocsdk_tokens_in_total",
                 "pocsdk_tokens_out_total", "pocsdk_queue_depth", "pocsdk_batch_size_bucket"):
        assert name in text
    assert 'pocsdk_requests_total{route="/v1/compress",status="200"}' in text


def test_tokens_are_counted_only_for_requests_that_succeed(server: Server) -> None:
    def tokens_in() -> float:
        text = httpx.get(server.url + "/metrics", headers=AUTH).text
        line = [x for x in text.splitlines() if x.startswith('pocsdk_tokens_in_total{compressor="random"}')]
        return float(line[0].split()[-1]) if line else 0.0

    before = tokens_in()
    bad = {"compressor": "random", "keep_rate": 0.5, "inputs": [{"context": long_text()}, {"context": " "}]}
    assert httpx.post(server.url + "/v1/compress", headers=AUTH, json=bad).status_code == 400
    assert tokens_in() == before  # the good input's tokens were never returned to anyone
    good = {"compressor": "random", "keep_rate": 0.5, "context": long_text()}
    assert httpx.post(server.url + "/v1/compress", headers=AUTH, json=good).status_code == 200
    assert tokens_in() > before


# -- load --------------------------------------------------------------------------------
def test_200_concurrent_requests_all_answered(server: Server) -> None:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v1/compress", json={"context": [{"id": f"req-{i}", "text": long_text(15, i)}],
                                                  "query": "markets", "keep_rate": 0.3 + (i % 5) / 10})
                for i in range(200)))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 200
    for i, r in enumerate(responses):
        body = r.json()
        assert body["documents"][0]["id"] == f"req-{i}"
        assert body["requested_keep_rate"] == pytest.approx(0.3 + (i % 5) / 10)


def test_overload_429_timeout_504_and_graceful_sigterm() -> None:
    """One slow server: overload answers 429, a slow request 504, and SIGTERM lets the last request finish."""
    s = start_server("-c", "slow-stub", "--max-queue", "2", "--max-batch", "1", "--timeout", "1.2")
    try:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=s.url, headers=AUTH, timeout=30) as client:
                return await asyncio.gather(*(
                    client.post("/v1/compress", json={"context": long_text(20, i), "query": "sleep:0.25",
                                                      "keep_rate": 0.5})
                    for i in range(12)))

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert len(codes) == 12 and set(codes) <= {200, 429}, codes
        assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == "overloaded"
        # still healthy, and serves again once the queue drained
        assert httpx.get(s.url + "/healthz").status_code == 200
        r = httpx.post(s.url + "/v1/compress", headers=AUTH, json={"context": long_text(), "keep_rate": 0.5})
        assert r.status_code == 200
        # a request over its timeout answers 504
        r = httpx.post(s.url + "/v1/compress", headers=AUTH, timeout=10,
                       json={"context": long_text(), "query": "sleep:2", "keep_rate": 0.5})
        assert (r.status_code, r.json()["error"]["code"]) == (504, "timeout")

        for _ in range(100):  # let the timed-out item's thread finish its sleep (it cannot be interrupted)
            if 'pocsdk_queue_depth{compressor="slow-stub"} 0.0' in httpx.get(s.url + "/metrics", headers=AUTH).text:
                break
            time.sleep(0.1)

        # SIGTERM while a request runs: the response still arrives, then the process exits cleanly
        async def in_flight() -> httpx.Response:
            async with httpx.AsyncClient(base_url=s.url, headers=AUTH, timeout=30) as client:
                task = asyncio.create_task(client.post(
                    "/v1/compress", json={"context": long_text(), "query": "sleep:0.9", "keep_rate": 0.5}))
                await asyncio.sleep(0.3)
                s.proc.send_signal(signal.SIGTERM)
                return await task

        r = asyncio.run(in_flight())
        assert r.status_code == 200, r.text
        assert r.json()["original_tokens"] > 0
        # uvicorn re-raises the signal after a clean shutdown, so -SIGTERM is a clean exit too
        assert s.proc.wait(timeout=15) in (0, -signal.SIGTERM)
    finally:
        stop_server(s)


# -- batching (in process) ---------------------------------------------------------------
def test_score_batch_hook_batches_and_matches_local() -> None:
    from pocsdk.server.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(compressors=["batch-stub"], api_key=None, batch_window_ms=50, max_batch=8))
    hosted = app.state.pocsdk.hosted["batch-stub"]
    hosted.inner.batches = []

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.gather(*(
                    client.post("/v1/compress", json={"context": long_text(30, i), "keep_rate": 0.4})
                    for i in range(8)))

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    assert max(hosted.inner.batches) > 1  # gathered into one score_batch call
    for i, r in enumerate(responses):
        local = Compressor(keep_rate=0.4, compressor="extractive").compress(long_text(30, i)).model_dump(mode="json")
        assert comparable(r.json()) == {**comparable(local), "compressor": "batch-stub"}


def test_llmlingua2_requests_share_one_forward_pass() -> None:
    """The built-in model-backed compressor has the hook: concurrent requests are scored together."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pocsdk.server.service import ServiceConfig, create_app
    from pocsdk.testing.peers import make_random_token_classifier

    model = str(make_random_token_classifier(family="bert", size="tiny"))
    app = create_app(ServiceConfig(compressors=["llmlingua2"], model=model, device="cpu", api_key=None,
                                   batch_window_ms=100, max_batch=8))
    hosted = app.state.pocsdk.hosted["llmlingua2"]
    sizes: list[int] = []
    real = hosted.score_batch

    def spy(items: Any) -> Any:
        sizes.append(len(items))
        return real(items)

    hosted.score_batch = spy

    async def run() -> tuple[dict[str, Any], list[httpx.Response]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                info = (await client.get("/v1/compressors")).json()
                return info, list(await asyncio.gather(*(
                    client.post("/v1/compress", json={"context": long_text(30, i), "keep_rate": 0.4})
                    for i in range(6))))

    info, responses = asyncio.run(run())
    assert [c["batched"] for c in info["compressors"]] == [True]
    assert all(r.status_code == 200 for r in responses)
    assert sizes and max(sizes) > 1
    local = Compressor(keep_rate=0.4, compressor="llmlingua2", model=model, device="cpu")
    for i, r in enumerate(responses):
        assert r.json()["text"] == local.compress(long_text(30, i)).text


@pytest.mark.parametrize("runner", ["direct", "batcher"])
def test_timed_out_work_that_has_not_started_is_not_run(runner: str) -> None:
    from pocsdk.server.batching import Batcher, BatchTimeout, DirectRunner

    calls: list[Any] = []

    def slow(items: Any) -> list[Any]:
        calls.extend(items)
        time.sleep(0.2)
        return list(items)

    async def run() -> list[str]:
        r: Any = DirectRunner(slow, workers=1) if runner == "direct" else Batcher(slow, window_s=0.0, max_batch=1)

        async def one(i: int) -> str:
            try:
                await r.submit(i, timeout=0.1)
                return "ok"
            except BatchTimeout:
                return "timeout"

        out = list(await asyncio.gather(*(one(i) for i in range(8))))
        await r.close()
        return out

    assert asyncio.run(run()) == ["timeout"] * 8
    assert len(calls) <= 2  # only what had started when its callers gave up; the queue behind it was dropped


@pytest.mark.parametrize("runner", ["direct", "batcher"])
def test_a_timed_out_job_still_running_counts_in_the_depth(runner: str) -> None:
    """With batching off, a timed-out job that had started left the depth at 0: admission saw an idle queue and let
    new requests wait behind it into a 504; close() then blocked the event loop while the pool finished."""
    from pocsdk.server.batching import Batcher, BatchTimeout, DirectRunner

    def slow(items: Any) -> list[Any]:
        time.sleep(0.6)
        return list(items)

    async def run() -> tuple[int, float]:
        r: Any = DirectRunner(slow, workers=1) if runner == "direct" else Batcher(slow, window_s=0.0, max_batch=1)
        with pytest.raises(BatchTimeout):
            await r.submit(1, timeout=0.1)
        depth = r.depth
        gaps: list[float] = []
        stop = asyncio.Event()

        async def beat() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        hb = asyncio.create_task(beat())
        await asyncio.sleep(0.03)
        await r.close()
        stop.set()
        await hb
        return depth, max(gaps)

    depth, stall = asyncio.run(run())
    assert depth == 1
    assert stall < 0.3  # the loop kept beating while close() waited for the job


def test_batcher_drains_on_close() -> None:
    from pocsdk.server.batching import Batcher, BatcherClosed

    def slow_double(items: Any) -> list[Any]:
        time.sleep(0.05)
        return [x * 2 for x in items]

    async def run() -> tuple[list[int], list[int]]:
        b: Batcher[int, int] = Batcher(slow_double, window_s=0.01, max_batch=4)
        sizes: list[int] = []
        b.on_batch = lambda n, _s, _w: sizes.append(n)
        tasks = [asyncio.create_task(b.submit(i)) for i in range(10)]
        await asyncio.sleep(0)
        await b.close()
        with pytest.raises(BatcherClosed):
            await b.submit(1)
        return list(await asyncio.gather(*tasks)), sizes

    results, sizes = asyncio.run(run())
    assert results == [2 * i for i in range(10)]
    assert sum(sizes) == 10 and max(sizes) == 4


def test_cli_batch_against_remote_service(server: Server, tmp_path: Any) -> None:
    """`pocsdk compress --endpoint` gives the same records as local compression, one per input, errors kept."""
    import json

    from typer.testing import CliRunner

    from pocsdk.cli import app

    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": "a", "text": long_text(60, 3), "query": "markets"}), "{not json",
             json.dumps({"id": "c", "text": "   "})]
    src.write_text("\n".join(lines) + "\n")
    remote_out, local_out = tmp_path / "remote.jsonl", tmp_path / "local.jsonl"
    remote = CliRunner().invoke(app, ["compress", str(src), "-o", str(remote_out), "--keep-rate", "0.3", "-q",
                                      "--endpoint", server.url, "--api-key", KEY])
    local = CliRunner().invoke(app, ["compress", str(src), "-o", str(local_out), "--keep-rate", "0.3", "-q"])
    assert remote.exit_code == local.exit_code == 1  # two bad records
    got = [json.loads(x) for x in remote_out.read_text().splitlines()]
    want = [json.loads(x) for x in local_out.read_text().splitlines()]
    assert [r["id"] for r in got] == ["a", None, "c"]
    assert comparable(got[0]["result"]) == comparable(want[0]["result"])
    assert got[1]["error"]["code"] == want[1]["error"]["code"]
    assert got[2]["error"]["code"] == want[2]["error"]["code"] == "empty_context"


def test_lone_surrogates_are_answered_and_the_connection_stays_usable(server: Server) -> None:
    """Valid JSON with an unpaired surrogate escape used to answer 500, after which the server closed the
    keep-alive connection under the client's next request."""
    raw = b'{"context": "\\ud800 ' + long_text(40, 3).encode() + b'", "keep_rate": 0.5}'
    with httpx.Client(headers={**AUTH, "content-type": "application/json"}) as client:
        r = client.post(server.url + "/v1/compress", content=raw)
        assert r.status_code == 200, r.text
        assert b"\\ud800" in r.content and r.json()["compressed_tokens"] > 0
        for _ in range(3):  # the same connection, at once
            assert client.post(server.url + "/v1/compress", content=raw).status_code == 200
    assert httpx.head(server.url + "/healthz").status_code == 200


def test_limits_answer_typed_errors_that_clients_can_act_on() -> None:
    """Metadata nested too deep for the answer to be written is a 422 before any work (it was a 500 after it);
    a batch over 256 inputs is a 413 batch_too_large, which clients split on (a 422 they could not act on);
    a body over the limit carries the CORS headers like every other answer."""
    from pocsdk.server.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(compressors=["extractive"], api_key=None, max_body_bytes=200_000,
                                   cors_origins=["https://app.example"]))

    def nested(depth: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(depth - 1):
            value = {"k": value}
        return value

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            origin = {"origin": "https://app.example"}
            async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=origin) as client:
                doc = {"text": long_text(20), "metadata": nested(64)}
                ok = await client.post("/v1/compress", json={"context": [doc], "keep_rate": 0.5})
                deep = await client.post("/v1/compress", json={"context": [{**doc, "metadata": nested(300)}],
                                                               "keep_rate": 0.5})
                many = await client.post("/v1/compress", json={"inputs": [{"context": "a b c"}] * 257,
                                                               "keep_rate": 0.5})
                big = await client.post("/v1/compress", json={"context": "word " * 60_000, "keep_rate": 0.5})
                raw = '{"context": [{"text": "a b c", "metadata": {"k\\ud800": 1}}], "keep_rate": 0.5}'
                surrogate_key = await client.post("/v1/compress", content=raw.encode(),
                                                  headers={"content-type": "application/json"})
                unknown = await client.post("/v1/compress", json={"context": "a b c", "Query": "q", "keep_rate": 0.5})
                no_text = await client.post("/v1/compress", json={"context": [{"txt": "a"}], "keep_rate": 0.5})
                return [ok, deep, many, big, surrogate_key, unknown, no_text]

    ok, deep, many, big, surrogate_key, unknown, no_text = asyncio.run(run())
    # a key with a lone surrogate came back as U+FFFD, silently; an unknown field is named whatever its case
    assert surrogate_key.status_code == 422 and "lone surrogate" in surrogate_key.json()["error"]["message"]
    assert unknown.json()["error"]["message"] == "Query: Extra inputs are not permitted"
    assert no_text.json()["error"]["message"].startswith("context.0.text: Field required")
    assert ok.status_code == 200 and ok.json()["documents"][0]["metadata"] == nested(64)
    assert deep.status_code == 422
    assert deep.json()["error"]["message"].startswith("context.0.metadata: Value error, metadata is nested more")
    assert many.status_code == 413 and many.json()["error"]["code"] == "batch_too_large"
    assert big.status_code == 413 and big.headers["access-control-allow-origin"] == "https://app.example"


def test_compression_time_counts_the_batched_scoring() -> None:
    """pocsdk_compress_seconds left out score_batch (a model's forward pass): 0.5 s of scoring read as ~0."""
    from pocsdk.server.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(compressors=["batch-stub"], api_key=None, batch_window_ms=100, max_batch=8))
    inner = app.state.pocsdk.hosted["batch-stub"].inner
    plain = inner.score_batch

    def slow(pairs: list[tuple[Any, str | None]]) -> list[Scored]:
        time.sleep(0.4)
        return plain(pairs)

    inner.score_batch = slow
    app.state.pocsdk.hosted["batch-stub"].score_batch = slow

    async def run() -> str:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                answers = await asyncio.gather(*(client.post("/v1/compress", json={
                    "context": long_text(30, i), "keep_rate": 0.4}) for i in range(4)))
                assert all(a.status_code == 200 for a in answers)
                return (await client.get("/metrics")).text

    metrics = asyncio.run(run())
    total = next(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith('pocsdk_compress_seconds_sum{compressor="batch-stub"}'))
    assert total >= 0.35


def test_work_nobody_waits_for_is_skipped_refused_or_answered_503() -> None:
    """Under overload the service compressed inputs whose callers already had their 504 (goodput 0.8/s against
    a capacity of 25/s in a review). Now: a batch skips jobs whose caller stopped waiting, a request the queue
    ahead could not serve within the timeout is a 429 at once, a compressor without score_batch answers each
    input when done (not at the end of a batch of 32), and work cancelled at shutdown answers a JSON 503."""
    from pocsdk.server.service import ServiceConfig, _Abandoned, _Job, create_app

    app = create_app(ServiceConfig(compressors=["slow-stub", "batch-stub"], api_key=None, request_timeout_s=2.0))
    state = app.state.pocsdk
    slow, batched = state.hosted["slow-stub"], state.hosted["batch-stub"]
    assert slow.runner.max_batch == 1 and batched.runner.max_batch == ServiceConfig.max_batch

    jobs = [_Job(context=long_text(20, i), query=None, mode={"keep_rate": 0.5}) for i in range(3)]
    jobs[1].abandoned = True
    out = slow.run_batch(jobs)
    assert isinstance(out[1], _Abandoned) and all(not isinstance(o, BaseException) for o in (out[0], out[2]))

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                body = {"compressor": "slow-stub", "context": long_text(20), "keep_rate": 0.5}
                sleeper = asyncio.ensure_future(client.post("/v1/compress", json={**body, "query": "sleep:1"}))
                await asyncio.sleep(0.3)
                slow.seconds_per_input = 5.0  # the input ahead would outlast the 2 s timeout
                refused = await client.post("/v1/compress", json=body)
                sleeper.cancel()  # the app runs in this task here: what uvicorn does when --graceful-timeout ends
                cancelled = await sleeper
                await asyncio.sleep(1.0)  # the cancelled input finishes in the worker
                slow.seconds_per_input = 100.0  # nothing queued: an estimate alone never locks inputs out
                alone = await client.post("/v1/compress", json=body)
                return refused, cancelled, alone

    refused, cancelled, alone = asyncio.run(run())
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "over the 2 s timeout" in refused.json()["error"]["message"]
    assert cancelled.status_code == 503 and cancelled.json()["error"]["code"] == "shutting_down"
    assert alone.status_code == 200


# -- reviewed defects: a failing compressor, uploads, batch timeouts, stale queue entries, draining, CLI --------
def _asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.mark.parametrize("window_ms", [5.0, 0.0])
def test_a_compressor_raising_stopiteration_fails_its_input_not_the_service(window_ms: float) -> None:
    """StopIteration from a compressor (a bare next() in custom code) cannot be set on a future: the TypeError
    ended the Batcher's dispatch loop, and every later request to that compressor answered 504 (with batching
    off, the request itself hung until its timeout). Now that input is a 500 and the next ones are served."""
    from pocsdk.server.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(compressors=["slow-stub", "batch-stub"], api_key=None, request_timeout_s=3.0,
                                   batch_window_ms=window_ms))

    async def run() -> list[tuple[str, int, str | None, float]]:
        out = []
        async with app.router.lifespan_context(app), _asgi_client(app) as client:
            for name, query in (("slow-stub", "harvest"), ("slow-stub", "stopiter"), ("slow-stub", "harvest"),
                                ("batch-stub", "stopiter"), ("batch-stub", "harvest")):
                t0 = time.perf_counter()
                r = await client.post("/v1/compress", json={"compressor": name, "context": long_text(20),
                                                             "query": query, "keep_rate": 0.5})
                code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
                out.append((query, r.status_code, code, time.perf_counter() - t0))
            batch = await client.post("/v1/compress", json={"compressor": "batch-stub", "keep_rate": 0.5, "inputs": [
                {"context": long_text(20, 1)}, {"context": long_text(20, 2), "query": "stopiter"}]})
            out.append(("batch", batch.status_code, batch.json()["error"]["param"], 0.0))
            again = await client.post("/v1/compress", json={"compressor": "batch-stub", "context": long_text(20),
                                                            "keep_rate": 0.5})
            out.append(("again", again.status_code, None, 0.0))
        return out

    answers = asyncio.run(run())
    assert [(q, s, c) for q, s, c, _ in answers] == [
        ("harvest", 200, None), ("stopiter", 500, "internal_error"), ("harvest", 200, None),
        ("stopiter", 500, "internal_error"), ("harvest", 200, None), ("batch", 500, "inputs[1]"), ("again", 200, None)]
    assert max(t for *_, t in answers) < 2.0  # answered at once, not at the 3 s timeout


@pytest.mark.parametrize("runner", ["direct", "batcher"])
def test_runners_answer_stopiteration_and_survive_a_stopped_loop(runner: str) -> None:
    """The generic runners: a batch function raising StopIteration (or returning one) fails its items with a
    RuntimeError that keeps the message, and the Batcher restarts a dispatch loop that ended."""
    from pocsdk.server.batching import Batcher, DirectRunner

    def fn(items: Any) -> list[Any]:
        if items[0] == "raise":
            raise StopIteration("raised")
        return [StopIteration("returned") if x == "return" else x * 2 for x in items]

    async def run() -> list[str]:
        r: Any = DirectRunner(fn, workers=1) if runner == "direct" else Batcher(fn, window_s=0.0, max_batch=1)
        out = []
        for item in ("raise", "return", "ok"):
            try:
                out.append(str(await r.submit(item, timeout=2.0)))
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
        if runner == "batcher":  # a loop that ended (cancelled here) is started again by the next submit
            r._task.cancel()
            await asyncio.gather(r._task, return_exceptions=True)
            out.append(str(await r.submit("x", timeout=2.0)))
        await r.close()
        return out

    out = asyncio.run(run())
    assert out[0].startswith("RuntimeError") and "StopIteration" in out[0] and "raised" in out[0]
    assert out[1].startswith("RuntimeError") and "returned" in out[1]
    assert out[2] == "okok"
    if runner == "batcher":
        assert out[3] == "xx"


def test_uploads_are_admitted_before_their_bodies_are_read() -> None:
    """The body was read (buffered, up to the body limit) before admission: stalled uploads piled up without
    bound and none was refused. Now the key and the room are checked first and an upload counts while it is
    read, as in the proxy: past --max-queue the next caller gets 429 at once; a bad key, 401 at once."""
    from pocsdk.server.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(compressors=["extractive"], api_key=KEY, max_queue=2))
    limiter = app.state.pocsdk.limiter
    body = {"context": long_text(20), "keep_rate": 0.5}

    async def run() -> dict[str, Any]:
        release = asyncio.Event()

        async def stalled() -> Any:  # all but the end of the body, then a stall until released
            raw = json.dumps(body).encode()
            yield raw[:-5]
            await release.wait()
            yield raw[-5:]

        async with app.router.lifespan_context(app), _asgi_client(app) as client:
            uploads = [asyncio.ensure_future(client.post("/v1/compress", content=stalled(), headers={
                **AUTH, "content-type": "application/json"})) for _ in range(2)]
            await asyncio.sleep(0.2)
            reading = limiter._reading
            refused = await asyncio.wait_for(client.post("/v1/compress", json=body, headers=AUTH), 5)
            unauthorised = await asyncio.wait_for(client.post("/v1/compress", content=stalled(), headers={
                "content-type": "application/json"}), 5)
            release.set()
            done = await asyncio.gather(*uploads)
            after = await client.post("/v1/compress", json=body, headers=AUTH)
            bad = await client.post("/v1/compress", json={"context": 5, "keep_rate": 0.5}, headers=AUTH)
            return {"reading": reading, "refused": refused, "unauthorised": unauthorised, "done": done,
                    "after": after, "bad": bad, "left": limiter._reading}

    out = asyncio.run(run())
    assert out["reading"] == 2
    assert out["refused"].status_code == 429 and out["refused"].json()["error"]["code"] == "overloaded"
    assert int(out["refused"].headers["retry-after"]) >= 1
    assert out["unauthorised"].status_code == 401
    assert [r.status_code for r in out["done"]] == [200, 200] and out["after"].status_code == 200
    assert out["bad"].status_code == 422 and out["bad"].json()["error"]["code"] == "invalid_request"
    assert out["left"] == 0


def test_a_batch_its_own_inputs_would_carry_past_the_timeout_is_split_by_clients() -> None:
    """Admission looked only at the queue ahead: a batch of inputs compressed one by one that could not finish
    within --timeout was run and failed whole with 504, which compress_many neither split nor retried. Now a
    batch that began promptly and still ran out of time is a 413 batch_too_large, and the client splits it and
    succeeds, sync and async."""
    from pocsdk.errors import InputTooLargeError
    from pocsdk.remote import RemoteCompressor

    s = start_server("-c", "slow-stub", "--timeout", "1.5")
    try:
        items = [(long_text(10, i), "sleep:0.1") for i in range(24)]  # about 2.4 s one by one
        batch = {"keep_rate": 0.5, "inputs": [{"context": c, "query": q} for c, q in items]}
        first = httpx.post(s.url + "/v1/compress", headers=AUTH, json=batch, timeout=30)
        remote = RemoteCompressor(s.url, KEY, compressor="slow-stub", keep_rate=0.5)
        many = remote.compress_many(items)
        amany = asyncio.run(remote.acompress_many(items))
        with pytest.raises(InputTooLargeError):  # a single request of the whole batch is refused, typed
            remote._drive(remote._exchange("POST", "/v1/compress", {**batch, "compressor": "slow-stub"},
                                           batch=True))
    finally:
        stop_server(s)
    assert first.status_code == 413 and first.json()["error"]["code"] == "batch_too_large", first.text
    assert "did not finish within the 1.5 s timeout" in first.json()["error"]["message"]
    assert "split it" in first.json()["error"]["message"]
    local = Compressor(compressor="extractive", keep_rate=0.5)
    want = [local.compress(c, q).text for c, q in items]
    assert [r.text for r in many] == want and [r.text for r in amany] == want


def test_admission_never_refuses_work_on_a_guess_about_its_own_inputs() -> None:
    """An estimate from the recent pace refused a batch of tiny inputs after a few slow ones (413 at once), and a
    request arriving while one slow input ran (429); a batch that timed out only behind other clients' work was
    told to split (413). Each of them is served, or answered 504, as before."""
    from pocsdk.server.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(compressors=["slow-stub"], api_key=None, request_timeout_s=2.0))

    def batch(n: int, sleep: float) -> dict[str, Any]:
        return {"keep_rate": 0.5, "inputs": [{"context": long_text(10, i), "query": f"sleep:{sleep}"}
                                             for i in range(n)]}

    async def run() -> list[int]:
        async with app.router.lifespan_context(app), _asgi_client(app) as client:
            codes = []
            for _ in range(3):  # a slow pace: about 1 s per input
                codes.append((await client.post("/v1/compress", json=batch(1, 1.0))).status_code)
            codes.append((await client.post("/v1/compress", json=batch(8, 0.0))).status_code)  # tiny inputs
            slow = asyncio.ensure_future(client.post("/v1/compress", json=batch(1, 1.2)))
            await asyncio.sleep(1.0)  # while it runs (nearly done), a second request
            codes.append((await client.post("/v1/compress", json=batch(1, 0.0))).status_code)
            codes.append((await slow).status_code)
            other = asyncio.ensure_future(client.post("/v1/compress", json=batch(1, 1.5)))
            await asyncio.sleep(0.05)
            late = await client.post("/v1/compress", json=batch(2, 0.4))  # times out behind the other's work
            codes.append(late.status_code)
            codes.append((await other).status_code)
            await asyncio.sleep(0.6)
            return [*codes, late.json()["error"]["code"]]

    *codes, late_code = asyncio.run(run())
    assert codes == [200, 200, 200, 200, 200, 200, 504, 200] and late_code == "timeout", (codes, late_code)


def test_a_batch_too_large_is_413_and_one_slow_input_is_504() -> None:
    """Scored together (score_batch), a batch that outruns the timeout is too large (its halves are shorter
    passes), though none of its inputs finished; the 413 waits for the pass still running, so halves sent at
    once find the worker free. One by one, an input that had half the timeout and did not finish is a 504
    naming it (splitting would only run it again), while inputs that never began make it a 413."""
    from pocsdk.server.service import ServiceConfig, create_app

    def batch(queries: list[str]) -> dict[str, Any]:
        return {"keep_rate": 0.5, "inputs": [{"context": long_text(10, i), "query": q} for i, q in enumerate(queries)]}

    async def posts(config: ServiceConfig, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
        app = create_app(config)
        async with app.router.lifespan_context(app), _asgi_client(app) as client:
            return [await client.post("/v1/compress", json=body) for body in bodies]

    batched = ServiceConfig(compressors=["batch-slow"], api_key=None, request_timeout_s=1.0)
    big, half = asyncio.run(posts(batched, [batch(["q"] * 16), batch(["q"] * 8)]))  # one pass of 1.6 s, then 0.8
    assert big.status_code == 413 and big.json()["error"]["code"] == "batch_too_large", big.text
    assert half.status_code == 200, half.text  # the timed-out pass had ended before the 413 was sent
    one_by_one = ServiceConfig(compressors=["slow-stub"], api_key=None, request_timeout_s=1.0, batch_window_ms=5)
    slow, late_slow, many = (asyncio.run(posts(one_by_one, [body]))[0] for body in [  # a fresh server each
        batch(["sleep:1.5"] + ["q"] * 15),
        batch(["sleep:0.3", "sleep:1.2"]),  # the slow one began at 0.3 s: half the timeout to itself, no more
        batch(["sleep:0.15"] * 12),  # 1.8 s one by one: the last ones never begin
    ])
    assert slow.status_code == 504 and "inputs[0]" in slow.json()["error"]["message"], slow.text
    assert late_slow.status_code == 504 and "inputs[1]" in late_slow.json()["error"]["message"], late_slow.text
    assert many.status_code == 413, many.text


def test_clients_split_a_batch_scored_together_and_succeed() -> None:
    from pocsdk.remote import RemoteCompressor

    s = start_server("-c", "batch-slow", "--timeout", "1")
    try:
        items = [(long_text(10, i), None) for i in range(16)]  # one pass of 1.6 s; halves of 0.8 s fit
        remote = RemoteCompressor(s.url, KEY, compressor="batch-slow", keep_rate=0.5)
        many = remote.compress_many(items)
    finally:
        stop_server(s)
    local = Compressor(compressor="extractive", keep_rate=0.5)
    assert [r.text for r in many] == [local.compress(c, q).text for c, q in items]


def test_timed_out_requests_leave_the_batch_queue_at_once() -> None:
    """Requests that timed out behind a slow input kept their entries (and whole contexts) in the Batcher's
    queue until the slow input finished: the depth grew past --max-queue. Now they leave it when they time out
    or are cancelled."""
    from pocsdk.server.batching import Batcher
    from pocsdk.server.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(compressors=["slow-stub"], api_key=None, max_queue=4, request_timeout_s=0.5))
    hosted = app.state.pocsdk.hosted["slow-stub"]

    async def run() -> tuple[list[int], int, int, str]:
        async with app.router.lifespan_context(app), _asgi_client(app) as client:
            slow = asyncio.ensure_future(client.post("/v1/compress", json={
                "context": long_text(10), "query": "sleep:2.5", "keep_rate": 0.5}))
            await asyncio.sleep(0.2)
            codes = []
            for _ in range(3):  # three waves of 3 (with the slow one, 4 = --max-queue), each timing out
                answers = await asyncio.gather(*(client.post("/v1/compress", json={
                    "context": long_text(40, i), "keep_rate": 0.5}) for i in range(3)))
                codes += [r.status_code for r in answers]
            depth, queued = hosted.runner.depth, len(hosted.runner._items)
            metrics = (await client.get("/metrics")).text
            await slow
        return codes, depth, queued, metrics

    codes, depth, queued, metrics = asyncio.run(run())
    assert codes == [504] * 9
    assert (depth, queued) == (1, 0)  # only the slow input, still running
    assert 'pocsdk_queue_depth{compressor="slow-stub"} 1.0' in metrics

    def slow(items: Any) -> list[Any]:
        time.sleep(0.3)
        return list(items)

    async def cancelled() -> int:
        b: Batcher[int, int] = Batcher(slow, window_s=0.0, max_batch=1)
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.sleep(0.01)
        depth = b.depth
        await first
        await b.close()
        return depth

    assert asyncio.run(cancelled()) == 1


def test_healthz_answers_draining_once_the_server_is_told_to_stop() -> None:
    """state.draining was set only after uvicorn had closed the port and finished the open requests, so
    /healthz (and RemoteCompressor.health) never answered "draining". The server `pocsdk serve` runs now marks
    the service draining on its stop signal."""
    import signal as signals

    from pocsdk.cli.serve import make_server
    from pocsdk.server.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(compressors=["extractive"], api_key=None))
    server = make_server(app, host="127.0.0.1", port=free_port(), log_level="warning")

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app), _asgi_client(app) as client:
            before = await client.get("/healthz")
            server.handle_exit(signals.SIGTERM, None)  # what uvicorn's signal handler calls
            assert server.should_exit
            health = await client.get("/healthz")
            work = await client.post("/v1/compress", json={"context": long_text(10), "keep_rate": 0.5})
            return before, health, work

    before, health, work = asyncio.run(run())
    assert before.status_code == 200 and before.json()["status"] == "ok"
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert work.status_code == 503 and work.json()["error"]["code"] == "shutting_down"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_max_body_mb_must_be_a_finite_number(value: str) -> None:
    """--max-body-mb nan or inf ended in a traceback (exit 1); now the usual usage error (exit 2)."""
    from typer.testing import CliRunner

    from pocsdk.cli import app

    result = CliRunner().invoke(app, ["serve", "--no-auth", "--port", "0", "--max-body-mb", value])
    assert result.exit_code == 2, result.output
    assert "--max-body-mb must be a finite number > 0" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_service_config_refuses_a_key_no_client_can_send() -> None:
    """`pocsdk serve` refused a non-ASCII key at start-up, but ServiceConfig (create_app in process) took it,
    and then no client could authenticate."""
    from pocsdk.errors import ConfigError
    from pocsdk.server.service import ServiceConfig

    for key in ("clé-secrète", "ключ-123", "key\n", " key"):
        with pytest.raises(ConfigError, match="api_key"):
            ServiceConfig(compressors=["extractive"], api_key=key)
    assert ServiceConfig(compressors=["extractive"], api_key="plain-key").api_key == "plain-key"
