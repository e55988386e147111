"""RAM (Read As Human, arXiv 2602.01840): neural close reading and skimming (extra ``[neural]``).

Importing this package does not import torch; loading a model does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pocsdk.compressors.ram.compressor import RAMCompressor, RAMPlan
from pocsdk.compressors.ram.config import RAMConfig, effective_factor, keep_rate_for_rho, rho_for_keep_rate

if TYPE_CHECKING:
    from pocsdk.compressors.ram.reader import RAMAnswer, RAMReader, RAMStats

__all__ = [
    "RAMAnswer",
    "RAMCompressor",
    "RAMConfig",
    "RAMPlan",
    "RAMReader",
    "RAMStats",
    "effective_factor",
    "keep_rate_for_rho",
    "rho_for_keep_rate",
]


def __getattr__(name: str) -> Any:
    """The reader imports torch only when used."""
    if name in ("RAMReader", "RAMAnswer", "RAMStats"):
        from pocsdk.compressors.ram import reader

        return getattr(reader, name)
    raise AttributeError(name)
