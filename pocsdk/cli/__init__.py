"""Command line interface: ``pocsdk compress``, ``pocsdk info`` and friends.

Each command lives in its own module and is registered on one typer app here.
"""

from __future__ import annotations

from pocsdk.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
