"""``pocsdk proxy``: run the compressing OpenAI-compatible proxy in front of one upstream."""

from __future__ import annotations

import os
from typing import Optional

import typer

from pocsdk.cli.app import app, log_level
from pocsdk.compressors import DEFAULT_COMPRESSOR


@app.command("proxy")
def proxy(
    upstream: str = typer.Option(..., help="Upstream OpenAI-compatible base URL, with its /v1 "
                                           "(e.g. https://api.openai.com/v1)."),
    floor: Optional[float] = typer.Option(None, help="Performance floor in (0, 1] (default 0.9 unless "
                                                     "--keep-rate is given)."),
    keep_rate: Optional[float] = typer.Option(None, help="Fixed keep rate in (0, 1] instead of a floor."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    compressor: str = typer.Option(DEFAULT_COMPRESSOR, help="Compressor name."),
    min_tokens: int = typer.Option(512, help="User/tool texts with at least this many tokens are compressed."),
    api_key: Optional[str] = typer.Option(None, help="Key callers must send (default $POCSDK_PROXY_API_KEY; "
                                                     "none: callers' Authorization goes upstream)."),
    upstream_api_key: Optional[str] = typer.Option(None, help="Key sent upstream instead of the caller's "
                                                              "(default $POCSDK_UPSTREAM_API_KEY)."),
    max_concurrent: int = typer.Option(64, help="Requests in flight; more wait in the queue."),
    max_queue: int = typer.Option(64, help="Requests waiting; beyond this, 429 with Retry-After."),
    max_body_bytes: int = typer.Option(16 * 1024 * 1024, help="Largest request body (413 beyond)."),
    timeout: float = typer.Option(300.0, help="Seconds of upstream silence before 504."),
    cache_size: int = typer.Option(256, help="Compressed prompts remembered for exact repeats (0: off)."),
    log_level: str = typer.Option("info", help="uvicorn log level (prompts are never logged).", callback=log_level),
    graceful_timeout: int = typer.Option(30, min=0, help="Seconds open requests and streams get to finish on "
                                         "shutdown (SIGTERM); then they are cut."),
    workers: int = typer.Option(1, min=1, help="Worker processes sharing the port: compression holds the GIL, so "
                                "one process compresses on one core; limits and the prompt cache are per worker."),
) -> None:
    """Compress long chat contexts on their way to an OpenAI-compatible upstream."""
    from pocsdk.errors import ConfigError

    try:
        import uvicorn

        from pocsdk.server.proxy import (
            HOST_ENV,
            PROXY_KEY_ENV,
            SETTINGS_ENV,
            UPSTREAM_KEY_ENV,
            ProxySettings,
            create_proxy_app,
        )
    except ImportError as exc:
        typer.echo(f"error: the proxy needs the server extra: pip install 'pocsdk[server]' ({exc})", err=True)
        raise typer.Exit(2) from exc
    try:
        settings = ProxySettings(
            upstream=upstream, floor=floor, keep_rate=keep_rate, compressor=compressor, min_tokens=min_tokens,
            api_key=api_key or os.environ.get(PROXY_KEY_ENV) or None,
            upstream_api_key=upstream_api_key or os.environ.get(UPSTREAM_KEY_ENV) or None,
            max_concurrent=max_concurrent, max_queue=max_queue, max_body_bytes=max_body_bytes,
            read_timeout_s=timeout, cache_size=cache_size,
        )
        settings.vet(host)
        application = create_proxy_app(settings)  # checks the settings once here, before any worker starts
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    # No access log and no X-Forwarded-* rewriting (the proxy never uses the client's address):
    # both cost CPU on every request. uvicorn picks uvloop and httptools when installed.
    if workers == 1:
        uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False, proxy_headers=False,
                    timeout_graceful_shutdown=graceful_timeout)
        return
    # Worker processes build their own app from the settings (keys included) in their environment, which
    # only this process and its children see.
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    os.environ[HOST_ENV] = host
    uvicorn.run("pocsdk.server.proxy:proxy_app_from_env", factory=True, workers=workers, host=host, port=port,
                log_level=log_level, access_log=False, proxy_headers=False, timeout_graceful_shutdown=graceful_timeout)
