"""MessageCompressor's async path: what runs inline, what goes to the worker pool, the prompt cache."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import pytest

from pocsdk import Compressor
from pocsdk.llm.messages import MessageCompressor, MessagePolicy

WORDS = "river castle engine orchard harbor glacier violin comet market forest".split()


def _text(n_sentences: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + f" {i}." for i in range(n_sentences))


def _messages(seed: int = 1) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Answer briefly."},
            {"role": "tool", "tool_call_id": "c1", "content": _text(120, seed)},
            {"role": "user", "content": "Which harbor?"}]


class _NoThreads(Executor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("this prompt should have been handled on the event loop")


def _counting(mc: MessageCompressor, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"compress": 0, "key": 0}
    compress, key = mc.compressor.compress, mc._key

    def counted_compress(*a: Any, **k: Any) -> Any:
        calls["compress"] += 1
        return compress(*a, **k)

    def counted_key(*a: Any, **k: Any) -> bytes:
        calls["key"] += 1
        return key(*a, **k)

    monkeypatch.setattr(mc.compressor, "compress", counted_compress)
    monkeypatch.setattr(mc, "_key", counted_key)
    return calls


def _mc(cache_size: int = 8) -> MessageCompressor:
    return MessageCompressor(Compressor(compressor="truncate", keep_rate=0.5), MessagePolicy(min_tokens=100),
                             cache_size=cache_size)


def test_async_matches_sync_and_repeats_hit_the_cache_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    mc = _mc()
    reference, ref_stats = _mc().compress_messages(_messages(), keep_rate=0.5)
    calls = _counting(mc, monkeypatch)

    async def run() -> None:
        with ThreadPoolExecutor(1) as pool:
            first, stats = await mc.acompress_messages(_messages(), keep_rate=0.5, executor=pool)
            assert first == reference and not stats.cached
            assert stats.original_tokens == ref_stats.original_tokens
            assert stats.compressed_tokens == ref_stats.compressed_tokens < stats.original_tokens
            assert calls == {"compress": 1, "key": 1}  # the prompt is hashed once, in the event loop
            again, stats = await mc.acompress_messages(_messages(), keep_rate=0.5, executor=_NoThreads())
            assert again == reference and stats.cached
            assert stats.compressed_tokens == ref_stats.compressed_tokens
            assert calls == {"compress": 1, "key": 2}
            other, _ = await mc.acompress_messages(_messages(), keep_rate=0.4, executor=pool)
        assert other != reference and calls["compress"] == 2  # another mode is another cache entry

    asyncio.run(run())


def test_short_prompts_stay_on_the_event_loop() -> None:
    mc = _mc()
    messages = [{"role": "user", "content": "Say hi."}]
    out, stats = asyncio.run(mc.acompress_messages(messages, keep_rate=0.5, executor=_NoThreads()))
    assert out == messages and stats.reason == "nothing_to_compress" and stats.parts == 0


def test_worker_uses_a_result_cached_while_it_waited(monkeypatch: pytest.MonkeyPatch) -> None:
    mc = _mc()
    calls = _counting(mc, monkeypatch)
    slots = [(m["role"], m["content"]) for m in _messages()]
    key = mc._key(slots, 0.5, None)
    texts, _ = mc.compress_slots(slots, keep_rate=0.5)  # another request finished the same prompt
    assert calls["compress"] == 1
    again, stats = mc._compress_keyed(slots, 0.5, None, key)
    assert again == texts and stats.cached and calls["compress"] == 1


def test_cache_off_compresses_every_time_in_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    mc = _mc(cache_size=0)
    calls = _counting(mc, monkeypatch)

    async def run() -> None:
        with ThreadPoolExecutor(1) as pool:
            a, s1 = await mc.acompress_messages(_messages(), keep_rate=0.5, executor=pool)
            b, s2 = await mc.acompress_messages(_messages(), keep_rate=0.5, executor=pool)
        assert a == b and not s1.cached and not s2.cached

    asyncio.run(run())
    assert calls == {"compress": 2, "key": 0}
    assert not mc.cached([(m["role"], m["content"]) for m in _messages()], keep_rate=0.5)
