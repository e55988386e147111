"""``pocsdk serve``: run the compression service (FastAPI on uvicorn).

fastapi and uvicorn are imported only when the command runs, so the light install's CLI
never pays for them. Auth is on unless ``--no-auth`` is given, which only a loopback host
accepts.
"""

from __future__ import annotations

import importlib
import math
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pocsdk.cli.app import app, log_level
from pocsdk.cli.params import PARAM_HELP, parse_params
from pocsdk.errors import ConfigError, PocError

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

EXIT_USAGE = 2


def body_limit_bytes(max_body_mb: float) -> int:
    """``--max-body-mb`` in bytes; ``nan`` and ``inf`` are usage errors (they ended in a traceback)."""
    if not (math.isfinite(max_body_mb) and max_body_mb > 0):
        raise ConfigError(f"--max-body-mb must be a finite number > 0, not {max_body_mb!r}")
    return int(max_body_mb * 1024 * 1024)


def make_server(service: FastAPI, **options: Any) -> uvicorn.Server:
    """The uvicorn server for ``service`` (``options`` go to ``uvicorn.Config``), marking the service draining
    as soon as it is told to stop (SIGTERM, SIGINT, or ``should_exit`` set in process): ``/healthz`` then
    answers 503 "draining" and new work 503 ``shutting_down``. (The service's own shutdown comes only after
    uvicorn has closed its port and finished the open requests, too late for anyone to see it draining.)"""
    import uvicorn

    state = service.state.pocsdk

    class _Server(uvicorn.Server):
        @property
        def should_exit(self) -> bool:
            return self._stopping

        @should_exit.setter
        def should_exit(self, value: bool) -> None:
            self._stopping = value
            if value:
                state.draining = True

    return _Server(uvicorn.Config(service, **options))


@app.command()
def serve(
    compressor: Annotated[list[str] | None, typer.Option(
        "--compressor", "-c", help="Compressor to host (repeat for several; the first is the default).")] = None,
    model: Annotated[str | None, typer.Option(help="Model path or id for model-backed compressors.")] = None,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:N or cpu (for compressors that take one).")] = "auto",
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help=PARAM_HELP + " Given to each hosted compressor that takes it.")] = None,
    predictor: Annotated[str | None, typer.Option(help="Predictor artifact for floor mode.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="Bearer key clients must send (default: $POCSDK_API_KEY).", show_default=False)] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Turn auth off (loopback hosts only).")] = False,
    max_queue: Annotated[int, typer.Option(help="Most inputs waiting or running; more get 429.")] = 512,
    batch_window_ms: Annotated[float, typer.Option(help="Batch gathering window; 0 turns batching off.")] = 5.0,
    max_batch: Annotated[int, typer.Option(help="Most inputs per batched call.")] = 32,
    timeout: Annotated[float, typer.Option("--timeout", help="Per-request timeout in seconds (504).")] = 60.0,
    max_body_mb: Annotated[float, typer.Option(help="Request body limit in MiB (413).")] = 16.0,
    cors_origin: Annotated[list[str] | None, typer.Option(
        "--cors-origin", help="Allow browser calls from this origin (repeatable; CORS is off by default).")] = None,
    import_module: Annotated[list[str] | None, typer.Option(
        "--import", help="Import this module first, e.g. one that registers custom compressors.")] = None,
    graceful_timeout: Annotated[int, typer.Option(help="Seconds to finish in-flight work on shutdown.")] = 30,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.", callback=log_level)] = "info",
    access_log: Annotated[bool, typer.Option(help="Log one line per request (method, path, status).")] = False,
) -> None:
    """Serve POST /v1/compress, GET /v1/compressors, /healthz and /metrics."""
    try:
        import uvicorn  # noqa: F401  (a missing server extra is a usage error before anything loads)

        from pocsdk.compressor import DEFAULT_COMPRESSOR
        from pocsdk.server.common import resolve_api_key
        from pocsdk.server.service import ServiceConfig, create_app
    except ImportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    try:
        for module in import_module or []:
            importlib.import_module(module)
        key = resolve_api_key(api_key, no_auth=no_auth, host=host)
        config = ServiceConfig(
            compressors=list(compressor or [DEFAULT_COMPRESSOR]),
            model=model,
            device=device,
            compressor_params=parse_params(param, options=("model", "device")),
            predictor=predictor,
            api_key=key,
            max_queue=max_queue,
            batch_window_ms=batch_window_ms,
            max_batch=max_batch,
            request_timeout_s=timeout,
            max_body_bytes=body_limit_bytes(max_body_mb),
            cors_origins=list(cors_origin or []),
        )
        service = create_app(config)
    except (PocError, ImportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(f"pocsdk serve: {', '.join(config.compressors)} on http://{host}:{port} "
               f"(auth {'on' if key else 'off'}, batching "
               f"{f'{batch_window_ms:g} ms' if batch_window_ms > 0 else 'off'})", err=True)
    server = make_server(service, host=host, port=port, log_level=log_level, access_log=access_log,
                         timeout_graceful_shutdown=graceful_timeout)
    try:
        server.run()
    except KeyboardInterrupt:  # as uvicorn.run: a second Ctrl-C ends it without a traceback
        pass
