"""``Compressor(endpoint=...)``: the SDK's API against a real service, retries, typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from pocsdk import CompressionResult, Compressor
from pocsdk.errors import (
    ConfigError,
    EmptyContextError,
    InputTooLargeError,
    InvalidRateError,
    InvalidTypeError,
    RemoteError,
    UnknownCompressorError,
)
from pocsdk.remote import RemoteCompressor, RetryPolicy

pytest.importorskip("fastapi")

from test_service import KEY, Server, comparable, long_text, shared_server

FAST = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    yield from shared_server()


def same(a: CompressionResult, b: CompressionResult) -> bool:
    return comparable(a.model_dump(mode="json")) == comparable(b.model_dump(mode="json"))


def test_compress_equals_local(server: Server) -> None:
    remote = Compressor(endpoint=server.url, api_key=KEY, keep_rate=0.3)
    local = Compressor(keep_rate=0.3)
    docs: list[Any] = [{"id": "x", "text": long_text(40, 3), "metadata": {"k": [1, 2]}}, long_text(30, 4)]
    for context, query in ((long_text(), "harvest"), (docs, None)):
        assert same(remote.compress(context, query), local.compress(context, query))
    assert same(remote.compress(long_text(), target_tokens=100), local.compress(long_text(), target_tokens=100))
    skim = Compressor(endpoint=server.url, api_key=KEY, compressor="skim", keep_rate=0.4)
    assert same(skim.compress(long_text(), "river"), Compressor(compressor="skim", keep_rate=0.4).compress(
        long_text(), "river"))
    assert remote.name == "remote" and skim.name == "skim"


def test_async_and_many_equal_local(server: Server) -> None:
    remote = Compressor(endpoint=server.url, api_key=KEY, keep_rate=0.5)
    local = Compressor(keep_rate=0.5)
    items: list[Any] = [long_text(20, i) for i in range(5)] + [(long_text(20, 9), "markets"),
                                                               {"context": long_text(20, 8), "query": "museum"}]
    many = remote.compress_many(items)
    assert all(same(a, b) for a, b in zip(many, local.compress_many(items), strict=True))

    async def run() -> tuple[CompressionResult, list[CompressionResult]]:
        one = await remote.acompress(long_text(), "football", keep_rate=0.2)
        return one, await remote.acompress_many(items)

    one, amany = asyncio.run(run())
    assert same(one, local.compress(long_text(), "football", keep_rate=0.2))
    assert all(same(a, b) for a, b in zip(amany, many, strict=True))


def test_compress_many_is_one_request_per_chunk(server: Server) -> None:
    calls: list[int] = []

    def count(request: httpx.Request) -> None:
        calls.append(1)

    client = RemoteCompressor(server.url, KEY, keep_rate=0.5, max_inputs_per_request=2)
    client._client = httpx.Client(event_hooks={"request": [count]})
    out = client.compress_many([long_text(10, i) for i in range(5)])
    assert len(out) == 5 and len(calls) == 3
    client.close()


def test_typed_errors(server: Server) -> None:
    remote = Compressor(endpoint=server.url, api_key=KEY, keep_rate=0.5)
    with pytest.raises(EmptyContextError):  # checked locally, like the SDK
        remote.compress("  ")
    with pytest.raises(InvalidRateError):
        remote.compress("text", keep_rate=2.0)
    with pytest.raises(UnknownCompressorError) as info:  # the server's answer, as the SDK's class
        Compressor(endpoint=server.url, api_key=KEY, compressor="nope", keep_rate=0.5).compress(long_text())
    assert isinstance(info.value, RemoteError) and info.value.status_code == 404
    with pytest.raises(RemoteError) as bad:
        Compressor(endpoint=server.url, api_key="wrong", keep_rate=0.5).compress(long_text())
    assert bad.value.status_code == 401
    with pytest.raises(ConfigError):
        Compressor(endpoint=server.url, predictor="p", floor=0.9)
    with pytest.raises(ConfigError):
        Compressor(api_key="k", keep_rate=0.5)
    with pytest.raises(ConfigError):
        Compressor(endpoint="ftp://x", keep_rate=0.5)
    with pytest.raises(ConfigError):  # no mode, like the local facade
        Compressor(endpoint=server.url, api_key=KEY).compress(long_text())


def test_unreachable_server_is_remote_error() -> None:
    from test_service import free_port

    client = RemoteCompressor(f"http://127.0.0.1:{free_port()}", retry=FAST, keep_rate=0.5)
    with pytest.raises(RemoteError, match="cannot reach"):
        client.compress(long_text())


def _result_json() -> dict[str, Any]:
    return Compressor(keep_rate=0.5).compress(long_text()).model_dump(mode="json")


@respx.mock
def test_retries_429_and_503_honouring_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("pocsdk.remote._sleep", slept.append)
    route = respx.post("http://svc/v1/compress").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "2"}, json={"error": {"type": "Overloaded"}}),
        httpx.Response(503, json={"error": {"type": "Unavailable"}}),
        httpx.Response(200, json=_result_json()),
    ])
    client = RemoteCompressor("http://svc", "k", keep_rate=0.5, retry=RetryPolicy(attempts=3, backoff_s=0.5))
    result = client.compress(long_text())
    assert route.call_count == 3 and result.compressed_tokens > 0
    assert slept == [2.0, 1.0]  # Retry-After, then backoff 0.5 * 2
    assert route.calls[0].request.headers["authorization"] == "Bearer k"


@respx.mock
def test_async_retries_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr("pocsdk.remote._async_sleep", fake_sleep)
    respx.post("http://svc/v1/compress").mock(return_value=httpx.Response(
        429, headers={"Retry-After": "1"}, json={"error": {"message": "busy", "type": "Overloaded"}}))
    client = RemoteCompressor("http://svc", keep_rate=0.5, retry=RetryPolicy(attempts=3))
    with pytest.raises(RemoteError) as info:
        asyncio.run(client.acompress(long_text()))
    assert info.value.status_code == 429 and slept == [1.0, 1.0]


@respx.mock
def test_infinite_factor_round_trips() -> None:
    data = {**_result_json(), "compression_factor": None}
    respx.post("http://svc/v1/compress").mock(return_value=httpx.Response(200, json=data))
    result = RemoteCompressor("http://svc", keep_rate=0.5).compress(long_text())
    assert result.compression_factor == float("inf")


def test_retry_after_parsing() -> None:
    p = RetryPolicy(backoff_s=0.1, max_backoff_s=5)
    assert p.delay(1) == pytest.approx(0.1) and p.delay(3) == pytest.approx(0.4)
    assert p.delay(1, "3") == 3 and p.delay(1, "999") == 5 and p.delay(1, "garbage") == pytest.approx(0.1)
    assert p.delay(1, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_floor_mode_passes_through(server: Server) -> None:
    from pocsdk.errors import ArtifactError

    try:
        expected = Compressor(floor=0.8, confidence=0.7).compress(long_text(), "harvest")
    except (ArtifactError, ImportError) as exc:
        pytest.skip(f"floor mode is not available in this checkout: {exc}")
    got = Compressor(endpoint=server.url, api_key=KEY, floor=0.8, confidence=0.7).compress(long_text(), "harvest")
    assert got.floor is not None and same(got, expected)


def made_clients(remote: RemoteCompressor) -> list[httpx.AsyncClient]:
    """Record the async clients ``remote`` makes from now on."""
    made: list[httpx.AsyncClient] = []
    factory = remote._aclients._factory

    def record() -> httpx.AsyncClient:
        made.append(factory())
        return made[-1]

    remote._aclients._factory = record
    return made


def test_async_client_is_closed_when_its_event_loop_ends(server: Server) -> None:
    # asyncio.run per call (scripts, Celery tasks, tests): each loop's client must not outlive it with open sockets
    remote = RemoteCompressor(server.url, api_key=KEY, keep_rate=0.5)
    clients = made_clients(remote)
    for _ in range(3):
        asyncio.run(remote.acompress(long_text(), "harvest"))
    assert len({id(c) for c in clients}) == 3 and all(c.is_closed for c in clients)

    async def in_one_loop() -> bool:  # within a loop the client stays open and is reused
        await remote.acompress(long_text(), "harvest")
        await remote.acompress(long_text(), "harvest")
        return len(clients) == 4 and not clients[-1].is_closed

    assert asyncio.run(in_one_loop())


def test_one_client_serves_event_loops_in_several_threads(server: Server) -> None:
    """Threads each running their own loop share one RemoteCompressor: no thread closes another's client
    under its requests (they failed with a bare RuntimeError, 'the client has been closed')."""
    import threading

    remote = RemoteCompressor(server.url, api_key=KEY, keep_rate=0.5)
    failures: list[BaseException] = []
    done: list[int] = []

    async def many() -> None:
        for i in range(15):
            await remote.acompress(long_text(8, i), "harvest")
            done.append(1)

    def worker() -> None:
        try:
            asyncio.run(many())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and len(done) == 45


def test_compress_many_splits_batches_the_server_finds_too_large() -> None:
    import numpy as np
    from test_service import start_server, stop_server

    # capacity 8 inputs (the client sends up to 64 per request); inputs over 50,000 characters are refused
    small = start_server("-c", "extractive", "--max-queue", "8", "--param", "max_input_chars=50000")
    try:
        remote = Compressor(endpoint=small.url, api_key=KEY, keep_rate=0.5)
        items = [long_text(12, i) for i in range(20)]
        local = Compressor(compressor="extractive", keep_rate=0.5).compress_many(items)
        assert all(same(a, b) for a, b in zip(remote.compress_many(items), local, strict=True))
        assert all(same(a, b) for a, b in zip(asyncio.run(remote.acompress_many(items)), local, strict=True))
        # one input too long by itself: no splitting, the server's error names it
        bad = [*items[:3], "word " * 20_000, *items[3:6]]
        with pytest.raises(InputTooLargeError, match=r"inputs\[3\]"):
            remote.compress_many(bad)
        # the facade's rule for target_tokens holds remotely too
        assert remote.compress(items[0], target_tokens=np.int64(40)).compressed_tokens <= 40
    finally:
        stop_server(small)


@respx.mock
def test_a_batch_answer_must_line_up_with_its_inputs() -> None:
    """Fewer results than inputs would shift every result after the gap onto the wrong input."""
    respx.post("http://svc/v1/compress").mock(return_value=httpx.Response(200, json={"results": [_result_json()]}))
    client = RemoteCompressor("http://svc", "k", keep_rate=0.5)
    with pytest.raises(RemoteError, match="1 results for 2 inputs"):
        client.compress_many([long_text(10, 1), long_text(10, 2)])
    with pytest.raises(RemoteError, match="1 results for 2 inputs"):
        asyncio.run(client.acompress_many([long_text(10, 1), long_text(10, 2)]))
    assert len(client.compress_many([long_text(10, 1)])) == 1


def test_misspelt_options_and_closing_match_the_local_facade(server: Server) -> None:
    """A misspelt keyword is a TypeError locally and remotely, sync and async; a remote Compressor
    closes its connections as a context manager (sync and async)."""
    for comp in (Compressor(keep_rate=0.5), Compressor(endpoint=server.url, api_key=KEY, keep_rate=0.5)):
        with pytest.raises(TypeError, match="keeprate"):
            comp.compress(long_text(), keeprate=0.3)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="keeprate"):
            asyncio.run(comp.acompress(long_text(), keeprate=0.3))
        with pytest.raises(TypeError, match="keeprate"):
            asyncio.run(comp.acompress_many([long_text()], keeprate=0.3))
    with Compressor(endpoint=server.url, api_key=KEY, keep_rate=0.5) as remote:
        assert remote.compress(long_text()).compressed_tokens > 0
        client = remote._remote
        assert client is not None and client._client is not None
    assert client._client is None  # closed on exit

    async def run() -> int:
        async with Compressor(endpoint=server.url, api_key=KEY, keep_rate=0.5) as aremote:
            return (await aremote.acompress(long_text())).compressed_tokens

    assert asyncio.run(run()) > 0
    with Compressor(keep_rate=0.5) as local:  # a local one has nothing to close, and says nothing
        assert local.compress(long_text()).compressed_tokens > 0


class CapacityEight:
    """An async mock of a service with room for 8 inputs at once: 413 ``batch_too_large`` for a larger batch,
    429 when the inputs in flight would pass 8, else results after a pause."""

    def __init__(self, fail_first: bool = False, capacity: int = 8, pause: float = 0.05) -> None:
        self.in_flight = 0
        self.statuses: list[int] = []
        self.finished = 0
        self.fail_first = fail_first
        self.capacity = capacity
        self.pause = pause
        self.local = Compressor(keep_rate=0.5)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        import json

        inputs = json.loads(request.content)["inputs"]
        if self.fail_first and not self.statuses:
            return self.answer(500, {"error": {"message": "boom", "type": "InternalError", "code": "internal_error"}})
        if len(inputs) > self.capacity:
            return self.answer(413, {"error": {"message": "too many", "type": "InputTooLargeError",
                                               "code": "batch_too_large"}})
        if self.in_flight + len(inputs) > self.capacity:
            return self.answer(429, {"error": {"message": "busy", "type": "Overloaded", "code": "overloaded"}},
                               {"retry-after": "0.2"})
        self.in_flight += len(inputs)
        try:
            await asyncio.sleep(self.pause if not self.fail_first else 1.0)
        finally:
            self.in_flight -= len(inputs)
        self.finished += 1
        results = [self.local.compress(i["context"]).model_dump(mode="json") for i in inputs]
        return self.answer(200, {"results": results})

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        self.statuses.append(status)
        return httpx.Response(status, json=body, headers=headers)


def test_acompress_many_keeps_to_the_capacity_a_split_revealed() -> None:
    """After a batch_too_large, the async twin no longer sends chunks that crowd each other out into 429s
    (it ran out of retries where the sync twin, one chunk at a time, succeeded)."""
    server = CapacityEight()
    remote = RemoteCompressor("http://svc.test", keep_rate=0.5, retry=RetryPolicy(attempts=2, backoff_s=0.2),
                              async_transport=httpx.MockTransport(server))
    items = [long_text(6, i) for i in range(300)]  # five chunks of up to 64
    results = asyncio.run(remote.acompress_many(items))
    assert [r.original_tokens for r in results] == [server.local.compress(i).original_tokens for i in items]
    assert 429 not in server.statuses
    # 64 -> 32 -> 16 -> 8 shows the capacity; later chunks are cut to it before sending, not sent to get a 413
    assert server.statuses.count(413) == 3


def test_acompress_many_cancels_the_other_chunks_when_one_fails() -> None:
    server = CapacityEight(fail_first=True)
    remote = RemoteCompressor("http://svc.test", keep_rate=0.5, max_inputs_per_request=2,
                              async_transport=httpx.MockTransport(server))

    async def run() -> set[asyncio.Task[Any]]:
        with pytest.raises(RemoteError, match="boom"):
            await remote.acompress_many([long_text(6, i) for i in range(8)])
        return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    started = __import__("time").monotonic()
    assert asyncio.run(run()) == set()
    assert __import__("time").monotonic() - started < 0.9 and server.finished == 0


def test_health_returns_the_draining_answer_without_retrying() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, json={"status": "draining", "version": "x", "compressors": ["extractive"]})

    remote = RemoteCompressor("http://svc.test", transport=httpx.MockTransport(handler))
    assert remote.health()["status"] == "draining" and len(calls) == 1


def test_health_of_an_unreachable_server_is_a_remote_error() -> None:
    with pytest.raises(RemoteError, match="cannot reach"):
        RemoteCompressor("http://127.0.0.1:9", retry=FAST).health()


def test_remote_accepts_what_the_local_sdk_accepts(server: Server) -> None:
    """A lone surrogate (the local SDK and the server take it) was refused by the client as 'not
    JSON-serialisable'; more inputs per request than the service takes is a ConfigError up front."""
    text = "Broken \ud800 byte here. " + long_text(30, 2)
    remote = Compressor(endpoint=server.url, api_key=KEY, keep_rate=0.5)
    assert same(remote.compress(text, "harvest"), Compressor(keep_rate=0.5).compress(text, "harvest"))
    assert len(remote.compress_many([text, long_text(5, 1)])) == 2
    # only the surrogate is escaped: the rest of a non-ASCII body stays UTF-8 (escaping it all doubled CJK)
    body = RemoteCompressor(server.url)._request("POST", "/v1/compress", {"context": "日本語 \ud800"}).content
    assert body == '{"context": "日本語 \\ud800"}'.encode()
    with pytest.raises(ConfigError, match=r"max_inputs_per_request must be in \[1, 256\]"):
        RemoteCompressor(server.url, max_inputs_per_request=1000)


