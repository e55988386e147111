"""The typer application that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="pocsdk",
    help="Performance-oriented context compression: state a performance floor, not a ratio.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
