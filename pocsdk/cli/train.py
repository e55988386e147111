"""``pocsdk train <model>``: training commands for the neural compressors (extra ``[train]``).

Each neural compressor registers its own subcommand on ``train_app`` from its own module.
"""

from __future__ import annotations

import typer

from pocsdk.cli.app import app

train_app = typer.Typer(
    help="Train neural compressors (needs the extra: pip install 'pocsdk\\[train]').", no_args_is_help=True
)
app.add_typer(train_app, name="train")
