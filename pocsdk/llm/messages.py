"""Compress the long context parts of a chat message list, leaving everything else verbatim.

One set of rules for every face that sees chat messages (the proxy, the LangChain
runnable), so they compress the same prompt the same way:

* **Explicit marks win.** If any text contains ``<compress>...</compress>``, exactly the
  marked regions are compressed (any role, system included) and the tags are removed.
  An unclosed ``<compress>`` runs to the end of that text.
* **Otherwise, automatic.** Text of ``user`` / ``tool`` / ``function`` messages with at
  least ``min_tokens`` tokens (default 512; a message's text parts count together) is
  compressed. ``system``, ``developer`` and ``assistant`` messages are never touched
  automatically.
* **The question stays verbatim** (:func:`pocsdk.llm.question.find_question`). In the last user message that has
  text (its text parts read together, joined by a blank line), a line
  labelled ``Question:``, ``Query:``, ``Q:`` or ``问题：`` that asks is the question wherever it
  stands, with a final answer cue (``Answer:``); labelled lines in code fences and answered
  ones (a FAQ, a few-shot example) do not count, and one that does not ask counts only when
  the message does not end by asking. Otherwise the final paragraph (after the last blank
  line, else the last line break) is the question; a short first paragraph (at most 600
  characters) stays too when it asks (it is then the query when the final paragraph does not
  ask), or when the final paragraph does not ask (an instruction such as "Summarize the
  report below."). The question is the query for relevance and is never
  compressed; the text around it is, when together long enough, except stretches of at most
  600 characters (instructions around the question).
* All compressed parts share one budget (one compressor call), so an irrelevant tool
  output may shrink more than a relevant one; a text that loses all its words becomes
  ``[…]`` (:data:`OMITTED`), never an empty string.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pocsdk.compressor import Compressor
from pocsdk.llm.question import MAX_LEAD_CHARS, find_question
from pocsdk.text.tokens import TokenCounter, get_token_counter
from pocsdk.types import factor_from_keep_rate

COMPRESS_OPEN = "<compress>"
COMPRESS_CLOSE = "</compress>"
AUTO_ROLES = ("user", "tool", "function")
MAX_QUERY_CHARS = 2000
OMITTED = "[\u2026]"
"""What a message text (or text part) that compression emptied holds instead: chat APIs refuse empty text
blocks (Anthropic's, for one), and removing the message would break tool-call pairs."""
CACHE_CHARS = 32 * 1024 * 1024
"""Characters a :class:`MessageCompressor`'s prompt cache holds at most (about 32-128 MB)."""


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
        """The ``X-Pocsdk-*`` response headers the proxy sends (no factor when nothing was kept: it is
        infinite, which no number parser reads)."""
        out = {
            "X-Pocsdk-Original-Tokens": str(self.original_tokens),
            "X-Pocsdk-Compressed-Tokens": str(self.compressed_tokens),
            "X-Pocsdk-Compression-Factor": f"{self.compression_factor:.4f}",
            "X-Pocsdk-Compress-Ms": f"{self.compress_ms:.3f}",
        }
        if not math.isfinite(self.compression_factor):
            del out["X-Pocsdk-Compression-Factor"]
        return out


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


def plan(slots: Sequence[tuple[str, str]], policy: MessagePolicy, counter: TokenCounter,
         messages: Sequence[int] | None = None) -> Plan:
    """Choose the regions to compress. ``slots`` are ``(role, text)`` pairs in prompt order; ``messages`` gives
    each slot's message (several text parts of one message share it; default: one message per slot)."""
    groups = list(range(len(slots))) if messages is None else list(messages)
    if len(groups) != len(slots):
        raise ValueError(f"{len(groups)} message indices for {len(slots)} slots")
    explicit = any(COMPRESS_OPEN in text for _, text in slots)
    if not explicit and any(COMPRESS_CLOSE in text for _, text in slots):  # a stray closing tag: removed, as
        slots = [(role, text.replace(COMPRESS_CLOSE, "")) for role, text in slots]  # every tag is, unsent
    keeps, query = _question(slots, groups)
    if explicit:
        texts: list[str] = []
        pieces: list[Piece] = []
        for i, (_, text) in enumerate(slots):
            clean, regions = _tagged(text)
            texts.append(clean)
            pieces.extend(Piece(i, s, e) for s, e in regions if clean[s:e].strip())
        return Plan(texts, pieces, query, True)
    texts = [t for _, t in slots]
    by_message: dict[int, list[tuple[int, list[tuple[int, int]]]]] = {}
    for i, (role, text) in enumerate(slots):
        if role not in policy.roles:
            continue
        keep = keeps.get(i, []) if policy.keep_last_question else []
        stretches = [(a, b) for a, b in _between(keep, len(text)) if text[a:b].strip()]
        if keep:  # around a question, instruction-sized stretches ("Use the context below.") stay verbatim
            stretches = [(a, b) for a, b in stretches if len(text[a:b].strip()) > MAX_LEAD_CHARS]
        by_message.setdefault(groups[i], []).append((i, stretches))
    pieces = []
    for parts in by_message.values():
        # a message counts as a whole (its text parts and the stretches around its question together): a long
        # message is compressed however it is split. A character is at most 4 UTF-8 bytes, so at most 4
        # byte-level tokens (CJK text often takes 2-3): the cheap bound skips counting short messages.
        spans = [(i, a, b) for i, stretches in parts for a, b in stretches]
        if 4 * sum(b - a for _, a, b in spans) < policy.min_tokens:
            continue
        if sum(counter.count_many([slots[i][1][a:b] for i, a, b in spans])) >= policy.min_tokens:
            pieces.extend(Piece(i, a, b) for i, a, b in spans)
    pieces.sort(key=lambda x: (x.slot, x.start))
    return Plan(texts, pieces, query, False)


PART_SEPARATOR = "\n\n"
"""How the text parts of one message are read together when looking for its question."""


def _question(slots: Sequence[tuple[str, str]], groups: Sequence[int]) -> tuple[dict[int, list[tuple[int, int]]],
                                                                               str | None]:
    """Where the question is: kept spans per slot, and the query. The question is looked for in the last user
    message that has text, its text parts read together (a question part before a document part counts)."""
    last = next((groups[i] for i in range(len(slots) - 1, -1, -1)
                 if slots[i][0] == "user" and slots[i][1].strip()), None)
    if last is None:
        return {}, None
    members = [i for i in range(len(slots)) if groups[i] == last and slots[i][0] == "user"]
    starts: list[int] = []
    pos = 0
    for i in members:
        starts.append(pos)
        pos += len(slots[i][1]) + len(PART_SEPARATOR)
    joined = PART_SEPARATOR.join(slots[i][1] for i in members)
    q = find_question(joined)
    keeps: dict[int, list[tuple[int, int]]] = {}
    for i, start in zip(members, starts, strict=True):
        end = start + len(slots[i][1])
        spans = [(max(a, start) - start, min(b, end) - start) for a, b in q.keep if a < end and b > start]
        if spans:
            keeps[i] = spans
    query = None
    if q.query_spans:
        clean = " ".join(joined[a:b] for a, b in q.query_spans)
        query = clean.replace(COMPRESS_OPEN, "").replace(COMPRESS_CLOSE, "").strip()[-MAX_QUERY_CHARS:] or None
    return keeps, query


def _between(keep: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The complement of the sorted, disjoint ``keep`` spans in ``[0, length)``."""
    out: list[tuple[int, int]] = []
    pos = 0
    for a, b in keep:
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < length:
        out.append((pos, length))
    return out


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

    The cache (``cache_size`` entries, 0 disables it; at most ``CACHE_CHARS`` characters) maps the exact
    message texts and mode to the texts compression changed: clients retry and fan out the same prompt,
    and a hit costs a hash instead of a scoring pass. Prompts are never logged.
    """

    def __init__(self, compressor: Compressor, policy: MessagePolicy | None = None, *, cache_size: int = 0) -> None:
        self.compressor = compressor
        self.policy = policy or MessagePolicy()
        self.counter = get_token_counter(getattr(compressor.compressor, "tokenizer", None))
        self.cache_size = cache_size
        # per prompt, only the texts that changed (a long history passed through is not held twice)
        self._cache: OrderedDict[bytes, tuple[dict[int, str], MessagesStats]] = OrderedDict()
        self._cache_chars = 0
        self._lock = threading.Lock()

    # -- text slots ----------------------------------------------------------------------
    def compress_slots(self, slots: Sequence[tuple[str, str]], *, keep_rate: float | None = None,
                       floor: float | None = None, target_tokens: int | None = None,
                       confidence: float | None = None,
                       messages: Sequence[int] | None = None) -> tuple[list[str], MessagesStats]:
        """New texts for ``(role, text)`` slots (unchanged ones verbatim) and the stats.

        The mode arguments override the :class:`~pocsdk.Compressor`'s own for this call (``target_tokens``
        budgets the compressed parts, not the text around them). ``messages`` gives each slot's message index
        when a message has several text parts (they are counted, and searched for the question, together)."""
        t0 = time.perf_counter()
        mode = _mode(keep_rate, floor, target_tokens, confidence)
        key = self._key(slots, mode, messages) if self.cache_size else b""
        return self._compress_keyed(slots, mode, key, t0, messages)

    def _compress_keyed(self, slots: Sequence[tuple[str, str]], mode: dict[str, Any], key: bytes,
                        t0: float | None = None, messages: Sequence[int] | None = None
                        ) -> tuple[list[str], MessagesStats]:
        """:meth:`compress_slots` with the cache key already computed (``b""`` when the cache is off)."""
        if t0 is None:
            t0 = time.perf_counter()
        hit = self._get(key)
        if hit is not None:
            changed, cached = hit
            stats = cached.model_copy(update={"cached": True})
            stats.compress_ms = (time.perf_counter() - t0) * 1000.0
            return [changed.get(i, text) for i, (_, text) in enumerate(slots)], stats
        p = plan(slots, self.policy, self.counter, messages)
        stats = MessagesStats(explicit=p.explicit, query=p.query, parts=len(p.pieces))
        outside = self._outside_tokens(p)
        counts: list[tuple[int, int]] = []
        if not p.pieces:
            stats.reason = "nothing_to_compress"
            texts = list(p.texts)
        else:
            regions = [p.texts[x.slot][x.start:x.end] for x in p.pieces]
            result = self.compressor.compress(regions, p.query, **mode)
            counts = [(d.original_tokens, d.compressed_tokens) for d in result.documents]
            stats.reason = result.reason
            texts = _splice(p, [d.text for d in result.documents])
            seen: set[int] = set()
            for i, x in enumerate(p.pieces):  # an emptied text's marker is sent, so it is counted
                if x.slot not in seen and texts[x.slot] == OMITTED:
                    counts[i] = (counts[i][0], counts[i][1] + self.counter.count(OMITTED))
                seen.add(x.slot)
        stats.part_tokens = counts
        stats.part_slots = [x.slot for x in p.pieces] if counts else []
        self._finish(stats, outside, counts, t0)
        if key:
            self._put(key, {i: t for i, (t, (_, old)) in enumerate(zip(texts, slots, strict=True)) if t != old}, stats)
        return texts, stats

    async def acompress_slots(self, slots: Sequence[tuple[str, str]], *, keep_rate: float | None = None,
                              floor: float | None = None, target_tokens: int | None = None,
                              confidence: float | None = None,
                              messages: Sequence[int] | None = None) -> tuple[list[str], MessagesStats]:
        """Async twin of :meth:`compress_slots` (worker thread)."""
        return await asyncio.to_thread(self.compress_slots, slots, keep_rate=keep_rate, floor=floor,
                                       target_tokens=target_tokens, confidence=confidence, messages=messages)

    def is_cheap(self, slots: Sequence[tuple[str, str]], max_chars: int = 2048) -> bool:
        """True when compressing these slots needs no worker thread (cached, or too short to compress)."""
        size = sum(len(t) for _, t in slots)
        if size <= max_chars and not any(COMPRESS_OPEN in t for _, t in slots):
            return True
        return False

    def cached(self, slots: Sequence[tuple[str, str]], *, keep_rate: float | None = None,
               floor: float | None = None, messages: Sequence[int] | None = None) -> bool:
        """Is this exact prompt (and mode) in the cache? A hash, no compression."""
        if not self.cache_size:
            return False
        return self._has(self._key(slots, _mode(keep_rate, floor), messages))

    # -- OpenAI-style message dicts --------------------------------------------------------
    def compress_messages(self, messages: Sequence[Mapping[str, Any]], *, keep_rate: float | None = None,
                          floor: float | None = None) -> tuple[list[dict[str, Any]], MessagesStats]:
        """Compress OpenAI chat messages; other fields and non-text content parts are kept as is."""
        slots, where = openai_slots(messages)
        groups = [i for i, _ in where]
        texts, stats = self.compress_slots(slots, keep_rate=keep_rate, floor=floor, messages=groups)
        return rebuild_openai(messages, where, [t for _, t in slots], texts), stats

    async def acompress_messages(self, messages: Sequence[Mapping[str, Any]], *, keep_rate: float | None = None,
                                 floor: float | None = None, executor: Any = None
                                 ) -> tuple[list[dict[str, Any]], MessagesStats]:
        """Async twin of :meth:`compress_messages`: short or cached prompts inline, others in ``executor``.

        Hopping to a thread costs more than hashing a cached prompt or counting a short one,
        so the event loop does those itself.
        """
        slots, where = openai_slots(messages)
        groups = [i for i, _ in where]
        t0 = time.perf_counter()
        mode = _mode(keep_rate, floor)
        key = self._key(slots, mode, groups) if self.cache_size else b""  # hashed once per request
        if self.is_cheap(slots) or self._has(key):
            texts, stats = self._compress_keyed(slots, mode, key, t0, groups)
        else:  # the worker checks the cache again: an identical prompt may have finished meanwhile
            loop = asyncio.get_running_loop()
            texts, stats = await loop.run_in_executor(
                executor, lambda: self._compress_keyed(slots, mode, key, None, groups))
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

    def _key(self, slots: Sequence[tuple[str, str]], mode: dict[str, Any],
             messages: Sequence[int] | None = None) -> bytes:
        grouping = None if messages is None else [int(m) for m in messages]
        h = hashlib.sha256(repr((sorted(mode.items()), len(slots), grouping)).encode())
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

    def _get(self, key: bytes) -> tuple[dict[int, str], MessagesStats] | None:
        if not self.cache_size:
            return None
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def _put(self, key: bytes, changed: dict[int, str], stats: MessagesStats) -> None:
        """Remember a prompt's changed texts, within ``cache_size`` entries and ``CACHE_CHARS`` characters
        (the entry count alone let 256 prompts of 16 MiB hold gigabytes); a prompt over a quarter of
        the characters is not kept."""
        size = sum(len(t) for t in changed.values())
        if not self.cache_size or size > CACHE_CHARS // 4:
            return
        with self._lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._cache_chars -= sum(len(t) for t in old[0].values())
            self._cache[key] = (changed, stats)
            self._cache_chars += size
            while len(self._cache) > self.cache_size or self._cache_chars > CACHE_CHARS:
                _, (gone, _) = self._cache.popitem(last=False)
                self._cache_chars -= sum(len(t) for t in gone.values())


def _mode(keep_rate: float | None = None, floor: float | None = None, target_tokens: int | None = None,
          confidence: float | None = None) -> dict[str, Any]:
    """The per-call mode arguments that were given (the compressor's own defaults fill the rest)."""
    given = {"keep_rate": keep_rate, "floor": floor, "target_tokens": target_tokens, "confidence": confidence}
    return {k: v for k, v in given.items() if v is not None}


def _splice(p: Plan, new_regions: list[str]) -> list[str]:
    """Put compressed regions back into their slots (right to left, so offsets stay valid); a text that
    had words and lost them all becomes :data:`OMITTED`."""
    texts = list(p.texts)
    for x, new in sorted(zip(p.pieces, new_regions, strict=True), key=lambda t: (t[0].slot, -t[0].start)):
        text = texts[x.slot]
        head, tail = text[:x.start], text[x.end:]
        if not new.strip():
            texts[x.slot] = head + tail.lstrip() if not head.strip() else head.rstrip() + tail
        else:  # the region's own edge whitespace (line breaks around a question) stays
            region = text[x.start:x.end]
            lead, trail = region[:len(region) - len(region.lstrip())], region[len(region.rstrip()):]
            lead = "" if new[:1].isspace() else lead
            trail = "" if new[-1:].isspace() else trail
            texts[x.slot] = head + lead + new + trail + tail
    for slot in {x.slot for x in p.pieces}:
        if not texts[slot].strip():
            texts[slot] = OMITTED
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
