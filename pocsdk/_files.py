"""Small file helpers shared by the commands that write outputs (``pocsdk calibrate``, ``pocsdk compress``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pocsdk.errors import ConfigError


def lock_exclusively(fh: Any, path: Path, then: str) -> None:
    """Hold an advisory lock on ``fh`` (released when it closes): one run writes an output at a time. A second
    one is a ``ConfigError`` that says what to do ``then``; where ``fcntl`` is missing nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"another run is writing {path}: {then}") from None