def test_acompress_many_waits_for_room_when_a_chunk_is_answered_429() -> None:
    """A server with room for one chunk but not two (no 413, since each chunk fits): acompress_many sent both
    at once and the second met 429 until its retries ran out, where compress_many, one chunk at a time,
    succeeded. Now a chunk answered 429 while others are in flight waits for them, and fewer go at once."""
    server = CapacityEight(capacity=100, pause=0.5)
    remote = RemoteCompressor("http://svc.test", keep_rate=0.5, retry=RetryPolicy(attempts=2, backoff_s=0.01,
                                                                                   max_backoff_s=0.05),
                              async_transport=httpx.MockTransport(server))
    items = [long_text(6, i) for i in range(200)]  # four chunks of up to 64, two of which do not fit together
    results = asyncio.run(remote.acompress_many(items))
    assert [r.original_tokens for r in results] == [server.local.compress(i).original_tokens for i in items]
    assert server.statuses.count(200) == 4 and 429 in server.statuses


def test_api_key_no_header_can_carry_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-ASCII key failed every call with a bare UnicodeEncodeError (the server refuses such keys at
    start-up); it, and a key with a line break, are now a ConfigError at construction, the key unquoted."""
    for key in ("clé-secrète", "ключ-123", "key-from-a-file\n"):
        with pytest.raises(ConfigError, match="API key") as info:
            RemoteCompressor("http://svc.test", key, keep_rate=0.5)
        assert key.strip() not in str(info.value)
        with pytest.raises(ConfigError, match="API key"):
            Compressor(endpoint="http://svc.test", api_key=key, keep_rate=0.5)
    monkeypatch.setenv("POCSDK_API_KEY", "clé")
    with pytest.raises(ConfigError, match="non-ASCII"):
        RemoteCompressor("http://svc.test", keep_rate=0.5)
    monkeypatch.setenv("POCSDK_API_KEY", "plain-ascii-key")
    assert RemoteCompressor("http://svc.test", keep_rate=0.5)._key == "plain-ascii-key"


def test_endpoint_and_batch_arguments_are_checked_as_locally() -> None:
    """compress_many("text") sent one input per character (the local SDK raises InvalidTypeError); an invalid
    port or URL failed at the first call with httpx's errors (async: a bare ExceptionGroup); a password in the
    endpoint was quoted in every RemoteError."""
    from test_service import free_port

    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    remote = RemoteCompressor("http://svc.test", keep_rate=0.5, transport=httpx.MockTransport(handler),
                              async_transport=httpx.MockTransport(handler))
    with pytest.raises(InvalidTypeError, match="iterable of inputs"):
        remote.compress_many("Harvest")
    with pytest.raises(InvalidTypeError, match="iterable of inputs"):
        asyncio.run(remote.acompress_many("Harvest"))
    assert sent == []
    for endpoint in ("http://127.0.0.1:99999", "http://[::1", "http://", "https://:8000"):
        with pytest.raises(ConfigError, match="endpoint"):
            RemoteCompressor(endpoint, keep_rate=0.5)
    for endpoint in ("http://[::1]:8000", "https://svc.test/prefix", "http://127.0.0.1:65535"):
        assert RemoteCompressor(endpoint, keep_rate=0.5).endpoint == endpoint
    secret = RemoteCompressor(f"http://user:s3cret@127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=1),
                              keep_rate=0.5)
    for call in (lambda: secret.compress(long_text(5)), lambda: asyncio.run(secret.acompress(long_text(5))),
                 secret.health):
        with pytest.raises(RemoteError, match="cannot reach") as info:
            call()
        assert "s3cret" not in str(info.value) and "user:***@127.0.0.1" in str(info.value)


def test_endpoint_credentials_go_as_basic_auth_never_in_urls_logs_or_the_endpoint(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """https://user:password@host: the messages masked it, but requests carried it in their URL, so httpx's
    INFO log printed the password; the URL's Basic auth silently replaced the Bearer api_key; and the public
    ``endpoint`` kept the password. The URL requests go to has no credentials, they go as Basic auth, both
    credentials and a key are a ConfigError, and ``endpoint`` masks them."""
    import base64
    import logging

    monkeypatch.delenv("POCSDK_API_KEY", raising=False)
    caplog.set_level(logging.INFO, logger="httpx")
    seen: list[httpx.Request] = []
    result = _result_json()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"} if request.url.path == "/healthz" else result)

    remote = RemoteCompressor("https://user:hunter2@svc.test/", keep_rate=0.5, transport=httpx.MockTransport(handler),
                              async_transport=httpx.MockTransport(handler))
    remote.health()
    remote.compress(long_text(5))
    asyncio.run(remote.acompress(long_text(5)))
    basic = "Basic " + base64.b64encode(b"user:hunter2").decode()
    assert [r.headers["authorization"] for r in seen] == [basic] * 3
    assert [str(r.url) for r in seen] == ["https://svc.test/healthz"] + ["https://svc.test/v1/compress"] * 2
    assert "HTTP Request: GET https://svc.test/healthz" in caplog.text and "hunter2" not in caplog.text
    assert remote.endpoint == "https://user:***@svc.test"
    assert RemoteCompressor("https://tok-SECRET5@svc.test", keep_rate=0.5).endpoint == "https://***@svc.test"
    with pytest.raises(ConfigError, match=r"an API key is set too \(the api_key argument\)") as info:
        RemoteCompressor("https://user:hunter2@svc.test", "the-bearer-key", keep_rate=0.5)
    assert "hunter2" not in str(info.value) and "the-bearer-key" not in str(info.value)
    monkeypatch.setenv("POCSDK_API_KEY", "env-key")
    with pytest.raises(ConfigError, match=r"an API key is set too \(\$POCSDK_API_KEY\)"):
        Compressor(endpoint="https://user:hunter2@svc.test", keep_rate=0.5)
    assert RemoteCompressor("https://user:hunter2@svc.test", "", keep_rate=0.5)._auth is not None
    with pytest.raises(ConfigError) as info:
        RemoteCompressor("HTTPS://user:hunter2@svc.test", keep_rate=0.5)
    assert "hunter2" not in str(info.value)


def test_keys_with_a_space_at_either_end_are_refused_and_unsendable_requests_never_quoted() -> None:
    """A key with a space at either end passed the check; h11 then refused the request and the RemoteError
    (and its chained cause) quoted the whole key as 'cannot reach ...: Illegal header value b'Bearer key ''."""
    import traceback

    for key, end in (("SECRET4 ", "ends"), (" SECRET4", "begins")):
        with pytest.raises(ConfigError, match=f"the API key {end} with a space") as info:
            RemoteCompressor("http://svc.test", key, keep_rate=0.5)
        assert "SECRET4" not in str(info.value)
    calls: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.LocalProtocolError("Illegal header value b'Bearer SECRET4 '")

    remote = RemoteCompressor("http://svc.test", "k", keep_rate=0.5, retry=FAST, transport=httpx.MockTransport(refuse),
                              async_transport=httpx.MockTransport(refuse))
    for call in (lambda: remote.compress(long_text(5)), lambda: asyncio.run(remote.acompress(long_text(5))),
                 remote.health):
        with pytest.raises(RemoteError, match="could not be sent") as error:
            call()
        assert "SECRET4" not in "".join(traceback.format_exception(error.value))
    assert len(calls) == 3  # never retried
