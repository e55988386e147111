"""The public facade: typed errors for bad input, sync/async twins, batches, target tokens."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest

from pocsdk.compressor import DEFAULT_COMPRESSOR, Compressor
from pocsdk.errors import (
    ConfigError,
    EmptyContextError,
    EncodingError,
    InputTooLargeError,
    InvalidInputError,
    InvalidRateError,
    InvalidTypeError,
    PocError,
    UnknownCompressorError,
)
from pocsdk.types import Document, decode_text, normalize_context

TEXT = " ".join(
    f"Paragraph sentence {i} describes the harbour, the railway and the old castle in some detail." for i in range(40)
)


@pytest.mark.parametrize(
    ("context", "error"),
    [
        ("", EmptyContextError),
        ("   \n\t \r\n", EmptyContextError),
        ([], EmptyContextError),
        (["  ", "\n"], EmptyContextError),
        ([{"id": "a", "text": " "}], EmptyContextError),
        (5, InvalidTypeError),
        (None, InvalidTypeError),
        (3.5, InvalidTypeError),
        ({"text": "a dict is not a list"}, InvalidTypeError),
        ([{"id": "x"}], InvalidTypeError),
        ([{"text": None}], InvalidTypeError),
        ([1, 2, 3], InvalidTypeError),
        ([None], InvalidTypeError),
        ([{"text": "ok", "id": None}], InvalidTypeError),
        ([{"text": "ok", "id": 1.5}], InvalidTypeError),
        ([{"text": "ok", "metadata": "not a mapping"}], InvalidTypeError),
        (["same id", {"id": "0", "text": "clash"}], InvalidTypeError),
        (b"bytes are not text", InvalidTypeError),
        (b"\xff\xfe invalid utf-8", InvalidTypeError),
        ([b"bytes document"], InvalidTypeError),
        ([{"text": b"bytes text"}], InvalidTypeError),
        ({"a", "set"}, InvalidTypeError),
    ],
)
def test_bad_context_gives_a_typed_error(context: object, error: type[PocError]) -> None:
    with pytest.raises(error) as info:
        Compressor(keep_rate=0.5).compress(context)  # type: ignore[arg-type]
    assert isinstance(info.value, PocError)
    assert info.value.to_dict()["type"] == error.__name__


def test_bytes_error_says_decode_first() -> None:
    with pytest.raises(InvalidTypeError, match="decode"):
        Compressor(keep_rate=0.5).compress(b"some text")  # type: ignore[arg-type]


def test_decode_text_gives_encoding_error() -> None:
    assert decode_text("héllo".encode()) == "héllo"
    assert decode_text(b"\xef\xbb\xbfwith bom") == "with bom"
    with pytest.raises(EncodingError, match="byte 3") as info:
        decode_text(b"abc\xff\xfe", source="notes.txt")
    assert isinstance(info.value, InvalidInputError) and "notes.txt" in str(info.value)


@pytest.mark.parametrize("rate", [0, 0.0, -0.1, 1.01, 2, float("nan"), float("inf"), -float("inf")])
def test_keep_rate_out_of_range(rate: float) -> None:
    with pytest.raises(InvalidRateError):
        Compressor(keep_rate=rate)
    with pytest.raises(InvalidRateError):
        Compressor(keep_rate=0.5).compress(TEXT, keep_rate=rate)


@pytest.mark.parametrize("rate", [True, False, "0.5", [0.5], object()])
def test_keep_rate_wrong_type(rate: object) -> None:
    with pytest.raises(InvalidTypeError):
        Compressor(keep_rate=rate)  # type: ignore[arg-type]


def test_numpy_numbers_are_accepted() -> None:
    res = Compressor(keep_rate=np.float32(0.5)).compress(TEXT)
    assert abs(res.keep_rate - 0.5) < 0.05
    with pytest.raises(InvalidTypeError):
        Compressor(keep_rate=np.bool_(True))  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [0, -5, 2.5, float("nan"), float("inf")])
def test_bad_target_tokens(target: float) -> None:
    with pytest.raises(InvalidRateError):
        Compressor(target_tokens=target)  # type: ignore[arg-type]
    with pytest.raises(InvalidRateError):
        Compressor(keep_rate=0.5).compress(TEXT, target_tokens=target)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        Compressor(target_tokens=True)


def test_target_tokens_mode() -> None:
    res = Compressor(target_tokens=200).compress(TEXT)
    assert abs(res.compressed_tokens - 200) <= 20
    res2 = Compressor(keep_rate=0.9).compress(TEXT, target_tokens=10_000_000)
    assert res2.text == TEXT


@pytest.mark.parametrize("tokenizer", ["heuristic", "tiktoken:cl100k_base"])
@pytest.mark.parametrize("compressor", ["skim", "extractive", "truncate"])
def test_target_tokens_is_a_limit(tokenizer: str, compressor: str) -> None:
    """A budget is a limit: the output, with the separators between documents, fits it, though a rate
    leaves out the whitespace between units, the top-up rounds prefixes up, and separators cost tokens."""
    import random

    from pocsdk.text.tokens import get_token_counter

    if tokenizer.startswith("tiktoken"):
        pytest.importorskip("tiktoken")
    rng = random.Random(1)
    rows = ["id,name,city,amount,date"] + [
        f"{i},{rng.choice(['Ann', 'Bo', 'Cy'])},{rng.choice(['Oslo', 'Lima'])},{rng.randint(1, 9999)}.{i % 100:02d},"
        f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}" for i in range(60)]
    docs = [" ".join(TEXT.split()[i * 40:(i + 1) * 40]) for i in range(12)]
    counter = get_token_counter(tokenizer)
    comp = Compressor(compressor=compressor, tokenizer=tokenizer)
    over = []
    for context in ("\n".join(rows) + "\n", docs, TEXT):
        total = comp.compress(context, keep_rate=1.0).original_tokens
        for target in range(40, total // 2, max(1, total // 40)):
            res = comp.compress(context, "Oslo amount", target_tokens=target)
            used = counter.count(res.text)
            if used > target + 1:  # one token of slack: a join can merge two tokens' boundary differently
                over.append((target, used))
            assert res.requested_keep_rate == pytest.approx(target / total)
        if isinstance(context, list):  # a target of all the documents' tokens leaves no room for separators
            res = comp.compress(context, "Oslo amount", target_tokens=total)
            assert counter.count(res.text) <= total + 1
    assert not over, over[:5]


@pytest.mark.slow
def test_target_tokens_counts_separators_as_the_tokenizer_joins_them() -> None:
    """A BPE tokenizer counts "\n\n" alone as one token but more between two texts: the limit is
    checked on the joined text."""
    from test_tokens import SMOLLM_GGUF, smollm_dir

    from pocsdk.text.tokens import get_token_counter

    spec = f"hf:{smollm_dir()}::{SMOLLM_GGUF}"
    counter = get_token_counter(spec)
    docs = [" ".join(TEXT.split()[i * 30:(i + 1) * 30]) for i in range(10)]
    comp = Compressor(compressor="extractive", tokenizer=spec)
    total = comp.compress(docs, keep_rate=1.0).original_tokens
    over = [(t, n) for t in range(60, total, 37)
            if (n := counter.count(comp.compress(docs, "castle", target_tokens=t).text)) > t]
    assert not over, over


def test_mode_conflicts_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        Compressor(keep_rate=0.5, target_tokens=10)
    with pytest.raises(ConfigError):
        Compressor().compress(TEXT)
    with pytest.raises(ConfigError):
        Compressor(keep_rate=0.5).compress(TEXT, keep_rate=0.3, target_tokens=5)
    with pytest.raises(UnknownCompressorError):
        Compressor(keep_rate=0.5, compressor="nope")
    with pytest.raises(ConfigError):
        Compressor(keep_rate=0.5, bogus_option=1)


def test_query_must_be_a_string() -> None:
    with pytest.raises(InvalidTypeError):
        Compressor(keep_rate=0.5).compress(TEXT, query=42)  # type: ignore[arg-type]


def test_input_size_limit() -> None:
    with pytest.raises(InputTooLargeError):
        Compressor(keep_rate=0.5, max_input_chars=1000).compress(TEXT)
    with pytest.raises(InputTooLargeError):
        Compressor(keep_rate=0.5, max_input_chars=1000).compress([TEXT[:600], TEXT[600:1200]])
    assert Compressor(keep_rate=0.5, max_input_chars=len(TEXT)).compress(TEXT).compressed_tokens > 0
    for bad in (0, -1, "1000", 10.5):
        with pytest.raises(ConfigError):
            Compressor(keep_rate=0.5, max_input_chars=bad)


def test_unknown_tokenizer_is_typed() -> None:
    with pytest.raises(ConfigError):
        Compressor(keep_rate=0.5, tokenizer="nonsense").compress(TEXT)


def test_result_fields() -> None:
    res = Compressor(keep_rate=0.25).compress(TEXT, "castle")
    assert res.compressor == DEFAULT_COMPRESSOR == "skim" and res.tokenizer == "heuristic"
    assert res.requested_keep_rate == 0.25
    assert math.isclose(res.compression_factor, 1 / res.keep_rate)
    assert res.original_tokens == sum(d.original_tokens for d in res.documents)
    assert not res.passthrough and res.reason is None
    assert res.timings.total_ms >= res.timings.score_ms >= 0
    assert res.model_dump_json()  # JSON-ready


def test_documents_and_document_objects() -> None:
    docs: list[Any] = [Document(id="x", text=TEXT, metadata={"k": 1}), {"id": 7, "page_content": TEXT}, "plain " + TEXT]
    res = Compressor(keep_rate=0.3).compress(docs)
    assert [d.id for d in res.documents] == ["x", "7", "2"]
    assert res.documents[0].metadata == {"k": 1}
    assert [d.id for d in normalize_context(["a", "b"])] == ["0", "1"]
    # ids from numpy or pandas are integers too; a metadata key that is not a string is a typed error, not
    # a pydantic ValidationError that `except PocError` misses
    assert [d.id for d in normalize_context([{"id": np.int64(3), "text": "a"}])] == ["3"]
    for key in (1, None):
        with pytest.raises(InvalidTypeError, match=f"metadata key that is not a string: {key}"):
            Compressor(keep_rate=0.3).compress([{"text": TEXT, "metadata": {key: "x"}}])


async def test_acompress_matches_compress() -> None:
    comp = Compressor(keep_rate=0.3)
    sync = comp.compress(TEXT, "railway")
    res = await comp.acompress(TEXT, "railway")
    assert res.text == sync.text
    with pytest.raises(EmptyContextError):
        await comp.acompress("   ")
    batch = await comp.acompress_many([TEXT, (TEXT, "castle")])
    assert [r.text for r in batch] == [comp.compress(TEXT).text, comp.compress(TEXT, "castle").text]


def test_compress_many_shapes() -> None:
    comp = Compressor(keep_rate=0.4)
    out = comp.compress_many([TEXT, (TEXT, "harbour"), {"context": [TEXT], "query": "castle"}], keep_rate=0.2)
    assert len(out) == 3
    assert all(abs(r.keep_rate - 0.2) <= 0.02 for r in out)
    assert out[1].text == comp.compress(TEXT, "harbour", keep_rate=0.2).text
    assert comp.compress_many([]) == []
    assert len(comp.compress_many(iter([TEXT]))) == 1


@pytest.mark.parametrize("items", ["a string", b"bytes", 5, None, {"context": TEXT}])
def test_compress_many_rejects_non_batches(items: object) -> None:
    with pytest.raises(InvalidTypeError):
        Compressor(keep_rate=0.5).compress_many(items)  # type: ignore[arg-type]


def test_compress_many_item_errors_are_typed() -> None:
    with pytest.raises(InvalidTypeError):
        Compressor(keep_rate=0.5).compress_many([{"query": "no context"}])
    with pytest.raises(InvalidTypeError):
        Compressor(keep_rate=0.5).compress_many([42])  # type: ignore[list-item]


def test_compress_many_refuses_mapping_keys_it_would_drop() -> None:
    """{"context": t, "keep_rate": 0.9} ran at the facade's rate, and a "qurey" typo ran without a query."""
    text = " ".join(f"Sentence {i} about the lighthouse keeper of Karsby and tower {i}." for i in range(40))
    c = Compressor(keep_rate=0.3)
    for extra in ({"keep_rate": 0.9}, {"qurey": "lighthouse"}, {"floor": 0.95}):
        with pytest.raises(InvalidTypeError, match="'context' and 'query' only"):
            c.compress_many([{"context": text, **extra}])
    assert len(c.compress_many([{"context": text, "query": "lighthouse"}])) == 1


