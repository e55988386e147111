"""``pocsdk info``: what this install can do (version, compressors, predictors, devices, extras).

Meant for bug reports and for checking an install, so it never fails: anything it cannot
find is reported as absent. torch is imported only here, and only when installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pocsdk._version import __version__
from pocsdk.cli.app import app
from pocsdk.compressors import available

CARD_FILE = "card.json"
CARD_SCHEMA = "pocsdk.predictor"
# import name -> (distribution name, pocsdk extra that installs it)
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "tiktoken": ("tiktoken", "tiktoken"),
    "sentence_transformers": ("sentence-transformers", "embeddings"),
    "torch": ("torch", "neural"),
    "transformers": ("transformers", "neural"),
    "langchain_core": ("langchain-core", "langchain"),
    "fastapi": ("fastapi", "server"),
}


class ShippedPredictor(BaseModel):
    """A predictor artifact found on disk (its ``card.json``)."""

    name: str
    path: str
    kind: str | None = None
    compressor: str | None = None
    created: str | None = None
    select: str | None = None
    """What ``--predictor`` / ``predictor=`` takes to use it with its compressor (``default``, ``mlp``, ...);
    None when the floor search does not find it by name (pass its path)."""
    error: str | None = None
    """Why the card could not be read, if it could not."""


class DeviceInfo(BaseModel):
    type: Literal["cpu", "cuda", "mps"]
    index: int | None = None
    name: str
    memory_gib: float | None = None


class ExtraInfo(BaseModel):
    package: str
    extra: str
    installed: bool
    version: str | None = None


class InfoReport(BaseModel):
    """Everything ``pocsdk info --json`` prints."""

    version: str
    python: str
    platform: str
    compressors: list[str]
    predictors: list[ShippedPredictor] = Field(default_factory=list)
    devices: list[DeviceInfo] = Field(default_factory=list)
    extras: list[ExtraInfo] = Field(default_factory=list)


def predictor_dirs() -> list[Path]:
    """Where the floor search looks for shipped predictors (``$POCSDK_PREDICTORS``, the wheel's
    ``pocsdk/_predictors`` or the repo's ``predictors/``): the same folder, so info lists what a floor uses."""
    from pocsdk.prediction.floor import predictors_root

    root = predictors_root()
    return [root] if root.is_dir() else []


def shipped_predictors(dirs: list[Path] | None = None) -> list[ShippedPredictor]:
    """Predictor cards under ``dirs`` (default :func:`predictor_dirs`); ``[]`` when there are none."""
    found: dict[str, ShippedPredictor] = {}
    for root in predictor_dirs() if dirs is None else dirs:
        for card in sorted(root.rglob(CARD_FILE)):
            name = card.parent.relative_to(root).as_posix()
            if name == ".":
                name = root.name
            found.setdefault(name, _read_card(name, card))
    return list(found.values())


def _read_card(name: str, path: Path) -> ShippedPredictor:
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # info never fails on a bad card
        return ShippedPredictor(name=name, path=str(path), error=f"unreadable card: {type(exc).__name__}: {exc}")
    if not isinstance(raw, dict) or raw.get("schema") != CARD_SCHEMA:
        return ShippedPredictor(name=name, path=str(path), error=f"not a {CARD_SCHEMA} card")
    compressor = _str_or_none(raw.get("compressor"))
    return ShippedPredictor(
        name=name, path=str(path), kind=_str_or_none(raw.get("kind")),
        compressor=compressor, created=_str_or_none(raw.get("created")) or None,
        select=_selected_as(compressor, path.parent),
    )


def _selected_as(compressor: str | None, folder: Path) -> str | None:
    """The shipped name that loads ``folder`` for ``compressor`` (as the floor search resolves names)."""
    from pocsdk.prediction.floor import PREDICTOR_NAMES, default_predictor_dir

    if not compressor:
        return None
    for name in PREDICTOR_NAMES:
        try:
            if default_predictor_dir(compressor, name).resolve() == folder.resolve():
                return name
        except (OSError, ValueError):
            return None
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def devices() -> list[DeviceInfo]:
    """CPU always; CUDA and Apple MPS devices when torch is installed and sees them."""
    found = [DeviceInfo(type="cpu", name=f"{platform.machine() or 'cpu'} ({os.cpu_count() or 1} cores)")]
    if importlib.util.find_spec("torch") is None:
        return found
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                found.append(DeviceInfo(type="cuda", index=i, name=props.name,
                                        memory_gib=round(props.total_memory / 2**30, 1)))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            found.append(DeviceInfo(type="mps", name="Apple MPS"))
    except Exception:  # a broken torch install must not break `info`
        pass
    return found


def extras() -> list[ExtraInfo]:
    """Optional packages and whether they are installed (found without importing them)."""
    out = []
    for module, (dist, extra) in OPTIONAL_PACKAGES.items():
        installed = importlib.util.find_spec(module) is not None
        version = None
        if installed:
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                version = None
        out.append(ExtraInfo(package=dist, extra=extra, installed=installed, version=version))
    return out


def collect() -> InfoReport:
    return InfoReport(
        version=__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        compressors=available(),
        predictors=shipped_predictors(),
        devices=devices(),
        extras=extras(),
    )


@app.command("info")
def info_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show the pocsdk version, compressors, shipped predictors, devices and optional extras."""
    report = collect()
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    console = Console()
    console.print(f"[bold]pocsdk[/bold] {report.version}  (Python {report.python}, {report.platform})",
                  highlight=False)
    console.print(f"compressors: {', '.join(report.compressors)}", highlight=False)
    preds = Table(title="shipped predictors", title_justify="left")
    for col in ("name", "kind", "compressor", "--predictor", "note"):
        preds.add_column(col)
    for p in report.predictors:
        preds.add_row(escape(p.name), escape(p.kind or ""), escape(p.compressor or ""),
                      escape(p.select or ("its path" if p.error is None else "")), escape(p.error or ""))
    if report.predictors:
        console.print(preds)
    else:
        console.print("shipped predictors: none found")
    devs = Table(title="devices", title_justify="left")
    for col in ("type", "index", "name", "memory (GiB)"):
        devs.add_column(col)
    for d in report.devices:
        devs.add_row(d.type, "" if d.index is None else str(d.index), d.name,
                     "" if d.memory_gib is None else f"{d.memory_gib:.1f}")
    console.print(devs)
    ext = Table(title="optional extras", title_justify="left")
    for col in ("package", "installed", "install with"):
        ext.add_column(col)
    for e in report.extras:
        ext.add_row(e.package, e.version if e.installed and e.version else ("yes" if e.installed else "no"),
                    escape(f"pip install 'pocsdk[{e.extra}]'"))
    console.print(ext)
