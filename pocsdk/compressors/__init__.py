"""Compressors: one module each, behind the two-phase protocol in :mod:`pocsdk.compressors.base`.

A new compressor is one module plus one ``register`` line; the shared test matrix picks
it up from :func:`available`. Neural compressors register lazily so that importing
pocsdk never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pocsdk.compressors.base import (
    Scored,
    Selection,
    TextCompressor,
    UnitCompressor,
    Units,
    render,
)
from pocsdk.errors import ConfigError, UnknownCompressorError

__all__ = [
    "DEFAULT_COMPRESSOR",
    "Scored",
    "Selection",
    "TextCompressor",
    "UnitCompressor",
    "Units",
    "available",
    "get_compressor",
    "register",
    "render",
]

DEFAULT_COMPRESSOR = "skim"
"""Used wherever no compressor is named (facade, CLI, service, proxy, LangChain); see RESULTS.md for why."""

# name -> "module:Class" (imported on first use) or a factory
_REGISTRY: dict[str, str | Callable[..., TextCompressor]] = {
    "extractive": "pocsdk.compressors.extractive:ExtractiveCompressor",
    "skim": "pocsdk.compressors.skim:SkimCompressor",
    "truncate": "pocsdk.compressors.truncate:TruncateCompressor",
    "random": "pocsdk.compressors.random:RandomCompressor",
    "llmlingua2": "pocsdk.compressors.llmlingua2:LLMLingua2Compressor",
    "selfinfo": "pocsdk.compressors.selfinfo:SelfInfoCompressor",
    "ram": "pocsdk.compressors.ram:RAMCompressor",
}

CPU_COMPRESSORS = ("extractive", "skim", "truncate", "random")


def register(name: str, target: str | Callable[..., TextCompressor]) -> None:
    """Register a compressor class or factory under ``name`` (``"module:Class"`` imports lazily)."""
    _REGISTRY[name] = target


def available() -> list[str]:
    """Registered compressor names."""
    return sorted(_REGISTRY)


def get_compressor(name: str | TextCompressor, **params: Any) -> TextCompressor:
    """Build a compressor by name with parameters, or pass an instance through."""
    if not isinstance(name, str):
        if params:
            raise ConfigError("parameters can only be given with a compressor name, not an instance")
        return name
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownCompressorError(
            f"unknown compressor {name!r}; available: {', '.join(available())}"
        ) from None
    factory = _resolve(target) if isinstance(target, str) else target
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for compressor {name!r}: {exc}") from exc


def _resolve(target: str) -> Callable[..., TextCompressor]:
    module, _, attr = target.partition(":")
    factory: Callable[..., TextCompressor] = getattr(importlib.import_module(module), attr)
    return factory
