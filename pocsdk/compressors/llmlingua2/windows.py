"""Token streams and windows: one tokenizer pass per document, cut into model windows as llmlingua
cuts them, and llmlingua's ``[NEWi]`` swaps for force strings that are not one model token."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pocsdk.compressors._torch import encode_with_offsets
from pocsdk.errors import ConfigError


@dataclass
class _TokenStream:
    doc: int
    text: str
    ids: np.ndarray  # int64
    start: np.ndarray  # int64 char offsets
    end: np.ndarray
    token_map: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, tok: Any, text: str, doc: int, token_map: dict[str, str] | None = None) -> _TokenStream:
        """Tokens of ``text``; with a token map, force strings are swapped for ``[NEWi]`` first
        (as llmlingua does) and offsets are mapped back to ``text``."""
        ids, start, end = _encode(tok, text, token_map or {})
        return cls(doc, text, ids, start, end, token_map or {})

    def newline_after(self) -> np.ndarray:
        """Tokens followed by a line break before the next token (vectorised over newline positions)."""
        n = len(self.ids)
        if n == 0 or "\n" not in self.text:
            return np.zeros(n, dtype=bool)
        nl = np.array([m.start() for m in re.finditer("\n", self.text)], dtype=np.int64)
        nxt = np.r_[self.start[1:], len(self.text)]
        return np.searchsorted(nl, self.end) < np.searchsorted(nl, np.maximum(nxt, self.end))


def _retokenize_edges(s: _TokenStream, cuts: list[tuple[int, int]], tok: Any
                      ) -> tuple[_TokenStream, list[tuple[int, int]]]:
    """Window tokens as llmlingua feeds them: it detokenizes each window and tokenizes that text
    again, which changes the first and last whitespace-delimited pieces when a window starts or
    ends inside one (``self.|doc`` in code, ``3.|5``): XLM-R then starts with ``▁doc``, BERT
    with ``doc`` instead of ``##doc``. Those two pieces are re-encoded on their own; the rest
    of each window is unchanged by the round trip."""
    gap = np.r_[True, s.start[1:] > s.end[:-1]]  # token preceded by whitespace (or first)
    ids: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    out: list[tuple[int, int]] = []

    def add(i: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        ids.append(i)
        starts.append(a)
        ends.append(b)

    def encode(x: int, y: int) -> None:
        lo, hi = int(s.start[x]), int(s.end[y - 1])
        got, a, b = _encode(tok, s.text[lo:hi], s.token_map)
        add(got, a + lo, b + lo)

    for a, b in cuts:
        n0 = sum(len(i) for i in ids)
        inner = np.flatnonzero(gap[a + 1: b]) + a + 1
        if not len(inner):
            encode(a, b)
        else:
            first_end, last_start = int(inner[0]), int(inner[-1])
            encode(a, first_end)
            if last_start > first_end:
                add(s.ids[first_end:last_start], s.start[first_end:last_start], s.end[first_end:last_start])
            encode(last_start, b)
        out.append((n0, sum(len(i) for i in ids)))

    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)

    return _TokenStream(s.doc, s.text, cat(ids), cat(starts), cat(ends), s.token_map), out


def _encode(tok: Any, text: str, token_map: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids and offsets into ``text``; force strings swapped for ``[NEWi]`` first when mapped."""
    src, new_at, orig_at = _apply_token_map(text, token_map)
    ids, offsets = encode_with_offsets(tok, src)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    start, end = off[:, 0].copy(), off[:, 1].copy()
    if len(new_at):
        start, end = _map_back(start, end, new_at, orig_at)
    return np.asarray(ids, dtype=np.int64), start, end


