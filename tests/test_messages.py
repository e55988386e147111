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
    key = mc._key(slots, {"keep_rate": 0.5})
    texts, _ = mc.compress_slots(slots, keep_rate=0.5)  # another request finished the same prompt
    assert calls["compress"] == 1
    again, stats = mc._compress_keyed(slots, {"keep_rate": 0.5}, key)
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


@pytest.mark.parametrize(("text", "kept", "query"), [
    # labelled question before the context (rag-prompt): the label line and the answer cue stay
    ("Use the context.\nQuestion: When did it open? \nContext: Doc one.\n\nDoc two.\nAnswer:",
     ["Question: When did it open?", "\nAnswer:"], "When did it open?"),
    ("**Question:** When?\n**Context:** Doc one.\n\nDoc two.", ["**Question:** When?"], "When?"),
    # the last labelled question of a few-shot prompt, with its answer cue
    ("Q: What is 2+2?\nA: 4\n\nQ: What is 3+3?\nA:", ["Q: What is 3+3?", "\nA:"], "What is 3+3?"),
    # a label alone on its line: the next line asks
    ("**Question:**\n\nIn which year?\n\nDoc one.\n\nDoc two.", ["**Question:**\n\nIn which year?"],
     "In which year?"),
    # a question line followed by data without a blank line: the line only
    ("Question: Which city?\ncity,pop\nOslo,1\nRome,2", ["Question: Which city?"], "Which city?"),
    # "Q:" lines inside documents (a FAQ, code) are no question when the text ends by asking
    ("Doc.\nQ: How do I reset?\nA: Click.\n\n```\nq: int = 3\n```\n\nIn which year was it built?",
     ["\n\nIn which year was it built?"], "In which year was it built?"),
    # a retrieved chunk that ends by asking does not outrank a labelled question that asks
    ("Question: When was it built? \nContext: Built in 1890. Who maintains it? \nAnswer:",
     ["Question: When was it built?", "\nAnswer:"], "When was it built?"),
    # an unclosed fence (a chunk cut mid-block) hides no label
    ("Context: Install with:\n```bash\npip install foo\nQuestion: How do I install foo?\nAnswer:",
     ["Question: How do I install foo?", "\nAnswer:"], "How do I install foo?"),
    # an answered FAQ pair first is no question: the final instruction is the query
    ("Q: How do I reset?\nA: Click Reset.\n\nDoc one.\n\nSummarize the answers.",
     ["Q: How do I reset?\nA: Click Reset.", "\n\nSummarize the answers."], "Summarize the answers."),
    ("```\nQuery: SELECT 1\n```\n\nDoc one.\n\nSummarize.", ["```\nQuery: SELECT 1\n```", "\n\nSummarize."],
     "Summarize."),
    # unlabelled: the final paragraph, as before
    ("Doc one.\n\nDoc two.\n\nWhen did it open?", ["\n\nWhen did it open?"], "When did it open?"),
    # the question first: it stays and is the query; the final paragraph stays too (it may instruct)
    ("When did it open? Use the report.\n\nDoc one.\n\nDoc two.",
     ["When did it open? Use the report.", "\n\nDoc two."], "When did it open? Use the report."),
    # an instruction first and no question anywhere: both ends stay, the query is the final paragraph
    ("Summarize the report.\n\nDoc one.\n\nDoc two.", ["Summarize the report.", "\n\nDoc two."], "Doc two."),
])
def test_find_question(text: str, kept: list[str], query: str) -> None:
    from pocsdk.llm.question import find_question

    q = find_question(text)
    assert [text[a:b] for a, b in q.keep] == kept
    assert " ".join(text[a:b] for a, b in q.query_spans).strip() == query


def test_labelled_question_before_the_context_is_the_query_and_stays() -> None:
    """The proxy used to take the last retrieved document for the question and compress the real one away."""
    docs = "\n\n".join(_text(40, s) for s in range(4))
    prompt = f"Answer from the context.\nQuestion: Which violin?\nContext: {docs}\nAnswer:"
    mc = _mc(cache_size=0)
    out, stats = mc.compress_messages([{"role": "user", "content": prompt}], keep_rate=0.3)
    content = out[0]["content"]
    assert content.startswith("Answer from the context.\nQuestion: Which violin?\n")
    assert content.endswith("\nAnswer:") and stats.query == "Which violin?"
    assert stats.compressed_tokens < 0.6 * stats.original_tokens