def test_acompress_many_stops_the_rest_when_one_input_fails() -> None:
    """compress_many stops at the first bad input; its async twin cancels the inputs not yet started
    instead of compressing all of them in the background and throwing the results away."""
    comp = Compressor(keep_rate=0.5)
    calls: list[int] = []
    score = comp.compressor.score

    def counting(context: Any, query: Any = None) -> Any:
        calls.append(1)
        return score(context, query)

    comp.compressor.score = counting  # type: ignore[method-assign]
    items: list[Any] = [{"context": 42}] + [TEXT] * 200

    async def in_a_long_lived_loop() -> int:  # (asyncio.run would cancel the leftovers when it ends)
        with pytest.raises(InvalidTypeError):
            await comp.acompress_many(items)
        await asyncio.sleep(0.5)
        return len(calls)

    # the thread pool had started some (more on a busy machine); the rest never ran
    assert asyncio.run(in_a_long_lived_loop()) < 100
    with pytest.raises(InvalidTypeError):
        comp.compress_many(items)


@pytest.mark.parametrize("item", [("doc one", "doc two", "doc three"), ("doc one",), ([TEXT], ["not a query"])])
def test_tuples_are_only_context_query_pairs(item: tuple[Any, ...]) -> None:
    """Two documents in a tuple would read as a document and a query; every tuple is a pair, so
    other tuples are refused (a list of documents is the way to pass several)."""
    comp = Compressor(keep_rate=0.5)
    with pytest.raises(InvalidTypeError, match="pass a context of several documents as a list"):
        comp.compress_many([item])
    with pytest.raises(InvalidTypeError, match="pair"):
        asyncio.run(comp.acompress_many([item]))
    assert comp.compress_many([["doc one", "doc two", "doc three"]])[0].original_tokens > 0


