"""Compress the long context parts of a chat message list, leaving everything else verbatim.

One set of rules for every face that sees chat messages (the proxy, the LangChain
runnable), so they compress the same prompt the same way:

* **Explicit marks win.** If any text contains ``<compress>...</compress>``, exactly the
  marked regions are compressed (any role, system included) and the tags are removed.
  An unclosed ``<compress>`` runs to the end of that text.
* **Otherwise, automatic.** Text of ``user`` / ``tool`` / ``function`` messages with at
  least ``min_tokens`` tokens (default 512) is compressed. ``system``, ``developer`` and
  ``assistant`` messages are never touched automatically.
* **The question stays verbatim.** The last user message's final paragraph (after its
  last blank line, else its last line) is the question: it is the query for relevance and
  is never compressed; only the text before it is, when that text is long enough.
* All compressed parts share one budget (one compressor call), so an irrelevant tool
  output may shrink more than a relevant one; a part can become empty.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pocsdk.compressor import Compressor
from pocsdk.text.tokens import TokenCounter, get_token_counter
from pocsdk.types import factor_from_keep_rate

COMPRESS_OPEN = "<compress>"
COMPRESS_CLOSE = "</compress>"
AUTO_ROLES = ("user", "tool", "function")
MAX_QUERY_CHARS = 2000


class MessagePolicy(BaseModel):
    """Which parts of a message list are compressed (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    min_tokens: int = Field(default=512, ge=1)
    roles: tuple[str, ...] = AUTO_ROLES
    keep_last_question: bool = True


class MessagesStats(BaseModel):
    """How one message list was compressed; token counts cover all message text."""

    original_tokens: int = 0
    compressed_tokens: int = 0
    keep_rate: float = 1.0
    compression_factor: float = 1.0
    compress_ms: float = 0.0
    parts: int = 0
    """How many text regions were sent to the compressor."""
    explicit: bool = False
    """True when ``<compress>`` marks chose the regions."""
    cached: bool = False
    passthrough: bool = True
    reason: str | None = None
    query: str | None = Field(default=None, repr=False)
    part_tokens: list[tuple[int, int]] = Field(default_factory=list)
    """(original, compressed) tokens of each compressed region, in prompt order."""
    part_slots: list[int] = Field(default_factory=list)
    """The slot (text) index of each compressed region."""

    def headers(self) -> dict[str, str]:
        """The ``X-Pocsdk-*`` response headers the proxy sends."""
        return {
            "X-Pocsdk-Original-Tokens": str(self.original_tokens),
            "X-Pocsdk-Compressed-Tokens": str(self.compressed_tokens),
            "X-Pocsdk-Compression-Factor": f"{self.compression_factor:.4f}",
            "X-Pocsdk-Compress-Ms": f"{self.compress_ms:.3f}",
        }


@dataclass(frozen=True)
class Piece:
    """Region ``[start, end)`` of slot ``slot``'s text to compress."""

    slot: int
    start: int
    end: int


@dataclass
class Plan:
    texts: list[str]
    """Slot texts with ``<compress>`` tags removed (piece offsets refer to these)."""
    pieces: list[Piece]
    query: str | None
    explicit: bool


def plan(slots: Sequence[tuple[str, str]], policy: MessagePolicy, counter: TokenCounter) -> Plan:
    """Choose the regions to compress. ``slots`` are ``(role, text)`` pairs in prompt order."""
    query, last_user, q_start = _question(slots)
    explicit = any(COMPRESS_OPEN in text for _, text in slots)
    if explicit:
        texts: list[str] = []
        pieces: list[Piece] = []
        for i, (_, text) in enumerate(slots):
            clean, regions = _tagged(text)
            texts.append(clean)
            pieces.extend(Piece(i, s, e) for s, e in regions if clean[s:e].strip())
        return Plan(texts, pieces, query, True)
    texts = [t for _, t in slots]
    pieces = []
    for i, (role, text) in enumerate(slots):
        if role not in policy.roles:
            continue
        end = len(text)
        if i == last_user and policy.keep_last_question:
            end = q_start
        if end < policy.min_tokens or not text[:end].strip():  # a token is at least one character
            continue
        if counter.count(text[:end]) >= policy.min_tokens:
            pieces.append(Piece(i, 0, end))
    return Plan(texts, pieces, query, False)


def _question(slots: Sequence[tuple[str, str]]) -> tuple[str | None, int, int]:
    """(query, index of the last user slot or -1, offset where its question starts)."""
    for i in range(len(slots) - 1, -1, -1):
        role, text = slots[i]
        if role != "user":
            continue
        clean = text.replace(COMPRESS_OPEN, "").replace(COMPRESS_CLOSE, "")
        query = clean[_question_start(clean):].strip()[-MAX_QUERY_CHARS:]
        return (query or None), i, _question_start(text)
    return None, -1, 0


def _question_start(text: str) -> int:
    """Where the final paragraph starts (after the last blank line, else the last line break)."""
    body = text.rstrip()
    cut = body.rfind("\n\n")
    if cut < 0:
        cut = body.rfind("\n")
    return max(cut, 0)


def _tagged(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Remove ``<compress>`` tags; return the clean text and the marked regions in it."""
    if COMPRESS_OPEN not in text and COMPRESS_CLOSE not in text:
        return text, []
    out: list[str] = []
    regions: list[tuple[int, int]] = []
    pos = 0
    length = 0
    while True:
        s = text.find(COMPRESS_OPEN, pos)
        if s < 0:
            rest = text[pos:].replace(COMPRESS_CLOSE, "")
            out.append(rest)
            break
        before = text[pos:s].replace(COMPRESS_CLOSE, "")
        out.append(before)
        length += len(before)
        e = text.find(COMPRESS_CLOSE, s + len(COMPRESS_OPEN))
        inner = text[s + len(COMPRESS_OPEN):(len(text) if e < 0 else e)].replace(COMPRESS_OPEN, "")
        out.append(inner)
        regions.append((length, length + len(inner)))
        length += len(inner)
        if e < 0:
            break
        pos = e + len(COMPRESS_CLOSE)
    return "".join(out), regions


class MessageCompressor:
    """Applies :class:`MessagePolicy` with a :class:`~pocsdk.Compressor`; optional LRU result cache.

    The cache (``cache_size`` entries, 0 disables it) maps the exact message texts and
    mode to their compressed texts: clients retry and fan out the same prompt, and a hit
    costs a hash instead of a scoring pass. Prompts are never logged.
    """

    def __init__(self, compressor: Compressor, policy: MessagePolicy | None = None, *, cache_size: int = 0) -> None:
        self.compressor = compressor
        self.policy = policy or MessagePolicy()
        self.counter = get_token_counter(getattr(compressor.compressor, "tokenizer", None))
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[list[str], MessagesStats]] = OrderedDict()
        self._lock = threading.Lock()

    # -- text slots ----------------------------------------------------------------------
    def compress_slots(self, slots: Sequence[tuple[str, str]], *, keep_rate: float | None = None,
                       floor: float | None = None) -> tuple[list[str], MessagesStats]:
        """New texts for ``(role, text)`` slots (unchanged ones verbatim) and the stats."""
        t0 = time.perf_counter()
        key = self._key(slots, keep_rate, floor) if self.cache_size else b""
        return self._compress_keyed(slots, keep_rate, floor, key, t0)

    def _compress_keyed(self, slots: Sequence[tuple[str, str]], keep_rate: float | None, floor: float | None,
                        key: bytes, t0: float | None = None) -> tuple[list[str], MessagesStats]:
        """:meth:`compress_slots` with the cache key already computed (``b""`` when the cache is off)."""
        if t0 is None:
            t0 = time.perf_counter()
        hit = self._get(key)
        if hit is not None:
            texts, cached = hit
            stats = cached.model_copy(update={"cached": True})
            stats.compress_ms = (time.perf_counter() - t0) * 1000.0
            return list(texts), stats
        p = plan(slots, self.policy, self.counter)
        stats = MessagesStats(explicit=p.explicit, query=p.query, parts=len(p.pieces))
        outside = self._outside_tokens(p)
        counts: list[tuple[int, int]] = []
        if not p.pieces:
            stats.reason = "nothing_to_compress"
            texts = list(p.texts)
        else:
            regions = [p.texts[x.slot][x.start:x.end] for x in p.pieces]
            result = self.compressor.compress(regions, p.query, keep_rate=keep_rate, floor=floor)
            counts = [(d.original_tokens, d.compressed_tokens) for d in result.documents]
            stats.reason = result.reason
            texts = _splice(p, [d.text for d in result.documents])
        stats.part_tokens = counts
        stats.part_slots = [x.slot for x in p.pieces] if counts else []
        self._finish(stats, outside, counts, t0)
        self._put(key, (list(texts), stats))
        return texts, stats

    async def acompress_slots(self, slots: Sequence[tuple[str, str]], *, keep_rate: float | None = None,
                              floor: float | None = None) -> tuple[list[str], MessagesStats]:
        """Async twin of :meth:`compress_slots` (worker thread)."""
        return await asyncio.to_thread(self.compress_slots, slots, keep_rate=keep_rate, floor=floor)

    def is_cheap(self, slots: Sequence[tuple[str, str]], max_chars: int = 2048) -> bool:
        """True when compressing these slots needs no worker thread (cached, or too short to compress)."""
        size = sum(len(t) for _, t in slots)
        if size <= max_chars and not any(COMPRESS_OPEN in t for _, t in slots):
            return True
        return False

    def cached(self, slots: Sequence[tuple[str, str]], *, keep_rate: float | None = None,
               floor: float | None = None) -> bool:
        """Is this exact prompt (and mode) in the cache? A hash, no compression."""
        if not self.cache_size:
            return False
        return self._has(self._key(slots, keep_rate, floor))

    # -- OpenAI-style message dicts --------------------------------------------------------
    def compress_messages(self, messages: Sequence[Mapping[str, Any]], *, keep_rate: float | None = None,
                          floor: float | None = None) -> tuple[list[dict[str, Any]], MessagesStats]:
        """Compress OpenAI chat messages; other fields and non-text content parts are kept as is."""
        slots, where = openai_slots(messages)
        texts, stats = self.compress_slots(slots, keep_rate=keep_rate, floor=floor)
        return rebuild_openai(messages, where, [t for _, t in slots], texts), stats

    async def acompress_messages(self, messages: Sequence[Mapping[str, Any]], *, keep_rate: float | None = None,
                                 floor: float | None = None, executor: Any = None
                                 ) -> tuple[list[dict[str, Any]], MessagesStats]:
        """Async twin of :meth:`compress_messages`: short or cached prompts inline, others in ``executor``.

        Hopping to a thread costs more than hashing a cached prompt or counting a short one,
        so the event loop does those itself.
        """
        slots, where = openai_slots(messages)
        t0 = time.perf_counter()
        key = self._key(slots, keep_rate, floor) if self.cache_size else b""  # hashed once per request
        if self.is_cheap(slots) or self._has(key):
            texts, stats = self._compress_keyed(slots, keep_rate, floor, key, t0)
        else:  # the worker checks the cache again: an identical prompt may have finished meanwhile
            loop = asyncio.get_running_loop()
            texts, stats = await loop.run_in_executor(
                executor, lambda: self._compress_keyed(slots, keep_rate, floor, key))
        return rebuild_openai(messages, where, [t for _, t in slots], texts), stats

    # -- internals -----------------------------------------------------------------------
    def _outside_tokens(self, p: Plan) -> int:
        """Tokens of all text outside the compressed regions (system prompt, question, ...)."""
        by_slot: dict[int, list[Piece]] = {}
        for x in p.pieces:
            by_slot.setdefault(x.slot, []).append(x)
        rest: list[str] = []
        for i, text in enumerate(p.texts):
            pos = 0
            for x in by_slot.get(i, []):
                rest.append(text[pos:x.start])
                pos = x.end
            rest.append(text[pos:])
        return sum(self.counter.count_many([r for r in rest if r]))

    def _finish(self, stats: MessagesStats, outside: int, counts: list[tuple[int, int]], t0: float) -> None:
        stats.original_tokens = outside + sum(o for o, _ in counts)
        stats.compressed_tokens = outside + sum(c for _, c in counts)
        stats.passthrough = stats.compressed_tokens >= stats.original_tokens
        stats.keep_rate = stats.compressed_tokens / stats.original_tokens if stats.original_tokens else 1.0
        stats.compression_factor = factor_from_keep_rate(stats.keep_rate)
        stats.compress_ms = (time.perf_counter() - t0) * 1000.0

    def _key(self, slots: Sequence[tuple[str, str]], keep_rate: float | None, floor: float | None) -> bytes:
        h = hashlib.sha256(repr((keep_rate, floor, len(slots))).encode())
        for role, text in slots:
            for part in (role, text):
                b = part.encode("utf-8", "surrogatepass")
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
        return h.digest()

    def _has(self, key: bytes) -> bool:
        if not self.cache_size:
            return False
        with self._lock:
            return key in self._cache

    def _get(self, key: bytes) -> tuple[list[str], MessagesStats] | None:
        if not self.cache_size:
            return None
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def _put(self, key: bytes, value: tuple[list[str], MessagesStats]) -> None:
        if not self.cache_size:
            return
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)


def _splice(p: Plan, new_regions: list[str]) -> list[str]:
    """Put compressed regions back into their slots (right to left, so offsets stay valid)."""
    texts = list(p.texts)
    for x, new in sorted(zip(p.pieces, new_regions, strict=True), key=lambda t: (t[0].slot, -t[0].start)):
        text = texts[x.slot]
        head, tail = text[:x.start], text[x.end:]
        if not new.strip():
            texts[x.slot] = head + tail.lstrip() if not head.strip() else head.rstrip() + tail
        else:
            texts[x.slot] = head + new + tail
    return texts


def openai_slots(messages: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[str, str]], list[tuple[int, int | None]]]:
    """``(role, text)`` for each string content and each ``text`` content part, with its location."""
    slots: list[tuple[str, str]] = []
    where: list[tuple[int, int | None]] = []
    for i, m in enumerate(messages):
        role = str(m.get("role", ""))
        content = m.get("content")
        if isinstance(content, str):
            slots.append((role, content))
            where.append((i, None))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    slots.append((role, part["text"]))
                    where.append((i, j))
    return slots, where


def strip_compress_tags(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    """``messages`` with every ``<compress>`` / ``</compress>`` tag removed and nothing compressed.

    For requests that skip compression: the tags are instructions to pocsdk, never text for the model.
    """
    slots, where = openai_slots(messages)
    old = [t for _, t in slots]
    new = [t.replace(COMPRESS_OPEN, "").replace(COMPRESS_CLOSE, "") for t in old]
    return rebuild_openai(messages, where, old, new) if new != old else list(messages)


def rebuild_openai(messages: Sequence[Mapping[str, Any]], where: list[tuple[int, int | None]],
                   old: list[str], new: list[str]) -> list[dict[str, Any]]:
    """Copy ``messages`` replacing changed texts; unchanged messages keep every field as is."""
    out = [dict(m) for m in messages]
    for (i, j), before, after in zip(where, old, new, strict=True):
        if before == after:
            continue
        if j is None:
            out[i]["content"] = after
        else:
            parts = out[i]["content"]
            if parts is messages[i]["content"]:
                parts = out[i]["content"] = list(parts)
            parts[j] = {**parts[j], "text": after}
    return out
