"""LangChain integration (``pip install 'pocsdk[langchain]'``; needs ``langchain-core`` only).

* :class:`PocsdkCompressorRunnable` - a Runnable compressing what flows into a model:
  a ``{"context", "question"}`` dict (RAG), a ``PromptValue``, or a list of messages
  (agent histories). ``floor`` / ``keep_rate`` are fields, so ``configurable_fields``
  can change them per call. Stats land in the output (the dict's ``"pocsdk"`` key, or
  ``response_metadata["pocsdk"]`` of each compressed message) and go to callbacks as the
  custom event ``"pocsdk_compression"``.
* :class:`PocsdkDocumentCompressor` - a ``BaseDocumentCompressor`` for
  ``ContextualCompressionRetriever``-style pipelines: one output ``Document`` per input.
* :class:`PocsdkChatModel` - any pocsdk chat client (:class:`~pocsdk.llm.LLMClient`,
  :class:`~pocsdk.llm.AsyncLLMClient`, :class:`~pocsdk.llm.HFLocalLLM`) as a LangChain chat
  model, so chains run offline on a local model.

Messages follow the rules of :mod:`pocsdk.llm.messages` (the proxy's rules): long
user/tool texts are compressed, system messages and the last user question stay
verbatim, ``<compress>...</compress>`` marks override.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any, Union

import httpx

from pocsdk.errors import ConfigError, EmptyContextError, InvalidTypeError, MissingDependencyError, PocError

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.callbacks.manager import (
        AsyncCallbackManagerForChainRun,
        CallbackManagerForChainRun,
        adispatch_custom_event,
        dispatch_custom_event,
    )
    from langchain_core.documents import Document as LCDocument
    from langchain_core.documents.compressor import BaseDocumentCompressor
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        convert_to_messages,
    )
    from langchain_core.outputs import ChatGeneration
    from langchain_core.outputs import ChatResult as LCChatResult
    from langchain_core.prompt_values import ChatPromptValue, PromptValue, StringPromptValue
    from langchain_core.runnables import RunnableConfig, RunnableSerializable
except ImportError as exc:  # pragma: no cover - depends on the install
    raise MissingDependencyError("the LangChain integration", "langchain", "langchain-core") from exc

from pydantic import ConfigDict, Field, SecretStr, model_validator

from pocsdk.compressor import Compressor
from pocsdk.compressors import DEFAULT_COMPRESSOR, available
from pocsdk.llm.messages import PART_SEPARATOR, MessageCompressor, MessagePolicy, MessagesStats
from pocsdk.types import CompressionResult, normalize_context

EVENT = "pocsdk_compression"
DEFAULT_DOCUMENT_MIN_TOKENS = 64
"""The built-in compressors' own ``min_tokens``: retrieved documents under it pass through."""

RunnableInput = Union[Mapping[str, Any], PromptValue, Sequence[Any], str]


DEFAULT_FLOOR = 0.9
"""The floor used when neither a field nor ``compressor_params`` sets a mode."""
_MODES = ("floor", "target_tokens", "keep_rate")
"""Mode fields in the order they win when several are set."""


_SHARED: OrderedDict[tuple[str, str, int], tuple[MessageCompressor, dict[str, Any]]] = OrderedDict()
_SHARED_LOCK = threading.Lock()
_SHARED_SIZE = 32


def _shared(compressor: str, params: dict[str, Any], min_tokens: int) -> MessageCompressor:
    """One compressor per configuration (an LRU of 32), so per-call configured copies reuse loaded predictors.

    Keyed by the parameters' JSON, values that are no JSON (a path, a loaded predictor) by identity; an entry
    holds its parameters, so an identity is never reused while it is cached."""
    key = (compressor, json.dumps(params, sort_keys=True, default=_identity), min_tokens)
    with _SHARED_LOCK:
        hit = _SHARED.get(key)
        if hit is not None:
            _SHARED.move_to_end(key)
            return hit[0]
    built = MessageCompressor(Compressor(compressor=compressor, **params), MessagePolicy(min_tokens=min_tokens))
    with _SHARED_LOCK:
        _SHARED[key] = (built, dict(params))
        while len(_SHARED) > _SHARED_SIZE:
            _SHARED.popitem(last=False)
    return built


def _identity(value: Any) -> str:
    if isinstance(value, PurePath):  # equal paths share one compressor (and its loaded predictor)
        return f"<path {value}>"
    return f"<{type(value).__qualname__} at {id(value):#x}>"