def test_numpy_integers_are_token_targets() -> None:
    import numpy as np

    assert Compressor(target_tokens=np.int64(300)).target_tokens == 300
    with pytest.raises(InvalidRateError):
        Compressor(target_tokens=np.float64(3.5))


def test_confidence_is_checked_in_every_mode() -> None:
    with pytest.raises(InvalidRateError, match="confidence"):
        Compressor(keep_rate=0.5).compress("A sentence about rivers. " * 80, "rivers?", confidence=5.0)


def test_result_with_nothing_kept_survives_json() -> None:
    from pocsdk.types import CompressionResult

    res = Compressor(keep_rate=0.5).compress("A sentence about rivers. " * 80, "rivers?")
    empty = res.model_copy(update={"compression_factor": float("inf")})
    back = CompressionResult.model_validate_json(empty.model_dump_json())  # JSON writes inf as null
    assert back.compression_factor == float("inf")


def test_threads_sharing_a_new_compressor_load_the_predictor_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from pocsdk.prediction.floor import FloorPolicy

    real = FloorPolicy.for_compressor.__func__  # type: ignore[attr-defined]
    calls: list[int] = []

    def counting(cls: type, *args: object, **kwargs: object) -> FloorPolicy:
        calls.append(1)
        return real(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(FloorPolicy, "for_compressor", classmethod(counting))
    comp = Compressor(floor=0.9)
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        comp.compress("A sentence about rivers and their banks. " * 60, "rivers?")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