def cut_windows(s: _TokenStream, is_end: np.ndarray, starts: np.ndarray, max_seq_len: int, compatible: bool
                ) -> list[tuple[int, int]]:
    """Token windows [a, b) of one stream as llmlingua cuts them: at most ``max_seq_len - 2`` tokens,
    ending after the last end token (``is_end``, per vocabulary id) that fits.

    ``compatible``: llmlingua 0.2.2's own loop, off by one (a window can hold one token more).
    Otherwise a token followed by a line break also ends a window, and a window without an end
    token ends before the last word start (``starts``, per vocabulary id) that fits."""
    n = len(s.ids)
    max_len = max_seq_len - 2
    end = is_end[s.ids]
    out: list[tuple[int, int]] = []
    st = 0
    if compatible:
        while st < n:
            if st + max_len > n - 1:
                out.append((st, n))
                break
            ed = st + max_len
            hits = np.flatnonzero(end[st + 1: ed + 1])
            if len(hits):
                ed = st + 1 + int(hits[-1])
            out.append((st, ed + 1))
            st = ed + 1
        return out
    end = end | s.newline_after()
    word_start = starts[s.ids]
    while st < n:
        if n - st <= max_len:
            out.append((st, n))
            break
        last = st + max_len  # exclusive bound of the window
        hits = np.flatnonzero(end[st:last])
        if len(hits):
            cut = st + int(hits[-1]) + 1
        else:
            word_starts = np.flatnonzero(word_start[st + 1: last + 1])
            cut = st + 1 + int(word_starts[-1]) if len(word_starts) else last
        out.append((st, cut))
        st = cut
    return out

NEW_TOKENS = tuple(f"[NEW{i}]" for i in range(100))


def _token_map(tok: Any, force: Sequence[str]) -> dict[str, str]:
    """llmlingua's map of force strings that are not one model token to ``[NEWi]``."""
    if len(force) > len(NEW_TOKENS):
        raise ConfigError(f"at most {len(NEW_TOKENS)} force tokens in llmlingua_compatible mode")
    return {t: NEW_TOKENS[i] for i, t in enumerate(force) if len(tok.tokenize(t)) != 1}


def _replace_added(word: str, token_map: dict[str, str]) -> str:
    for ori, new in token_map.items():
        word = word.replace(new, ori)
    return word


def _apply_token_map(text: str, token_map: dict[str, str]) -> tuple[str, np.ndarray, np.ndarray]:
    """``text`` with force strings swapped for ``[NEWi]`` in one pass (llmlingua chains
    ``str.replace``; the same unless force strings overlap each other or the ``[NEWi]`` names),
    plus the (start, end) of each swap in the new text and in the original."""
    if not token_map or not any(k in text for k in token_map):
        z = np.zeros((0, 2), dtype=np.int64)
        return text, z, z
    rx = re.compile("|".join(re.escape(k) for k in token_map))
    parts: list[str] = []
    new_at: list[tuple[int, int]] = []
    orig_at: list[tuple[int, int]] = []
    pos = 0
    shift = 0
    for m in rx.finditer(text):
        rep = token_map[m.group(0)]
        parts.append(text[pos:m.start()])
        parts.append(rep)
        a = m.start() + shift
        new_at.append((a, a + len(rep)))
        orig_at.append((m.start(), m.end()))
        shift += len(rep) - (m.end() - m.start())
        pos = m.end()
    parts.append(text[pos:])
    return "".join(parts), np.array(new_at, dtype=np.int64), np.array(orig_at, dtype=np.int64)


def _map_back(start: np.ndarray, end: np.ndarray, new_at: np.ndarray, orig_at: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in the swapped text back to the original: shift by the swaps before; inside a swap,
    its original span."""
    delta = np.cumsum((new_at[:, 1] - new_at[:, 0]) - (orig_at[:, 1] - orig_at[:, 0]))

    def one(x: np.ndarray, is_end: bool) -> np.ndarray:
        k = np.searchsorted(new_at[:, 1], x, side="right")  # swaps that end at or before x
        out = x - np.where(k > 0, delta[np.maximum(k - 1, 0)], 0)
        j = np.searchsorted(new_at[:, 0], x, side="right") - 1  # the swap starting at or before x
        inside = (j >= 0) & (x > new_at[np.maximum(j, 0), 0]) & (x < new_at[np.maximum(j, 0), 1])
        at_start = (j >= 0) & (x == new_at[np.maximum(j, 0), 0])
        out = np.where(at_start, orig_at[np.maximum(j, 0), 0], out)
        return np.where(inside, orig_at[np.maximum(j, 0), 1 if is_end else 0], out)

    return one(start, False), one(end, True)
