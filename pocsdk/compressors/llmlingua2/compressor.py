"""The ``llmlingua2`` compressor: score once (tokens, windows, one batched forward, words), select at
any rate. See the package docstring."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from pocsdk.compressors._torch import Quantize, check_quantize
from pocsdk.compressors.base import (
    DEFAULT_MAX_INPUT_CHARS,
    SOURCE_WHITESPACE,
    Scored,
    Selection,
    Units,
    as_protection,
    budget_for,
    checked_documents,
    early_selection,
    rendered_tokens,
)
from pocsdk.compressors.llmlingua2.model import detect_family, forward_windows, load_classifier
from pocsdk.compressors.llmlingua2.selection import Layout, _compatible_keep, _oai_counts, fit_threshold, fit_to_count
from pocsdk.compressors.llmlingua2.shared import (
    _blank_markers,
    count_words,
    force_spans,
    in_context,
    overlaps,
    score_stats,
)
from pocsdk.compressors.llmlingua2.windows import (
    _replace_added,
    _retokenize_edges,
    _token_map,
    _TokenStream,
    cut_windows,
)
from pocsdk.compressors.llmlingua2.words import _vocab_table, _Words, _words, split_long_words
from pocsdk.errors import ConfigError, InvalidTypeError
from pocsdk.text.protect import Protection, is_instruction, strip_markers
from pocsdk.text.segment import CODE, segment
from pocsdk.text.tokens import HeuristicTokenCounter, TokenCounter, get_token_counter
from pocsdk.types import ContextLike, check_count, check_keep_rate

DEFAULT_MODEL = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
Family = Literal["auto", "bert", "xlm-roberta"]


@dataclass
class _Prepared:
    """One input up to the forward pass: its documents, token streams and windows."""

    docs: list[Any]
    query: str | None
    counter: TokenCounter
    doc_tokens: np.ndarray
    model: Any
    tok: Any
    family: str
    token_map: dict[str, str]
    table: Any
    streams: list[_TokenStream]
    chunks: list[tuple[int, int, int]]
    prepare_ms: float

    @property
    def model_tokens(self) -> int:
        return int(sum(len(s.ids) for s in self.streams))


@dataclass
class LLMLingua2Compressor:
    """Keeps the words an LLMLingua-2 token classifier most wants to keep, within the budget.

    Query-agnostic (the classifier never sees the query). Force tokens and protected spans
    (markers, patterns, instruction sentences) are always kept and spent from the budget
    first; the other words are kept by descending keep-probability while they fit, which is
    a probability threshold weighted by target-tokenizer tokens.

    Differences from llmlingua 0.2.2 in the default mode, each deliberate:

    * one threshold over the whole input, in the target tokenizer's tokens, so the achieved
      rate tracks the requested one (llmlingua thresholds each 512-token window with cl100k);
    * windows hold at most ``max_seq_len - 2`` tokens and never cut a word when no end token
      is found (llmlingua's window can hold one token more and loses its ``[SEP]``); a token
      followed by a line break also ends a window;
    * force tokens that are not one model token (``"\\n"``, ``"New York"``) are matched in
      the text and protected, instead of being swapped for llmlingua's ``[NEWi]`` tokens,
      whose embeddings are random (resized) rows the model never trained on. Line breaks
      are never lost anyway: text joins keep a break wherever dropped text held one;
    * unknown tokens (``[UNK]``) are words like any other, so emoji and rare scripts can be
      kept (llmlingua drops them silently).

    In ``llmlingua_compatible`` mode only the last two remain (use single-token force tokens
    for word-for-word parity); pocsdk protection still applies on top.
    """

    name: ClassVar[str] = "llmlingua2"

    model: str = DEFAULT_MODEL
    """Local directory or hub name of a token-classification checkpoint (offline: local)."""
    family: Family = "auto"
    """Word-merging rule; 'auto' reads the config's model type, then the name, as llmlingua does."""
    device: str = "auto"
    dtype: str = "auto"
    """'auto' (float16 on CUDA, float32 elsewhere), 'float32', 'float16' or 'bfloat16'. bfloat16 on a CPU
    is fast only with native bfloat16 (AVX512-BF16, AMX); without it, several times slower than float32."""
    quantize: Quantize = "none"
    """'int8': torch dynamic int8 quantization of the encoder's linear layers (CPU and float32 only;
    the 2-label output layer stays float32). On a 2-core AVX2 CPU the mBERT-base forward costs about
    1.4-1.5x less CPU time; probabilities move a little, so about 1-2% of keep/drop decisions (those at
    the threshold) differ from float32's (benchmarks/RESULTS.md). 'none': as trained. Parity with
    llmlingua is defined, and tested, in float32."""
    max_seq_len: int = 512
    max_batch_size: int = 50
    token_to_word: Literal["mean", "first"] = "mean"
    force_tokens: Sequence[str] = ("\n", "?")
    force_reserve_digit: bool = False
    chunk_end_tokens: Sequence[str] = (".", "\n")
    llmlingua_compatible: bool = False
    trust_remote_code: bool = False
    tokenizer: str | TokenCounter | None = None
    """Target-model token counter for budgets ('heuristic', 'tiktoken:cl100k_base', 'hf:/path')."""
    protect: Protection = field(default_factory=Protection)
    min_tokens: int = 64
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):  # a pathlib.Path is a local folder like its string
            self.model = os.fspath(self.model)
        if self.family not in ("auto", "bert", "xlm-roberta"):
            raise ConfigError(f"family must be 'auto', 'bert' or 'xlm-roberta', got {self.family!r}")
        if self.token_to_word not in ("mean", "first"):
            raise ConfigError(f"token_to_word must be 'mean' or 'first', got {self.token_to_word!r}")
        if self.max_seq_len < 8 or self.max_batch_size < 1:
            raise ConfigError("max_seq_len must be >= 8 and max_batch_size >= 1")
        self.min_tokens = check_count("min_tokens", self.min_tokens)
        self.max_input_chars = check_count("max_input_chars", self.max_input_chars, minimum=1)
        self.protect = as_protection(self.protect)
        if isinstance(self.force_tokens, str) or isinstance(self.chunk_end_tokens, str):
            raise ConfigError("force_tokens and chunk_end_tokens are lists of strings, not one string")
        self.force_tokens = tuple(self.force_tokens)
        self.chunk_end_tokens = tuple(self.chunk_end_tokens)
        self.quantize = check_quantize(self.quantize)  # type: ignore[assignment]

    # -- phase 1 -------------------------------------------------------------------------
    def score(self, context: ContextLike, query: str | None = None) -> Scored:
        """One batched forward pass over all windows; words, spans and probabilities."""
        return self.score_batch([(context, query)])[0]

    def score_batch(self, items: Sequence[tuple[ContextLike, str | None]]) -> list[Scored]:
        """Score several inputs with one forward pass over all their windows (the service batches requests
        through this). Each result equals its own ``score`` up to float rounding: a window's batch-mates
        change only the padding. One bad input fails the call; score the others one by one."""
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise InvalidTypeError(f"score_batch takes a list of (context, query) pairs, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not (isinstance(item, tuple) and len(item) == 2) or not (item[1] is None or isinstance(item[1], str)):
                raise InvalidTypeError(f"score_batch items[{i}] must be a (context, query) pair with a str or None "
                                       "query")
        preps = [self._prepare(context, query) for context, query in items]
        live = [p for p in preps if not isinstance(p, Scored)]
        if not live:
            return [p for p in preps if isinstance(p, Scored)]
        t0 = time.perf_counter()
        streams = [s for p in live for s in p.streams]
        chunks: list[tuple[int, int, int]] = []
        base = 0
        for lp in live:
            chunks.extend((base + si, a, b) for si, a, b in lp.chunks)
            base += len(lp.streams)
        probs = [np.full(len(s.ids), np.nan) for s in streams]
        model = live[0].model  # every input resolves the same cached model
        forward_windows(model, live[0].tok, streams, chunks, probs, self.max_seq_len, self.max_batch_size)
        forward_ms = (time.perf_counter() - t0) * 1000.0
        total_tokens = max(1, sum(lp.model_tokens for lp in live))
        out: list[Scored] = []
        base = 0
        for p in preps:
            if isinstance(p, Scored):
                out.append(p)
                continue
            n = len(p.streams)
            share = forward_ms * p.model_tokens / total_tokens  # its part of the forward pass, by tokens fed
            out.append(self._finish(p, probs[base: base + n], share))
            base += n
        return out

    def _prepare(self, context: ContextLike, query: str | None) -> _Prepared | Scored:
        """Documents, token streams and windows of one input; a pass-through ``Scored`` when it is too short."""
        t0 = time.perf_counter()
        docs = checked_documents(context, self.max_input_chars)
        counter = get_token_counter(self.tokenizer)
        doc_tokens = np.array(counter.count_many([strip_markers(d.text) for d in docs]), dtype=np.int64)
        if int(doc_tokens.sum()) < self.min_tokens:  # passes through: no need to run the model
            scored = Scored(compressor=self.name, parameters=self.parameters(), documents=docs, query=query,
                            units=Units.empty(), doc_tokens=doc_tokens, tokenizer=counter,
                            passthrough_reason="input_too_short")
            scored.score_ms = (time.perf_counter() - t0) * 1000.0
            return scored
        compat = self.llmlingua_compatible
        model, tok = self._load_compatible() if compat else self._load()
        family = detect_family(self.family, self.model, model, tok)
        _check_window(model, family, self.max_seq_len)
        token_map = _token_map(tok, self.force_tokens) if compat else {}
        ends = [*self.chunk_end_tokens, *(token_map[c] for c in self.chunk_end_tokens if c in token_map)]
        table = _vocab_table(tok, family, (*self.force_tokens, *token_map.values()), ends)

        # tokens of every document, one stream; the classifier never sees <keep> markers
        streams = [_TokenStream.of(tok, _blank_markers(d.text) if self.protect.markers else d.text, di, token_map)
                   for di, d in enumerate(docs)]
        chunks: list[tuple[int, int, int]] = []  # (stream, first token, end token)
        for si, s in enumerate(streams):
            cuts = cut_windows(s, table.is_end, table.starts, self.max_seq_len, compat)
            if compat:
                streams[si], cuts = _retokenize_edges(s, cuts, tok)
            chunks.extend((si, a, b) for a, b in cuts)
        return _Prepared(docs=docs, query=query, counter=counter, doc_tokens=doc_tokens, model=model, tok=tok,
                         family=family, token_map=token_map, table=table, streams=streams, chunks=chunks,
                         prepare_ms=(time.perf_counter() - t0) * 1000.0)

    def _finish(self, p: _Prepared, probs: list[np.ndarray], forward_ms: float) -> Scored:
        """Words, units and score statistics from one input's token probabilities."""
        t0 = time.perf_counter()
        compat = self.llmlingua_compatible
        docs, streams, chunks = p.docs, p.streams, p.chunks
        words = _words(streams, chunks, probs, p.table, self.token_to_word, self.force_reserve_digit, compat)
        if not compat:  # llmlingua keeps a long word whole; pocsdk cuts it so the keep rate is still met
            words = split_long_words(words, texts=[d.text for d in docs])
        units, unit_of_word, forced_units, layout = self._units(docs, words, p.counter)
        scored = Scored(
            compressor=self.name, parameters=self.parameters(), documents=docs, query=p.query, units=units,
            doc_tokens=p.doc_tokens, tokenizer=p.counter,
        )
        token_scores = np.concatenate(probs) if probs else np.zeros(0)
        token_scores = token_scores[~np.isnan(token_scores)]
        scored.extras[SOURCE_WHITESPACE] = True  # words are priced with the whitespace before them
        scored.extras.update(
            score_kind="keep_probability",
            token_scores=token_scores.astype(np.float32),
            word_scores=words.prob_raw.astype(np.float32),
            score_stats=score_stats(token_scores),
            model_tokens=p.model_tokens,
            windows=len(chunks),
            forced=forced_units,
            layout=layout,
            order=np.argsort(-units.relevance, kind="stable"),
        )
        if compat:
            words.text = [_replace_added(w, p.token_map) for w in words.text]
            scored.extras.update(
                word_chunk=words.chunk, word_prob=words.prob, word_oai_tokens=_oai_counts(words.text),
                word_text=words.text, unit_of_word=unit_of_word, family=p.family,
            )
        scored.score_ms = p.prepare_ms + forward_ms + (time.perf_counter() - t0) * 1000.0
        return scored

    # -- phase 2 -------------------------------------------------------------------------
    def select(self, scored: Scored, keep_rate: float) -> Selection:
        """Protected and forced words, then words by keep-probability while they fit."""
        check_keep_rate(keep_rate)
        early = early_selection(scored, keep_rate)
        if early is not None:
            return early
        u = scored.units
        if "word_prob" in scored.extras:
            return Selection(keep=self._select_compatible(scored, keep_rate) | u.protected, keep_rate=keep_rate)
        base = u.protected | scored.extras["forced"]
        budget = budget_for(scored, keep_rate)
        order, layout = scored.extras["order"], scored.extras["layout"]
        if isinstance(scored.tokenizer, HeuristicTokenCounter):  # additive over words: the sum is the count
            return Selection(keep=fit_threshold(order, u.tokens, budget, base.copy(), layout), keep_rate=keep_rate)
        keep = fit_to_count(order, u.tokens, budget, base, layout,
                            lambda k: rendered_tokens(scored, Selection(keep=k, keep_rate=keep_rate)))
        return Selection(keep=keep, keep_rate=keep_rate)

    def word_labels(self, scored: Scored, keep_rate: float) -> tuple[list[str], np.ndarray]:
        """llmlingua's ``fn_labeled_original_prompt`` as (words, 0/1 labels), compatible mode only.

        Words are llmlingua's strings (XLM-R's ``▁`` stripped), including whitespace-only ones
        that have no span of their own."""
        x = scored.extras
        if "word_prob" not in x:
            raise ConfigError("word_labels needs a Scored from llmlingua_compatible=True")
        words = [w.lstrip("▁") for w in x["word_text"]] if x.get("family") == "xlm-roberta" else list(x["word_text"])
        return words, _compatible_keep(x, check_keep_rate(keep_rate)).astype(np.int64)

    def _select_compatible(self, scored: Scored, keep_rate: float) -> np.ndarray:
        """llmlingua 0.2.2's rule: per window, keep words above a cl100k-weighted percentile."""
        x = scored.extras
        keep_word = _compatible_keep(x, keep_rate)
        keep = np.zeros(len(scored.units), dtype=bool)
        uow = x["unit_of_word"]
        visible = uow >= 0
        keep[uow[visible & keep_word]] = True
        return keep

    def parameters(self) -> dict[str, Any]:
        """JSON-ready parameters reported in results."""
        tok = self.tokenizer if isinstance(self.tokenizer, str) or self.tokenizer is None else self.tokenizer.name
        return {
            "model": self.model,
            "family": self.family,
            "max_seq_len": self.max_seq_len,
            "token_to_word": self.token_to_word,
            "force_tokens": list(self.force_tokens),
            "force_reserve_digit": self.force_reserve_digit,
            "chunk_end_tokens": list(self.chunk_end_tokens),
            "llmlingua_compatible": self.llmlingua_compatible,
            "quantize": self.quantize,
            "tokenizer": tok or "heuristic",
            "min_tokens": self.min_tokens,
            "protect_patterns": list(self.protect.patterns),
            "protect_instructions": self.protect.instructions,
        }

    # -- mechanics -----------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        """(model, tokenizer), cached per process."""
        return load_classifier(self.model, self.device, self.dtype, self.quantize, self.trust_remote_code)

    def _load_compatible(self) -> tuple[Any, Any]:
        """Private copies with llmlingua's 100 ``[NEWi]`` tokens, rows resized under its seed (42)."""
        return load_classifier(self.model, self.device, self.dtype, self.quantize, self.trust_remote_code,
                               new_tokens=True)

    def _units(self, docs: list[Any], w: _Words, counter: TokenCounter
               ) -> tuple[Units, np.ndarray, np.ndarray, Layout]:
        """Visible words become units; protection, force strings and sentence groups per word."""
        visible = w.end > w.start
        idx = np.flatnonzero(visible)
        unit_of_word = np.full(len(w.start), -1, dtype=np.int64)
        unit_of_word[idx] = np.arange(len(idx))
        doc = w.doc[idx]
        start, end = w.start[idx], w.end[idx]
        n = len(idx)
        protected = np.zeros(n, dtype=bool)
        forced = w.forced[idx].copy()
        group = np.zeros(n, dtype=np.int32)
        kind = np.zeros(n, dtype=np.int8)
        multi = [] if self.llmlingua_compatible else [
            t for t in self.force_tokens if t.strip() and t not in self._single_token_forces()]
        group_base = 0
        texts: list[str] = []
        nl_start = np.zeros(n, dtype=np.int64)
        nl_end = np.zeros(n, dtype=np.int64)
        for di, d in enumerate(docs):
            sel = np.flatnonzero(doc == di)
            if not len(sel):
                continue
            text = d.text
            s, e = start[sel], end[sel]
            t, nl_start[sel], nl_end[sel] = in_context(text, s, e)
            texts.extend(t)
            segs = segment(text)
            if segs:
                seg_start = np.array([x.start for x in segs], dtype=np.int64)
                pos = np.clip(np.searchsorted(seg_start, s, side="right") - 1, 0, len(segs) - 1)
                group[sel] = group_base + np.array([x.paragraph for x in segs], dtype=np.int32)[pos]
                kind[sel] = np.array([x.kind for x in segs], dtype=np.int8)[pos]
                group_base += segs[-1].paragraph + 1
            spans = self.protect.spans(text)
            if self.protect.instructions:
                spans += [(x.start, x.end) for x in segs  # code is not addressed to the reader
                          if x.kind != CODE and is_instruction(text[x.start:x.end])]
            protected[sel] = overlaps(s, e, spans)
            if multi:
                forced[sel] |= overlaps(s, e, force_spans(text, multi))
        units = Units(
            doc=doc.astype(np.int32), start=start, end=end,
            tokens=count_words(counter, texts),
            relevance=w.prob_raw[idx].astype(np.float64), protected=protected, group=group, kind=kind,
        )
        layout = Layout(doc=units.doc, nl_start=nl_start, nl_end=nl_end,
                        own_break=np.array([t.startswith("\n") for t in texts], dtype=bool),
                        break_tokens=counter.count("a\nb") - counter.count("a b"))
        return units, unit_of_word, forced, layout

    def _single_token_forces(self) -> set[str]:
        """Force strings the vocabulary table finds by itself: one token that reads as the string. One that
        becomes ``[UNK]`` (an emoji in mBERT) or a normalised token is matched in the text instead."""
        _, tok = self._load()
        out = set()
        for t in self.force_tokens:
            pieces = tok.tokenize(t)
            if len(pieces) == 1 and pieces[0].lstrip("#").lstrip("\u2581") == t:
                out.add(t)
        return out


def _check_window(model: Any, family: str, max_seq_len: int) -> None:
    """``max_seq_len`` within the model's positions (XLM-R reserves two for padding), or a clear error now
    instead of an index error deep in the forward pass."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return
    window = positions - (2 if family == "xlm-roberta" else 0)
    if max_seq_len > window:
        raise ConfigError(f"max_seq_len={max_seq_len} is longer than this model's window of {window} tokens")

