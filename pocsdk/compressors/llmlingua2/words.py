"""Token probabilities merged into words, vectorised: per-vocabulary lookup tables tell which token
starts a word (BERT: not ``##``; XLM-R: ``▁``, punctuation, force tokens), then numpy over the
concatenated token stream of every window."""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pocsdk.compressors.llmlingua2.shared import _space_mask
from pocsdk.compressors.llmlingua2.windows import _TokenStream
from pocsdk.text.segment import grapheme_cut
from pocsdk.text.tokens import NO_SPACE_CHAR


@dataclass
class _VocabTable:
    starts: np.ndarray  # token begins a word (llmlingua's is_begin_of_new_word)
    forced: np.ndarray  # token's pure form is a force token
    digit: np.ndarray
    special: np.ndarray
    is_end: np.ndarray  # token is a chunk end token
    raw: list[str]
    pure: list[str]


_TABLES: dict[tuple[Any, ...], _VocabTable] = {}


def _vocab_table(tok: Any, family: str, force: Sequence[str], ends: Sequence[str]) -> _VocabTable:
    """Per-vocabulary lookup tables, so merging words is array indexing (cached per tokenizer)."""
    key = (id(tok), len(tok), family, tuple(force), tuple(ends))
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    vocab = [t if t is not None else "" for t in tok.convert_ids_to_tokens(list(range(len(tok))))]
    fset, eset = set(force), set(ends)
    punct = string.punctuation  # llmlingua tests ``token in string.punctuation``: a substring test ("()" too)
    if family == "bert":
        pure = [t.lstrip("#") for t in vocab]  # llmlingua's lstrip("##") strips the same characters
        starts = [p in fset or not t.startswith("##") for t, p in zip(vocab, pure, strict=True)]
    else:
        pure = [t.lstrip("▁") for t in vocab]
        starts = [t in punct or t in fset or t.startswith("▁") for t in vocab]
    specials = {tok.bos_token, tok.eos_token, tok.unk_token, tok.sep_token, tok.pad_token, tok.cls_token,
                tok.mask_token} - {None}
    digit = re.compile(r"\d")
    table = _VocabTable(
        starts=np.array(starts, dtype=bool),
        forced=np.array([p in fset for p in pure], dtype=bool),
        digit=np.array([bool(digit.search(t)) for t in vocab], dtype=bool),
        special=np.array([t in specials for t in vocab], dtype=bool),
        is_end=np.array([t in eset for t in vocab], dtype=bool),
        raw=vocab,
        pure=pure,
    )
    _TABLES[key] = table
    return table


@dataclass
class _Words:
    doc: np.ndarray
    chunk: np.ndarray
    start: np.ndarray
    end: np.ndarray
    prob: np.ndarray  # with force tokens (and digits) at 1.0, as llmlingua thresholds
    prob_raw: np.ndarray  # the model's own word probability
    forced: np.ndarray
    text: list[str]  # llmlingua's word strings (compatible mode only)


LONG_WORD_CHARS = 64
"""Words longer than this (a long URL or base64 run, a run of CJK that XLM-R reads as one word; a 40-character
SHA-1 stays whole) are cut into pieces
of this many characters, each with the word's probability: one long unit that does not fit the budget
would otherwise stop the threshold, keeping far less than asked (or nothing)."""


LONG_CJK_WORD_CHARS = 16
"""The same for words in scripts without spaces (Chinese, Japanese, Thai, Korean): a character there costs
one to three tokens, so a 64-character piece could outgrow a whole budget."""
_NO_SPACE = NO_SPACE_CHAR


