"""``Compressor.complete``: compress the context, ask the model, return the answer with the stats.

Works with any chat model that has ``chat(messages, model=None, **params) -> ChatResult``
(:class:`LLMClient`, :class:`HFLocalLLM`) and, for ``acomplete``, with an async ``chat``
(:class:`AsyncLLMClient`) or an ``achat``; a sync-only model runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pocsdk.errors import InvalidTypeError
from pocsdk.llm.types import ChatResult, CompletionResult
from pocsdk.types import CompressionResult, ContextLike

if TYPE_CHECKING:
    from pocsdk.compressor import Compressor

DEFAULT_SYSTEM = "Answer the question using the context. If the context does not contain the answer, say so."
DEFAULT_TEMPLATE = "Context:\n{context}\n\nQuestion: {query}"


@runtime_checkable
class ChatModel(Protocol):
    """What ``complete`` needs from a model."""

    def chat(self, messages: Any, model: str | None = None, **params: Any) -> Any: ...


def build_messages(compressed: str, query: str, *, system: str | None, template: str) -> list[dict[str, Any]]:
    """The prompt: an optional system message and one user message with context and question."""
    if "{context}" not in template or "{query}" not in template:
        raise InvalidTypeError("template must contain {context} and {query}")
    # one pass: a context that itself contains "{query}" is sent as compressed, never filled in
    fill = {"context": compressed, "query": query}
    user = re.sub(r"\{(context|query)\}", lambda m: fill[m[1]], template)
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": user})
    return msgs


def complete(
    compressor: Compressor,
    context: ContextLike,
    query: str,
    *,
    llm: ChatModel,
    model: str | None = None,
    system: str | None = DEFAULT_SYSTEM,
    template: str = DEFAULT_TEMPLATE,
    keep_rate: float | None = None,
    target_tokens: int | None = None,
    floor: float | None = None,
    confidence: float | None = None,
    **params: Any,
) -> CompletionResult:
    """Compress ``context`` for ``query``, ask ``llm``; ``params`` go to the model (max_tokens, ...)."""
    _check(query, llm)
    if inspect.iscoroutinefunction(llm.chat):
        raise InvalidTypeError("this llm is async: use acomplete, or pass a sync client to complete")
    compression = compressor.compress(context, query, keep_rate=keep_rate, target_tokens=target_tokens,
                                      floor=floor, confidence=confidence)
    messages = build_messages(compression.text, query, system=system, template=template)
    chat = llm.chat(messages, model, **params)
    return _result(chat, compression, messages)


async def acomplete(
    compressor: Compressor,
    context: ContextLike,
    query: str,
    *,
    llm: Any,
    model: str | None = None,
    system: str | None = DEFAULT_SYSTEM,
    template: str = DEFAULT_TEMPLATE,
    keep_rate: float | None = None,
    target_tokens: int | None = None,
    floor: float | None = None,
    confidence: float | None = None,
    **params: Any,
) -> CompletionResult:
    """Async twin of :func:`complete` (compression in a worker thread, the model awaited)."""
    _check(query, llm)
    compression = await compressor.acompress(context, query, keep_rate=keep_rate, target_tokens=target_tokens,
                                             floor=floor, confidence=confidence)
    messages = build_messages(compression.text, query, system=system, template=template)
    achat = getattr(llm, "achat", None)
    if inspect.iscoroutinefunction(llm.chat):
        chat = await llm.chat(messages, model, **params)
    elif achat is not None and inspect.iscoroutinefunction(achat):
        chat = await achat(messages, model, **params)
    else:
        chat = await asyncio.to_thread(llm.chat, messages, model, **params)
    return _result(chat, compression, messages)


def _check(query: object, llm: object) -> None:
    if not isinstance(query, str) or not query.strip():
        raise InvalidTypeError("complete needs a non-empty string query")
    if not callable(getattr(llm, "chat", None)):
        raise InvalidTypeError(f"llm must have a chat(messages, model, **params) method, got {type(llm).__name__}")


def _result(chat: Any, compression: CompressionResult, messages: list[dict[str, Any]]) -> CompletionResult:
    if not isinstance(chat, ChatResult):
        raise InvalidTypeError(f"llm.chat must return a ChatResult, got {type(chat).__name__}")
    return CompletionResult(answer=chat.content, compression=compression, usage=chat.usage, model=chat.model,
                            finish_reason=chat.finish_reason, prompt=messages)