def test_a_question_in_the_middle_splits_a_long_message_that_is_still_compressed() -> None:
    """Each side used to need min_tokens on its own, so a long message asking in its middle passed through."""
    before, after = _text(30, 1), _text(30, 2)
    prompt = f"{before}\nQuestion: Which violin?\n{after}"
    mc = MessageCompressor(Compressor(compressor="truncate", keep_rate=0.5), MessagePolicy(min_tokens=600))
    out, stats = mc.compress_messages([{"role": "user", "content": prompt}])
    assert stats.parts == 2 and "\nQuestion: Which violin?" in out[0]["content"]  # 420 tokens a side
    assert stats.compressed_tokens < 0.7 * stats.original_tokens


def test_text_with_more_tokens_than_characters_is_compressed() -> None:
    """Counting characters as a lower bound of tokens skipped CJK text that holds more tokens than characters."""
    pytest.importorskip("tiktoken")
    text = ("\u6545\u5bab\u4f4d\u4e8e\u5317\u4eac\u5e02\u4e2d\u5fc3\uff0c"
            "\u662f\u660e\u6e05\u4e24\u4ee3\u7684\u7687\u5bab\u3002") * 24
    mc = MessageCompressor(Compressor(compressor="truncate", keep_rate=0.5, tokenizer="tiktoken:cl100k_base"),
                           MessagePolicy(min_tokens=512))
    assert len(text) < 512 <= mc.counter.count(text)
    _, stats = mc.compress_messages([{"role": "tool", "tool_call_id": "t", "content": text},
                                     {"role": "user", "content": "Where?"}])
    assert stats.parts == 1 and stats.compressed_tokens < stats.original_tokens


FACT = "The treasure is buried under the old lighthouse."


def _report(seed: int) -> str:
    """Four paragraphs of filler with the fact in the second."""
    paragraphs = [_text(30, seed + k) for k in range(4)]
    paragraphs[1] = f"{paragraphs[1]} {FACT}"
    return "\n\n".join(paragraphs)


def _bm25(keep_rate: float) -> MessageCompressor:
    return MessageCompressor(Compressor(compressor="extractive", keep_rate=keep_rate), MessagePolicy(min_tokens=100))


def test_a_question_part_before_a_document_part_is_the_query() -> None:
    """The question was looked up in the last text part only, so the document's last paragraph became the query."""
    content = [{"type": "text", "text": "Where is the treasure buried?"}, {"type": "text", "text": _report(3)}]
    out, stats = _bm25(0.3).compress_messages([{"role": "user", "content": content}])
    assert stats.query == "Where is the treasure buried?"
    assert out[0]["content"][0] == content[0] and FACT in out[0]["content"][1]["text"]
    assert stats.compressed_tokens < 0.6 * stats.original_tokens


@pytest.mark.parametrize("tail", ["", " \n"])
def test_a_blank_last_user_message_does_not_hide_the_question(tail: str) -> None:
    messages = [{"role": "user", "content": f"{_report(5)}\n\nWhere is the treasure buried?"},
                {"role": "user", "content": tail}]
    out, stats = _bm25(0.1).compress_messages(messages)
    assert stats.query == "Where is the treasure buried?"
    assert out[0]["content"].endswith("\n\nWhere is the treasure buried?") and FACT in out[0]["content"]
    assert out[1]["content"] == tail


def test_min_tokens_counts_a_message_split_in_text_parts_as_a_whole() -> None:
    parts = [_text(20, s) for s in (1, 2, 3)]  # about 270 tokens each, 800 together
    mc = MessageCompressor(Compressor(compressor="truncate", keep_rate=0.3), MessagePolicy(min_tokens=512))
    assert all(mc.counter.count(p) < 512 for p in parts)
    tool = {"role": "tool", "tool_call_id": "t", "content": [{"type": "text", "text": p} for p in parts]}
    _, stats = mc.compress_messages([tool, {"role": "user", "content": "Which harbor?"}])
    assert stats.parts == 3 and stats.compressed_tokens < 0.5 * stats.original_tokens
    # separate messages of the same size stay separate
    single = [{"role": "tool", "tool_call_id": f"t{i}", "content": p} for i, p in enumerate(parts)]
    _, stats = mc.compress_messages([*single, {"role": "user", "content": "Which harbor?"}])
    assert stats.parts == 0 and stats.passthrough


def test_windows_line_breaks_find_the_same_question() -> None:
    from pocsdk.llm.question import find_question

    for text in ("Doc one.\n\nDoc two.\n\nWhere is it?\nAnswer in one word.",
                 "Where is it? Use the report.\n\nDoc one.\n\nDoc two.",
                 "Use the context.\nQuestion: When did it open?\nContext: Doc one.\n\nDoc two.\nAnswer:"):
        lf, crlf = find_question(text), find_question(text.replace("\n", "\r\n"))
        windows = text.replace("\n", "\r\n")
        assert [windows[a:b] for a, b in crlf.keep] == [text[a:b].replace("\n", "\r\n") for a, b in lf.keep]
        assert [windows[a:b] for a, b in crlf.query_spans] == [
            text[a:b].replace("\n", "\r\n") for a, b in lf.query_spans]
    prompt = f"{_report(7)}\n\nWhere is the treasure buried?\nAnswer in one word.".replace("\n", "\r\n")
    out, stats = _bm25(0.1).compress_messages([{"role": "user", "content": prompt}])
    assert stats.query == "Where is the treasure buried?\r\nAnswer in one word."
    assert out[0]["content"].endswith("\r\n\r\nWhere is the treasure buried?\r\nAnswer in one word.")
    assert FACT in out[0]["content"]


