"""The typer application that every command module registers on."""

from __future__ import annotations

import typer

LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def log_level(value: str) -> str:
    """Option callback: one of uvicorn's log levels, checked before anything loads (a typo was a KeyError
    once the models had loaded)."""
    if value.lower() not in LEVELS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(LEVELS)}")
    return value.lower()

app = typer.Typer(
    name="pocsdk",
    help="Performance-oriented context compression: state a performance floor, not a ratio.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from pocsdk.cli import compress, info  # noqa: E402,F401,I001  (batch CLI: compress, info)
from pocsdk.cli import calibrate  # noqa: E402,F401  (calibration CLI: calibrate)
from pocsdk.cli import predict  # noqa: E402,F401  (prediction CLI: train-predictor, fit-calibration, evaluate)
from pocsdk.cli import serve  # noqa: E402,F401  (compression service: serve)
from pocsdk.cli import proxy  # noqa: E402,F401  (compressing OpenAI proxy: proxy)
from pocsdk.cli import train  # noqa: E402,F401
from pocsdk.cli import train_ram  # noqa: E402,F401
from pocsdk.cli import train_memosight  # noqa: E402,F401