class _PocsdkFields:
    """Fields shared by the runnable and the document compressor (mixed into pydantic models)."""

    floor: float | None
    keep_rate: float | None
    target_tokens: int | None
    confidence: float | None
    compressor: str
    compressor_params: dict[str, Any]
    api_key: SecretStr | None
    endpoint_auth: SecretStr | None
    endpoint_auth_for: str | None
    min_tokens: int

    def _params(self) -> dict[str, Any]:
        params = dict(self.compressor_params)
        endpoint = params.get("endpoint")
        if self.endpoint_auth is not None and isinstance(endpoint, str) and endpoint == self.endpoint_auth_for:
            # only into the endpoint they came with: a per-call endpoint elsewhere never receives them
            userinfo = self.endpoint_auth.get_secret_value().encode("utf-8")
            params["endpoint"] = str(httpx.URL(endpoint).copy_with(userinfo=userinfo))
        if self.api_key is not None:
            params["api_key"] = self.api_key.get_secret_value()
        return params

    def _messages(self) -> MessageCompressor:
        return _shared(self.compressor, self._params(), self.min_tokens)

    def _mode(self) -> dict[str, Any]:
        """The per-call mode: the first field set of ``floor``, ``target_tokens``, ``keep_rate`` (so a keep-rate
        chain runs at a floor configured per call), else the ``compressor_params``' mode, else the default floor."""
        mode: dict[str, Any] = {}
        for m in _MODES:
            if getattr(self, m) is not None:
                mode[m] = getattr(self, m)
                break
        if not mode and not any(self.compressor_params.get(m) is not None for m in _MODES):
            mode["floor"] = DEFAULT_FLOOR
        if self.confidence is not None:
            mode["confidence"] = self.confidence
        return mode


def _move_api_key(cls: Any, data: Any) -> Any:
    """An ``api_key`` in ``compressor_params`` becomes the field (written as a secret by ``dumps``); paths in
    ``compressor_params`` become text, which ``dumps`` writes and ``loads`` reads back."""
    if not (isinstance(data, dict) and isinstance(data.get("compressor_params"), dict)):
        return data
    params = {k: str(v) if isinstance(v, PurePath) else v for k, v in data["compressor_params"].items()}
    data = {**data, "compressor_params": params}
    if "api_key" in params:
        key = params.pop("api_key")  # the parameters' own key wins: a per-call endpoint comes with its key
        data["api_key"] = key if key is not None else data.get("api_key")
    endpoint = params.get("endpoint")
    authority = endpoint.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0] \
        if isinstance(endpoint, str) else ""
    if isinstance(endpoint, str) and "@" in authority:  # credentials in it: a secret too, out of repr and dumps
        try:
            url = httpx.URL(endpoint.strip())
        except (httpx.InvalidURL, TypeError, ValueError):
            url = None
        if url is None or not url.userinfo or url.scheme not in ("http", "https"):
            # "user:pass@host" without a scheme reads as scheme "user": refused here, never kept as text
            raise ValueError("the endpoint holds credentials but is no http(s) URL; write "
                             "https://user:password@host (the endpoint is not repeated here)")
        data["endpoint_auth"] = url.userinfo.decode("utf-8", "replace")
        params["endpoint"] = data["endpoint_auth_for"] = str(url.copy_with(userinfo=b""))
    return data


def _check_fields(fields: Any) -> Any:
    """A known compressor (any name with a remote ``endpoint``); a ``confidence`` needs a floor (the field,
    ``compressor_params``' or the default)."""
    if fields.compressor not in available() and fields.compressor_params.get("endpoint") is None:
        raise ConfigError(f"unknown compressor {fields.compressor!r}; available: {', '.join(available())}")
    mode = next((m for m in _MODES if getattr(fields, m) is not None), None)
    if mode is None:
        mode = next((m for m in _MODES if fields.compressor_params.get(m) is not None), "floor")
    if fields.confidence is not None and mode != "floor":
        raise ConfigError("confidence applies to a floor: give floor=... (or no mode: the default is a floor)")
    return fields


def _empty_stats(compressor: str) -> dict[str, Any]:
    """Stats of a context without text: nothing to compress, so it passes through."""
    return {"original_tokens": 0, "compressed_tokens": 0, "keep_rate": 1.0, "compression_factor": 1.0,
            "compressor": compressor, "passthrough": True, "reason": "empty_context", "compress_ms": 0.0}