def test_labels_inside_closed_fences_are_skipped_like_a_plain_scan() -> None:
    """The labels kept are those kept without fences (backticks swapped for quotes of the same length),
    less those inside a closed fence by a plain scan (fences before the line odd, one after it)."""
    from pocsdk.llm.question import _labels, find_question

    rng = random.Random(0)
    pieces = ["Q: what is it?\n", "Question: why?\n", "A: yes\n", "```\n", "````", "code\n", "Question:\n",
              "  what now?\n", "text ", "`", "\n", "Q:what?"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        end = rng.randint(0, len(text))
        unfenced = _labels(text.replace("`", "'"), end)
        expected = [k for k in unfenced
                    if not (text.count("```", 0, k[0]) % 2 and "```" in text[k[0]:end])]
        assert _labels(text, end) == expected, (text, end)
    fenced = "Context.\n```\nQ: what does this print?\n```\nQ: which line prints?"
    assert [fenced[a:b].strip() for a, b in find_question(fenced).query_spans] == ["which line prints?"]
    assert len(_labels(fenced, len(fenced))) == 1


def test_a_long_faq_is_read_in_linear_time() -> None:
    """A pasted FAQ ("Q: ...?\\nA: ...") rescanned the text for fences at every label: 16,000 pairs took
    seconds per request. Time grows with the text (16x the text: well under 64x the time), not its square."""
    import time

    from pocsdk.llm.question import find_question

    def best(n: int) -> float:
        faq = "".join(f"Q: what is item {i}?\nA: it is item {i}.\n" for i in range(n)) + "Q: which one is best?"
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            q = find_question(faq)
            times.append(time.perf_counter() - t0)
            assert [faq[a:b].strip() for a, b in q.query_spans] == ["which one is best?"]
        return min(times)

    assert best(16_000) < 64 * best(1_000)


def test_the_prompt_cache_holds_only_changed_texts_within_a_character_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache was bounded by entries only and kept every message's text: 256 prompts of 16 MiB could hold
    gigabytes. It keeps the texts compression changed, within ``CACHE_CHARS`` characters."""
    from pocsdk.llm import messages as module

    mc = MessageCompressor(Compressor(compressor="extractive", keep_rate=0.3), MessagePolicy(min_tokens=100),
                           cache_size=256)
    history = {"role": "assistant", "content": _text(400, 99)}  # long, never compressed (assistant)
    prompts = [[history, {"role": "user", "content": f"{_report(k)}\n\nWhere is the treasure buried?"}]
               for k in range(12)]
    first = [mc.compress_messages(prompts[0])]
    assert 0 < mc._cache_chars < len(prompts[0][1]["content"])  # the compressed text only
    monkeypatch.setattr(module, "CACHE_CHARS", 5 * mc._cache_chars)  # room for about 5 such prompts
    first += [mc.compress_messages(p) for p in prompts[1:]]
    held = sum(len(t) for changed, _ in mc._cache.values() for t in changed.values())
    assert mc._cache_chars == held <= module.CACHE_CHARS
    assert 1 <= len(mc._cache) < len(prompts)  # the oldest went to stay under the limit
    again, stats = mc.compress_messages(prompts[-1])
    assert stats.cached and again == first[-1][0]
    assert again[0]["content"] == history["content"]  # the untouched history comes from the request itself
    passthrough = [{"role": "user", "content": "Short question?"}]
    mc.compress_messages(passthrough)
    out, stats = mc.compress_messages(passthrough)
    assert stats.cached and out == passthrough


def test_a_stray_closing_tag_never_reaches_the_model() -> None:
    """Without an opening tag, automatic mode sent "</compress>" on, though compression off removed it."""
    mc = _bm25(0.3)
    prompt = f"{_report(5)}\n\nRules.</compress>\n\nWhere is the treasure buried?"
    out, stats = mc.compress_messages([{"role": "user", "content": prompt}])
    assert "</compress>" not in out[0]["content"] and stats.compressed_tokens < stats.original_tokens
    short = [{"role": "user", "content": "Rules.</compress> Which one?"}]
    out, _ = mc.compress_messages(short)
    assert out[0]["content"] == "Rules. Which one?"
