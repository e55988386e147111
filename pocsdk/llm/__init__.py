"""LLM clients: OpenAI-compatible over HTTP (sync and async twins) and a local Hugging Face model.

``Compressor.complete`` uses any of them: compress the context, ask the model, return the
answer with the compression stats. ``HFLocalLLM`` imports torch only when built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pocsdk.llm.client import AsyncLLMClient, LLMClient
from pocsdk.llm.messages import MessageCompressor, MessagePolicy, MessagesStats
from pocsdk.llm.types import ChatResult, CompletionResult, LLMError, RetryPolicy, Timeout, Usage

if TYPE_CHECKING:
    from pocsdk.llm.hf import HFLocalLLM

__all__ = [
    "AsyncLLMClient",
    "ChatResult",
    "CompletionResult",
    "HFLocalLLM",
    "LLMClient",
    "LLMError",
    "MessageCompressor",
    "MessagePolicy",
    "MessagesStats",
    "RetryPolicy",
    "Timeout",
    "Usage",
]


def __getattr__(name: str) -> Any:
    if name == "HFLocalLLM":
        from pocsdk.llm.hf import HFLocalLLM

        return HFLocalLLM
    raise AttributeError(f"module 'pocsdk.llm' has no attribute {name!r}")