def result_stats(result: CompressionResult) -> dict[str, Any]:
    """JSON-ready summary of one compression (numbers, never formatted strings)."""
    out: dict[str, Any] = {
        "original_tokens": result.original_tokens,
        "compressed_tokens": result.compressed_tokens,
        "keep_rate": result.keep_rate,
        "compression_factor": result.compression_factor,
        "compressor": result.compressor,
        "passthrough": result.passthrough,
        "reason": result.reason,
        "compress_ms": result.timings.total_ms,
    }
    if result.floor is not None:
        out["floor"] = result.floor.floor
        out["predicted_performance"] = result.floor.predicted_performance
    return out


def _messages_stats(stats: MessagesStats) -> dict[str, Any]:
    return stats.model_dump(exclude={"query", "part_tokens", "part_slots"})


class PocsdkCompressorRunnable(_PocsdkFields, RunnableSerializable[Any, Any]):
    """Compress a RAG input dict, a prompt value or a message list before the model sees it.

    >>> chain = retrieve | PocsdkCompressorRunnable(keep_rate=0.3) | prompt | llm  # doctest: +SKIP

    Input -> output:

    * ``{"context": str | list[str | Document | dict], "question": str, ...}`` ->
      the same dict with ``context`` replaced by the compressed text and ``"pocsdk"``
      holding the stats (``"query"`` is accepted for ``"question"``);
    * ``ChatPromptValue`` / list of messages -> the same kind, long user/tool messages
      compressed (``response_metadata["pocsdk"]`` on each one changed); items of a list come
      back as they came (OpenAI-style dicts as dicts, ``(role, text)`` pairs as pairs);
    * ``StringPromptValue`` / ``str`` -> the same kind, compressed as one user message
      (its last paragraph is the question and stays verbatim).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, hide_input_in_errors=True)  # keys never in errors

    floor: float | None = Field(default=None, gt=0, le=1)
    keep_rate: float | None = Field(default=None, gt=0, le=1)
    target_tokens: int | None = Field(default=None, ge=1)
    """A token budget for the compressed parts (message inputs: the text around them is extra)."""
    confidence: float | None = Field(default=None, gt=0, lt=1)
    """With a floor: the share of inputs on which the floor should hold (the calibrated promise)."""
    compressor: str = DEFAULT_COMPRESSOR
    compressor_params: dict[str, Any] = Field(default_factory=dict)
    api_key: SecretStr | None = None
    """The key of a remote ``pocsdk serve`` (``compressor_params={"endpoint": ...}``); one given in
    ``compressor_params`` moves here, so that serialisation writes it as a secret reference."""
    endpoint_auth: SecretStr | None = None
    """Credentials given in the endpoint (``https://user:pass@host``) move here, out of ``repr`` and text."""
    endpoint_auth_for: str | None = None
    """The endpoint (without them) that ``endpoint_auth`` belongs to: another endpoint never receives them."""
    min_tokens: int = Field(default=512, ge=1)
    """Messages with at least this many tokens are compressed (message inputs only)."""

    _move_api_key = model_validator(mode="before")(_move_api_key)
    _check_fields = model_validator(mode="after")(_check_fields)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """``loads(s, valid_namespaces=["pocsdk"], allowed_objects=[PocsdkCompressorRunnable])`` rebuilds it."""
        return ["pocsdk", "integrations", "langchain"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        """A remote service's key is written as a secret reference, never as text."""
        return {"api_key": "POCSDK_API_KEY", "endpoint_auth": "POCSDK_ENDPOINT_AUTH"}

    def invoke(self, input: RunnableInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, run_type="prompt")

    async def ainvoke(self, input: RunnableInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, run_type="prompt")

    # -- one implementation, two shells ----------------------------------------------------
    def _invoke(self, input: RunnableInput, run_manager: CallbackManagerForChainRun) -> Any:
        kind, payload = _classify(input)
        if kind == "dict":
            context, question = payload
            if not _has_text(context):
                stats = _empty_stats(self.compressor)
                dispatch_custom_event(EVENT, stats)
                return {**input, "context": _empty_text(context), "pocsdk": stats}  # type: ignore[dict-item]
            result = self._messages().compressor.compress(context, question, **self._mode())
            stats = result_stats(result)
            dispatch_custom_event(EVENT, stats)
            return {**input, "context": result.text, "pocsdk": stats}  # type: ignore[dict-item]
        slots, groups = _split(payload)
        texts, mstats = self._messages().compress_slots(slots, **self._mode(), messages=groups)
        dispatch_custom_event(EVENT, _messages_stats(mstats))
        return _rebuild(kind, input, payload, texts, mstats)

    async def _ainvoke(self, input: RunnableInput, run_manager: AsyncCallbackManagerForChainRun) -> Any:
        kind, payload = _classify(input)
        if kind == "dict":
            context, question = payload
            if not _has_text(context):
                stats = _empty_stats(self.compressor)
                await adispatch_custom_event(EVENT, stats)
                return {**input, "context": _empty_text(context), "pocsdk": stats}  # type: ignore[dict-item]
            result = await self._messages().compressor.acompress(context, question, **self._mode())
            stats = result_stats(result)
            await adispatch_custom_event(EVENT, stats)
            return {**input, "context": result.text, "pocsdk": stats}  # type: ignore[dict-item]
        slots, groups = _split(payload)
        texts, mstats = await self._messages().acompress_slots(slots, **self._mode(), messages=groups)
        await adispatch_custom_event(EVENT, _messages_stats(mstats))
        return _rebuild(kind, input, payload, texts, mstats)



# -- input classification ------------------------------------------------------------------
# By class, so chunks (HumanMessageChunk is a HumanMessage) and subclasses get their role too.
_ROLE_CLASSES: tuple[tuple[type[BaseMessage], str], ...] = (
    (HumanMessage, "user"), (AIMessage, "assistant"), (SystemMessage, "system"), (ToolMessage, "tool"),
    (FunctionMessage, "function"))
_ROLE_NAMES = {"human": "user", "ai": "assistant"}


def _role(message: BaseMessage) -> str:
    if isinstance(message, ChatMessage):
        return _ROLE_NAMES.get(message.role, message.role)
    for cls, role in _ROLE_CLASSES:
        if isinstance(message, cls):
            return role
    return _ROLE_NAMES.get(message.type, message.type)


def _classify(input: Any) -> tuple[str, Any]:
    """("dict", (context, question)) or (kind, [(role, text, (message index, block index))])."""
    if isinstance(input, Mapping):
        if "context" not in input:
            raise InvalidTypeError("a dict input needs a 'context' key (and usually 'question')")
        question = input.get("question")
        if question is None:
            question = input.get("query")
        if question is not None and not isinstance(question, str):
            raise InvalidTypeError("'question' must be a string")
        return "dict", (_context(input["context"]), question)
    if isinstance(input, StringPromptValue):
        return "string_prompt", [("user", input.text, (0, None))]
    if isinstance(input, str):
        return "str", [("user", input, (0, None))]
    if isinstance(input, PromptValue):
        return "chat_prompt", _message_slots(input.to_messages())
    if isinstance(input, Sequence):
        return "messages", _message_slots(convert_to_messages(input))
    raise InvalidTypeError(
        f"expected a {{context, question}} dict, a PromptValue, a string or a list of messages, "
        f"got {type(input).__name__}")


def _has_text(context: Any) -> bool:
    """Does a context hold any non-blank text, read as the compressor reads it? (A context it cannot read
    counts as text, so that the compressor reports what is wrong with it.)"""
    if isinstance(context, str):  # the common case, without building documents the compressor builds again
        return bool(context.strip())
    try:
        docs = normalize_context(_context(context))
    except EmptyContextError:
        return False
    except PocError:
        return True
    return any(d.text.strip() for d in docs)


def _empty_text(context: Any) -> str:
    return context if isinstance(context, str) else ""


def _context(context: Any) -> Any:
    """LangChain Documents become pocsdk document dicts; strings and lists pass through."""
    if isinstance(context, (list, tuple)):
        # Positional ids: retrievers may repeat ids (two stores merged, one chunk found twice), and outputs
        # are matched to inputs by position and keep their own ``id``.
        # Metadata stays with the LangChain documents (the outputs copy it from them): pocsdk never reads it,
        # and LangChain allows what pocsdk's documents refuse (keys that are not strings).
        return [{"id": f"lc-{i}", "text": d.page_content} if isinstance(d, LCDocument) else d
                for i, d in enumerate(context)]
    if isinstance(context, LCDocument):
        return context.page_content
    return context


def _message_slots(messages: Sequence[BaseMessage]) -> list[tuple[str, str, tuple[int, int | None]]]:
    slots: list[tuple[str, str, tuple[int, int | None]]] = []
    for i, m in enumerate(messages):
        role = _role(m)
        if isinstance(m.content, str):
            slots.append((role, m.content, (i, None)))
        else:
            for j, block in enumerate(m.content):
                if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                    slots.append((role, block["text"], (i, j)))
                elif isinstance(block, str):
                    slots.append((role, block, (i, j)))
    return slots


def _split(payload: list[tuple[str, str, tuple[int, int | None]]]) -> tuple[list[tuple[str, str]], list[int]]:
    """``(role, text)`` slots and each one's message index."""
    return [(role, text) for role, text, _ in payload], [where[0] for _, _, where in payload]


def _rebuild(kind: str, input: Any, slots: list[tuple[str, str, tuple[int, int | None]]], texts: list[str],
             stats: MessagesStats) -> Any:
    if kind == "str":
        return texts[0]
    if kind == "string_prompt":
        return StringPromptValue(text=texts[0])
    messages = list(input.to_messages() if kind == "chat_prompt" else convert_to_messages(input))
    per_message: dict[int, list[int]] = {}
    for slot, (o, c) in zip(stats.part_slots, stats.part_tokens, strict=True):
        tally = per_message.setdefault(slots[slot][2][0], [0, 0])
        tally[0] += o
        tally[1] += c
    changed: dict[int, Any] = {}
    for (_, old, (i, j)), new in zip(slots, texts, strict=True):
        if old == new:
            continue
        content = changed.get(i, messages[i].content)
        if j is None:
            content = new
        else:
            content = list(content)
            block = content[j]
            content[j] = {**block, "text": new} if isinstance(block, dict) else new
        changed[i] = content
    for i, content in changed.items():
        m = messages[i]
        o, c = per_message.get(i, (0, 0))
        meta = {**m.response_metadata, "pocsdk": {"original_tokens": o, "compressed_tokens": c}}
        messages[i] = m.model_copy(update={"content": content, "response_metadata": meta})
    if kind == "chat_prompt":
        return ChatPromptValue(messages=messages)
    return [_same_kind(item, messages[i], changed.get(i)) for i, item in enumerate(input)]


def _same_kind(item: Any, message: BaseMessage, content: Any) -> Any:
    """An input list's item as it came (an OpenAI-style dict, a ``(role, text)`` pair, a string), its text
    replaced when compressed; message objects come back as the compressed copy (with their stats)."""
    if isinstance(item, BaseMessage) or content is None:
        return message if isinstance(item, BaseMessage) else item
    if isinstance(item, Mapping):
        if item.get("lc") and isinstance(item.get("kwargs"), Mapping):  # a serialised message (``dumpd``)
            return {**item, "kwargs": {**item["kwargs"], "content": content}}
        return {**item, "content": content}
    if isinstance(item, str):
        return content
    if isinstance(item, tuple):
        return (item[0], content)
    if isinstance(item, list):
        return [item[0], content]
    return message


class PocsdkDocumentCompressor(_PocsdkFields, BaseDocumentCompressor):
    """Compress retrieved documents jointly under one budget; one output Document per input.

    Each output keeps the input's ``id`` and metadata plus ``metadata["pocsdk"]``
    (this document's and the whole call's token counts). A document the budget drops
    entirely is kept with empty ``page_content`` and ``metadata["pocsdk"]["dropped"] =
    True`` so positions and citations stay aligned; ``drop_empty=True`` leaves it out.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, hide_input_in_errors=True)  # keys never in errors

    floor: float | None = Field(default=None, gt=0, le=1)
    keep_rate: float | None = Field(default=None, gt=0, le=1)
    target_tokens: int | None = Field(default=None, ge=1)
    confidence: float | None = Field(default=None, gt=0, lt=1)
    compressor: str = DEFAULT_COMPRESSOR
    compressor_params: dict[str, Any] = Field(default_factory=dict)
    api_key: SecretStr | None = None
    """The key of a remote ``pocsdk serve`` (``compressor_params={"endpoint": ...}``); one given in
    ``compressor_params`` moves here, so that serialisation writes it as a secret reference."""
    endpoint_auth: SecretStr | None = None
    """Credentials given in the endpoint (``https://user:pass@host``) move here, out of ``repr`` and text."""
    endpoint_auth_for: str | None = None
    """The endpoint (without them) that ``endpoint_auth`` belongs to: another endpoint never receives them."""
    min_tokens: int = Field(default=DEFAULT_DOCUMENT_MIN_TOKENS, ge=1)
    """Documents that together hold fewer tokens pass through unchanged (the compressor's ``min_tokens``;
    one in ``compressor_params`` wins)."""
    drop_empty: bool = False

    _move_api_key = model_validator(mode="before")(_move_api_key)
    _check_fields = model_validator(mode="after")(_check_fields)

    def _messages(self) -> MessageCompressor:
        # Passed on only when set, so a registered compressor without a ``min_tokens`` parameter still works.
        params = dict(self._params())
        if self.min_tokens != DEFAULT_DOCUMENT_MIN_TOKENS:
            params.setdefault("min_tokens", self.min_tokens)
        return _shared(self.compressor, params, MessagePolicy().min_tokens)

    def compress_documents(self, documents: Sequence[LCDocument], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[LCDocument]:
        if not _has_text(list(documents)):
            return self._unchanged(documents)
        result = self._messages().compressor.compress(_context(list(documents)), query, **self._mode())
        return self._outputs(documents, result)

    async def acompress_documents(self, documents: Sequence[LCDocument], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[LCDocument]:
        if not _has_text(list(documents)):
            return self._unchanged(documents)
        result = await self._messages().compressor.acompress(_context(list(documents)), query, **self._mode())
        return self._outputs(documents, result)

    def _unchanged(self, documents: Sequence[LCDocument]) -> list[LCDocument]:
        """Documents without text pass through, with the same stats as any other output (zero tokens)."""
        stats = {"original_tokens": 0, "compressed_tokens": 0, "dropped": False, "total": _empty_stats(self.compressor)}
        return [LCDocument(page_content=d.page_content, metadata={**d.metadata, "pocsdk": stats}, id=d.id)
                for d in documents]

    def _outputs(self, documents: Sequence[LCDocument], result: CompressionResult) -> list[LCDocument]:
        total = result_stats(result)
        out: list[LCDocument] = []
        for doc, dr in zip(documents, result.documents, strict=True):
            dropped = not dr.text.strip() and bool(doc.page_content.strip())
            if dropped and self.drop_empty:
                continue
            stats = {"original_tokens": dr.original_tokens, "compressed_tokens": dr.compressed_tokens,
                     "dropped": dropped, "total": total}
            out.append(LCDocument(page_content=dr.text, metadata={**doc.metadata, "pocsdk": stats}, id=doc.id))
        return out


class PocsdkChatModel(BaseChatModel):
    """A pocsdk chat client as a LangChain chat model (text in, text out; no tool calling)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, hide_input_in_errors=True)  # keys never in errors

    client: Any
    """Anything with ``chat(messages, model=None, **params) -> pocsdk.llm.ChatResult`` (sync or async)."""
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    """Sent with every call (e.g. ``{"max_tokens": 64}``)."""

    @property
    def _llm_type(self) -> str:
        return "pocsdk"

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[
            list[dict[str, Any]], dict[str, Any]]:
        msgs = [{"role": _role(m), "content": _text(m)} for m in messages]
        params = {**self.params, **kwargs}
        if stop:
            params["stop"] = stop
        return msgs, params

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> LCChatResult:
        if inspect.iscoroutinefunction(self.client.chat):
            raise InvalidTypeError("this client is async: call ainvoke, or pass a sync client")
        msgs, params = self._request(messages, stop, kwargs)
        return _lc_result(self.client.chat(msgs, self.model, **params))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                         **kwargs: Any) -> LCChatResult:
        msgs, params = self._request(messages, stop, kwargs)
        if inspect.iscoroutinefunction(self.client.chat):
            return _lc_result(await self.client.chat(msgs, self.model, **params))
        return _lc_result(await asyncio.to_thread(self.client.chat, msgs, self.model, **params))


def _text(message: BaseMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    # parts are separate blocks: joined as pocsdk's message rules read them (a blank line), so a question part
    # stays its own paragraph for a compressing proxy further on
    return PART_SEPARATOR.join(b if isinstance(b, str) else str(b.get("text", "")) for b in message.content
                               if isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text"))


def _lc_result(result: Any) -> LCChatResult:
    usage = result.usage
    message = AIMessage(
        content=result.content,
        response_metadata={"model_name": result.model, "finish_reason": result.finish_reason},
        usage_metadata={"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                        "total_tokens": usage.total_tokens},
    )
    return LCChatResult(generations=[ChatGeneration(message=message)])


__all__ = ["EVENT", "PocsdkChatModel", "PocsdkCompressorRunnable", "PocsdkDocumentCompressor", "result_stats"]
