"""pocsdk: performance-oriented context compression for LLM apps.

State a performance floor instead of a ratio::

    from pocsdk import Compressor
    result = Compressor(floor=0.9).compress(documents, query="Who won the 1998 final?")

or compress at a fixed rate with ``Compressor(keep_rate=0.3)`` / ``Compressor(target_tokens=800)``.
"""

from pocsdk._version import __version__
from pocsdk.compressor import Compressor
from pocsdk.text.protect import Protection
from pocsdk.types import (
    CompressionResult,
    Document,
    DocumentResult,
    FloorDecision,
    Span,
    Timings,
)

__all__ = [
    "CompressionResult",
    "Compressor",
    "Document",
    "DocumentResult",
    "FloorDecision",
    "Protection",
    "Span",
    "Timings",
    "__version__",
]
