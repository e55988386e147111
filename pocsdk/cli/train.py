"""``pocsdk train <model>``: training commands for the neural compressors (extra ``[train]``).

Each neural compressor registers its own subcommand on ``train_app`` from its own module.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pocsdk.cli.app import app
from pocsdk.errors import ConfigError

train_app = typer.Typer(
    help="Train neural compressors (needs the extra: pip install 'pocsdk\\[train]').", no_args_is_help=True
)
app.add_typer(train_app, name="train")


def check_writable(out: Path) -> None:
    """Fail before training, not after it: the checkpoint folder must be creatable and writable."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pocsdk-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write the checkpoint to {out}: {exc}") from None