def split_long_words(w: _Words, max_chars: int = LONG_WORD_CHARS, texts: list[str] | None = None,
                     max_cjk_chars: int = LONG_CJK_WORD_CHARS) -> _Words:
    """``w`` with every word longer than ``max_chars`` characters cut into consecutive pieces (longer than
    ``max_cjk_chars`` when ``texts``, the documents' texts, show it holds a character of a script without
    spaces)."""
    length = w.end - w.start
    limit = np.full(len(length), max_chars, dtype=np.int64)
    if texts is not None:
        for i in np.flatnonzero(length > max_cjk_chars).tolist():
            if _NO_SPACE.search(texts[int(w.doc[i])], int(w.start[i]), int(w.end[i])):
                limit[i] = max_cjk_chars
    pieces = np.maximum(1, -(-length // limit))  # ceil, at least one piece (empty words stay one)
    if not (pieces > 1).any():
        return w
    if texts is not None:  # cut between user-perceived characters (a Thai tone mark stays with its letter)
        return _split_at_graphemes(w, limit, texts)
    rep = np.repeat(np.arange(len(length)), pieces)
    k = np.arange(len(rep)) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # piece index within its word
    start = w.start[rep] + k * limit[rep]
    end = np.minimum(start + limit[rep], w.end[rep])
    text = [w.text[i] for i in rep.tolist()] if w.text else []
    return _Words(w.doc[rep], w.chunk[rep], start, end, w.prob[rep], w.prob_raw[rep], w.forced[rep], text)


def _split_at_graphemes(w: _Words, limit: np.ndarray, texts: list[str]) -> _Words:
    long_words = np.flatnonzero(w.end - w.start > limit)
    cuts: dict[int, list[tuple[int, int]]] = {}
    for i in long_words.tolist():  # few: a Python walk over their pieces
        text, a, b, cap = texts[int(w.doc[i])], int(w.start[i]), int(w.end[i]), int(limit[i])
        out: list[tuple[int, int]] = []
        while b - a > cap:
            cut = grapheme_cut(text, a + cap, a + 1)
            out.append((a, cut))
            a = cut
        out.append((a, b))
        cuts[i] = out
    counts = np.ones(len(w.start), dtype=np.int64)
    counts[long_words] = [len(cuts[i]) for i in long_words.tolist()]
    rep = np.repeat(np.arange(len(counts)), counts)
    start, end = w.start[rep].copy(), w.end[rep].copy()
    first = np.cumsum(counts) - counts
    for i, pieces in cuts.items():
        at = int(first[i])
        start[at:at + len(pieces)] = [a for a, _ in pieces]
        end[at:at + len(pieces)] = [b for _, b in pieces]
    text_list = [w.text[i] for i in rep.tolist()] if w.text else []
    return _Words(w.doc[rep], w.chunk[rep], start, end, w.prob[rep], w.prob_raw[rep], w.forced[rep], text_list)


def _words(streams: list[_TokenStream], chunks: list[tuple[int, int, int]], probs: list[np.ndarray],
           table: _VocabTable, token_to_word: str, force_reserve_digit: bool, compat: bool) -> _Words:
    """Merge token probabilities into words: pure numpy over the concatenated token stream."""
    if not chunks:
        z = np.zeros(0, dtype=np.int64)
        return _Words(z, z, z, z, z.astype(float), z.astype(float), z.astype(bool), [])
    ids = np.concatenate([s.ids for s in streams])
    start = np.concatenate([s.start for s in streams])
    end = np.concatenate([s.end for s in streams])
    doc = np.concatenate([np.full(len(s.ids), s.doc, dtype=np.int64) for s in streams])
    prob = np.concatenate(probs)
    base = np.cumsum([0] + [len(s.ids) for s in streams])
    chunk = np.full(len(ids), -1, dtype=np.int64)
    first = np.zeros(len(ids), dtype=bool)
    for ci, (si, a, b) in enumerate(chunks):
        chunk[base[si] + a: base[si] + b] = ci
    valid = ~np.isnan(prob) & (chunk >= 0)
    if compat:
        valid &= ~table.special[ids]
    # the first valid token of every window starts a word
    vidx = np.flatnonzero(valid)
    vchunk = chunk[vidx]
    if len(vidx):  # (none when every token is unknown, e.g. emoji-only text in compatible mode)
        first[vidx[np.r_[True, vchunk[1:] != vchunk[:-1]]]] = True
    ids, start, end, doc, prob, chunk, first = (a[vidx] for a in (ids, start, end, doc, prob, chunk, first))
    starts = table.starts[ids] | first
    forced_tok = table.forced[ids] & starts
    p_forced = np.where(forced_tok, 1.0, prob)
    if force_reserve_digit:
        p_forced = np.where(table.digit[ids], 1.0, p_forced)
    wfirst = np.flatnonzero(starts)
    wid = np.cumsum(starts) - 1
    n_tok = np.bincount(wid)
    w_prob: np.ndarray = p_forced[wfirst]
    w_raw: np.ndarray = prob[wfirst]
    if token_to_word == "mean":
        w_prob = np.bincount(wid, weights=p_forced) / n_tok
        w_raw = np.bincount(wid, weights=prob) / n_tok
    w_start = np.minimum.reduceat(start, wfirst) if len(wfirst) else start[:0]
    w_end = np.maximum.reduceat(end, wfirst) if len(wfirst) else end[:0]
    w_start, w_end = _trim(streams, doc[wfirst], w_start, w_end)
    forced_w = forced_tok[wfirst]
    if force_reserve_digit and len(wfirst):
        forced_w = forced_w | np.logical_or.reduceat(table.digit[ids], wfirst)
    text: list[str] = []
    if compat:
        raw, pure = table.raw, table.pure
        pieces = [raw[t] if s else pure[t] for t, s in zip(ids.tolist(), starts.tolist(), strict=True)]
        bounds = [*wfirst.tolist(), len(ids)]
        text = ["".join(pieces[a:b]) for a, b in itertools.pairwise(bounds)]
    return _Words(doc[wfirst], chunk[wfirst], w_start, w_end, w_prob, w_raw, forced_w, text)


def _trim(streams: list[_TokenStream], doc: np.ndarray, start: np.ndarray, end: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Word spans without surrounding whitespace; whitespace-only words become empty.

    Only words whose first or last character is whitespace (XLM-R's lone ``▁`` pieces) are
    walked in Python; the test is vectorised over a per-character whitespace mask."""
    start, end = start.copy(), end.copy()
    for s in streams:
        sel = np.flatnonzero((doc == s.doc) & (end > start))
        if not len(sel) or not s.text:
            continue
        space = _space_mask(s.text)
        suspect = sel[space[start[sel]] | space[end[sel] - 1]]
        for i in suspect.tolist():
            a, b = int(start[i]), int(end[i])
            while a < b and space[a]:
                a += 1
            while b > a and space[b - 1]:
                b -= 1
            start[i], end[i] = a, b
    return start, end
