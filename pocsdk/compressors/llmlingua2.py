"""LLMLingua-2 token classification, scored once and selected at any rate.

A token classifier of the LLMLingua-2 kind (BERT-multilingual or XLM-RoBERTa with two
labels, ``microsoft/llmlingua-2-*``) gives every model token a keep-probability. Like
llmlingua 0.2.2, the text is cut into windows of ``max_seq_len`` tokens (backing up to the
last ``chunk_end_tokens`` token), windows run batched, and token probabilities are merged
into words by the model family's rule (BERT: ``##`` continues a word; XLM-R: ``▁`` starts
one, and so do punctuation and force tokens). Unlike llmlingua, all of that happens once in
``score``: words carry character spans from the fast tokenizer's offsets, the merge is
numpy over token arrays, and ``select`` is a token-weighted probability threshold over the
whole input, so any rate costs microseconds and the result has exact spans.

``llmlingua_compatible=True`` reproduces llmlingua's own choices word for word: its
off-by-one chunking, a threshold per window (``np.percentile`` of word probabilities
repeated by their cl100k token counts, at ``int(100 * (1 - rate) + 1)``), and special
tokens dropped. See :class:`LLMLingua2Compressor` for the differences that remain.
"""

from __future__ import annotations

import itertools
import re
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from pocsdk.compressors._torch import (
    cached_model,
    encode_with_offsets,
    import_torch,
    import_transformers,
    require_fast_tokenizer,
    resolve_device,
    resolve_dtype,
)
from pocsdk.compressors.base import (
    DEFAULT_MAX_INPUT_CHARS,
    Scored,
    Selection,
    Units,
    as_protection,
    budget_for,
    checked_documents,
    early_selection,
)
from pocsdk.errors import ConfigError
from pocsdk.text.protect import KEEP_CLOSE, KEEP_OPEN, Protection, is_instruction, strip_markers
from pocsdk.text.segment import segment
from pocsdk.text.tokens import TokenCounter, get_token_counter
from pocsdk.types import ContextLike, check_count, check_keep_rate

FEATURE = "the llmlingua2 compressor"
DEFAULT_MODEL = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
Family = Literal["auto", "bert", "xlm-roberta"]


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

    # -- phase 1 -------------------------------------------------------------------------
    def score(self, context: ContextLike, query: str | None = None) -> Scored:
        """One batched forward pass over all windows; words, spans and probabilities."""
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
        family = self._family(model, tok)
        token_map = _token_map(tok, self.force_tokens) if compat else {}
        ends = [*self.chunk_end_tokens, *(token_map[c] for c in self.chunk_end_tokens if c in token_map)]
        table = _vocab_table(tok, family, (*self.force_tokens, *token_map.values()), ends)

        # tokens of every document, one stream; the classifier never sees <keep> markers
        streams = [_TokenStream.of(tok, _blank_markers(d.text) if self.protect.markers else d.text, di, token_map)
                   for di, d in enumerate(docs)]
        chunks: list[tuple[int, int, int]] = []  # (stream, first token, end token)
        for si, s in enumerate(streams):
            cuts = self._chunks(s, table)
            if compat:
                streams[si], cuts = _retokenize_edges(s, cuts, tok)
            chunks.extend((si, a, b) for a, b in cuts)
        probs = [np.full(len(s.ids), np.nan) for s in streams]
        self._forward(model, tok, streams, chunks, probs)

        words = _words(streams, chunks, probs, table, self, compat)
        units, unit_of_word, forced_units, layout = self._units(docs, words, counter)
        scored = Scored(
            compressor=self.name, parameters=self.parameters(), documents=docs, query=query, units=units,
            doc_tokens=doc_tokens, tokenizer=counter,
        )
        token_scores = np.concatenate(probs) if probs else np.zeros(0)
        token_scores = token_scores[~np.isnan(token_scores)]
        scored.extras.update(
            score_kind="keep_probability",
            token_scores=token_scores.astype(np.float32),
            word_scores=words.prob_raw.astype(np.float32),
            score_stats=score_stats(token_scores),
            model_tokens=int(sum(len(s.ids) for s in streams)),
            windows=len(chunks),
            forced=forced_units,
            layout=layout,
            order=np.argsort(-units.relevance, kind="stable"),
        )
        if compat:
            words.text = [_replace_added(w, token_map) for w in words.text]
            scored.extras.update(
                word_chunk=words.chunk, word_prob=words.prob, word_oai_tokens=_oai_counts(words.text),
                word_text=words.text, unit_of_word=unit_of_word, family=family,
            )
        scored.score_ms = (time.perf_counter() - t0) * 1000.0
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
        keep = u.protected | scored.extras["forced"]
        fit_threshold(scored.extras["order"], u.tokens, budget_for(scored, keep_rate), keep, scored.extras["layout"])
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
            "tokenizer": tok or "heuristic",
            "min_tokens": self.min_tokens,
            "protect_patterns": list(self.protect.patterns),
            "protect_instructions": self.protect.instructions,
        }

    # -- mechanics -----------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        transformers = import_transformers(FEATURE)
        device = resolve_device(self.device, FEATURE)
        dtype = resolve_dtype(self.dtype, device, FEATURE)
        key = ("token-classification", self.model, device, str(dtype), self.trust_remote_code)

        def load() -> tuple[Any, Any]:
            tok = transformers.AutoTokenizer.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
            require_fast_tokenizer(tok, self.model)
            model = transformers.AutoModelForTokenClassification.from_pretrained(
                self.model, trust_remote_code=self.trust_remote_code, **dtype_kwarg(transformers, dtype)
            )
            return model.to(device).eval(), tok

        return cached_model(key, load, self.model)

    def _load_compatible(self) -> tuple[Any, Any]:
        """Private copies with llmlingua's 100 ``[NEWi]`` tokens, rows resized under its seed (42)."""
        transformers = import_transformers(FEATURE)
        torch = import_torch(FEATURE)
        device = resolve_device(self.device, FEATURE)
        dtype = resolve_dtype(self.dtype, device, FEATURE)
        key = ("token-classification+llmlingua-new-tokens", self.model, device, str(dtype), self.trust_remote_code)

        def load() -> tuple[Any, Any]:
            tok = transformers.AutoTokenizer.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
            require_fast_tokenizer(tok, self.model)
            model = transformers.AutoModelForTokenClassification.from_pretrained(
                self.model, trust_remote_code=self.trust_remote_code, **dtype_kwarg(transformers, dtype)
            ).to(device)
            tok.add_special_tokens({"additional_special_tokens": list(NEW_TOKENS)})
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(42)
                model.resize_token_embeddings(len(tok))
            return model.eval(), tok

        return cached_model(key, load, self.model)

    def _family(self, model: Any, tok: Any) -> str:
        if self.family != "auto":
            return self.family
        mt = str(getattr(model.config, "model_type", "")).lower()
        name = self.model.lower()
        if "xlm-roberta" in mt or mt == "camembert" or "xlm-roberta-large" in name:
            return "xlm-roberta"
        if mt in ("bert", "distilbert", "electra", "mobilebert") or "bert-base-multilingual-cased" in name:
            return "bert"
        vocab = tok.convert_ids_to_tokens(list(range(min(len(tok), 5000))))
        if sum(t.startswith("##") for t in vocab) > sum(t.startswith("▁") for t in vocab):
            return "bert"
        if any(t.startswith("▁") for t in vocab):
            return "xlm-roberta"
        raise ConfigError(f"cannot tell the word-merging rule of {self.model!r}: pass family='bert' or 'xlm-roberta'")

    def _chunks(self, s: _TokenStream, table: _VocabTable) -> list[tuple[int, int]]:
        """Token windows [a, b) as llmlingua cuts them (see the class docstring for the fix)."""
        n = len(s.ids)
        max_len = self.max_seq_len - 2
        is_end = table.is_end[s.ids]
        out: list[tuple[int, int]] = []
        st = 0
        if self.llmlingua_compatible:
            while st < n:
                if st + max_len > n - 1:
                    out.append((st, n))
                    break
                ed = st + max_len
                hits = np.flatnonzero(is_end[st + 1: ed + 1])
                if len(hits):
                    ed = st + 1 + int(hits[-1])
                out.append((st, ed + 1))
                st = ed + 1
            return out
        is_end = is_end | s.newline_after()
        starts = table.starts[s.ids]
        while st < n:
            if n - st <= max_len:
                out.append((st, n))
                break
            last = st + max_len  # exclusive bound of the window
            hits = np.flatnonzero(is_end[st:last])
            if len(hits):
                cut = st + int(hits[-1]) + 1
            else:
                word_starts = np.flatnonzero(starts[st + 1: last + 1])
                cut = st + 1 + int(word_starts[-1]) if len(word_starts) else last
            out.append((st, cut))
            st = cut
        return out

    def _forward(self, model: Any, tok: Any, streams: list[_TokenStream], chunks: list[tuple[int, int, int]],
                 probs: list[np.ndarray]) -> None:
        """Batched forward over windows, longest first, padded per batch; fills ``probs``."""
        torch = import_torch(FEATURE)
        if not chunks:
            return
        cls_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        sep_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        seqs: list[np.ndarray] = []
        for si, a, b in chunks:
            body = streams[si].ids[a:b][: self.max_seq_len - 1]  # llmlingua truncates [CLS] + body to max_seq_len
            parts = [[cls_id], body]
            if len(body) + 2 <= self.max_seq_len:  # llmlingua truncates to max_seq_len, dropping [SEP]
                parts.append([sep_id])
            seqs.append(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        device = next(model.parameters()).device
        with torch.inference_mode():
            for k in range(0, len(order), self.max_batch_size):
                batch = order[k: k + self.max_batch_size]
                width = len(seqs[batch[0]])
                ids = np.full((len(batch), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for r, i in enumerate(batch):
                    ids[r, : len(seqs[i])] = seqs[i]
                    mask[r, : len(seqs[i])] = 1
                logits = model(input_ids=torch.from_numpy(ids).to(device),
                               attention_mask=torch.from_numpy(mask).to(device)).logits
                p1 = torch.softmax(logits.float(), dim=-1)[..., 1].cpu().numpy().astype(np.float64)
                for r, i in enumerate(batch):
                    si, a, b = chunks[i]
                    m = min(b - a, self.max_seq_len - 1)
                    probs[si][a: a + m] = p1[r, 1: 1 + m]

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
                spans += [(x.start, x.end) for x in segs if is_instruction(text[x.start:x.end])]
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
        _, tok = self._load()
        return {t for t in self.force_tokens if len(tok.tokenize(t)) == 1}


# -- token streams and words -------------------------------------------------------------------
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


def _words(streams: list[_TokenStream], chunks: list[tuple[int, int, int]], probs: list[np.ndarray],
           table: _VocabTable, cfg: LLMLingua2Compressor, compat: bool) -> _Words:
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
    first[vidx[np.r_[True, vchunk[1:] != vchunk[:-1]]]] = True
    ids, start, end, doc, prob, chunk, first = (a[vidx] for a in (ids, start, end, doc, prob, chunk, first))
    starts = table.starts[ids] | first
    forced_tok = table.forced[ids] & starts
    p_forced = np.where(forced_tok, 1.0, prob)
    if cfg.force_reserve_digit:
        p_forced = np.where(table.digit[ids], 1.0, p_forced)
    wfirst = np.flatnonzero(starts)
    wid = np.cumsum(starts) - 1
    n_tok = np.bincount(wid)
    w_prob: np.ndarray = p_forced[wfirst]
    w_raw: np.ndarray = prob[wfirst]
    if cfg.token_to_word == "mean":
        w_prob = np.bincount(wid, weights=p_forced) / n_tok
        w_raw = np.bincount(wid, weights=prob) / n_tok
    w_start = np.minimum.reduceat(start, wfirst) if len(wfirst) else start[:0]
    w_end = np.maximum.reduceat(end, wfirst) if len(wfirst) else end[:0]
    w_start, w_end = _trim(streams, doc[wfirst], w_start, w_end)
    forced_w = forced_tok[wfirst]
    if cfg.force_reserve_digit and len(wfirst):
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


def in_context(text: str, start: np.ndarray, end: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Word texts as they cost tokens in running text, with the space or line break before them,
    plus per word the number of line breaks before its start and before its end.

    " word" is one cl100k token where "word" alone may be two, and a kept word that opens a line
    brings its line break along (joins keep breaks), so budgets match the rendered text."""
    lead = np.full(len(start), "", dtype=object)
    nl_start = np.zeros(len(start), dtype=np.int64)
    nl_end = np.zeros(len(start), dtype=np.int64)
    if text and len(start):
        prev_end = np.r_[0, end[:-1]]
        has_gap = start > prev_end
        lead[has_gap & _space_mask(text)[np.maximum(start - 1, 0)]] = " "
        nl = np.array([m.start() for m in re.finditer("\n", text)], dtype=np.int64)
        if len(nl):
            nl_start = np.searchsorted(nl, start)
            nl_end = np.searchsorted(nl, end)
            lead[nl_start > np.searchsorted(nl, prev_end)] = "\n"
    texts = [ld + strip_markers(text[a:b])
             for ld, a, b in zip(lead.tolist(), start.tolist(), end.tolist(), strict=True)]
    return texts, nl_start, nl_end


@dataclass
class Layout:
    """Where line breaks sit between units, so a selection's cost includes the breaks joins add."""

    doc: np.ndarray
    nl_start: np.ndarray  # line breaks in the document before the unit starts
    nl_end: np.ndarray  # ... before it ends
    own_break: np.ndarray  # the unit's token count already includes the break before it
    break_tokens: int  # what one inserted line break costs in the target tokenizer

    def extra_tokens(self, keep: np.ndarray) -> int:
        """Tokens of line breaks that joining the kept units inserts beyond their own counts."""
        if self.break_tokens <= 0:
            return 0
        idx = np.flatnonzero(keep)
        if len(idx) < 2:
            return 0
        a, b = idx[:-1], idx[1:]
        inserted = (self.doc[a] == self.doc[b]) & (self.nl_start[b] > self.nl_end[a]) & ~self.own_break[b]
        return int(inserted.sum()) * self.break_tokens


def fit_threshold(order: np.ndarray, tokens: np.ndarray, budget: int, keep: np.ndarray,
                  layout: Layout | None = None) -> np.ndarray:
    """Keep the longest prefix of ``order`` (a score threshold) whose cost fits ``budget``.

    ``keep`` (modified in place) holds units kept anyway; their cost counts first. With a
    layout, the cost includes the line breaks joins insert: a binary search over the prefix
    length, each step vectorised (the cost never falls as the prefix grows)."""
    cand = order[~keep[order]]
    csum = np.cumsum(tokens[cand])
    used = int(tokens[keep].sum())
    hi = int(np.searchsorted(csum, budget - used, side="right"))
    if layout is None or layout.break_tokens <= 0:
        keep[cand[:hi]] = True
        return keep

    def cost(k: int) -> int:
        trial = keep.copy()
        trial[cand[:k]] = True
        return used + (int(csum[k - 1]) if k else 0) + layout.extra_tokens(trial)

    lo = 0
    while lo < hi:  # largest k in [0, hi] with cost(k) <= budget
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    keep[cand[:lo]] = True
    return keep


def _space_mask(text: str) -> np.ndarray:
    """Per character: is it whitespace (``str.isspace``), vectorised over code points."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    mask = (cp == 32) | ((cp >= 9) & (cp <= 13)) | ((cp >= 28) & (cp <= 31))
    high = np.flatnonzero(cp > 127)
    if len(high):
        mask[high] = [chr(c).isspace() for c in cp[high].tolist()]
    return mask


def _compatible_keep(x: dict[str, Any], keep_rate: float) -> np.ndarray:
    """Per window, words above the percentile ``int(100 * (1 - rate) + 1)`` of their probabilities
    repeated by cl100k token counts; a threshold of exactly 1.0 keeps words at 1.0 (llmlingua 0.2.2)."""
    prob, chunk, n_oai = x["word_prob"], x["word_chunk"], x["word_oai_tokens"]
    reduce_rate = max(0, 1 - keep_rate)
    keep_word = np.ones(len(prob), dtype=bool)
    if reduce_rate > 0 and len(prob):
        q = int(100 * reduce_rate + 1)
        bounds = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1], True])
        for a, b in itertools.pairwise(bounds.tolist()):
            p = prob[a:b]
            thr = np.percentile(np.repeat(p, n_oai[a:b]), q)
            keep_word[a:b] = (p > thr) | ((thr == 1.0) & (p == thr))
    return keep_word


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


def _oai_counts(words: list[str]) -> np.ndarray:
    """cl100k token counts of llmlingua's word strings (what its percentile is weighted by)."""
    if not words:
        return np.zeros(0, dtype=np.int64)
    return count_words(get_token_counter("tiktoken:cl100k_base"), words)


def count_words(counter: TokenCounter, texts: list[str]) -> np.ndarray:
    """Token counts of many short texts: each distinct text counted once, one call each.

    Words repeat (a few thousand distinct forms in 32k tokens), and ``count_many`` of
    tiktoken fans out to a thread pool per text, which costs more than the counting."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    uniq = dict.fromkeys(texts)
    counts = {t: counter.count(t) for t in uniq}
    return np.fromiter((counts[t] for t in texts), dtype=np.int64, count=len(texts))


# -- shared helpers (also used by selfinfo) ------------------------------------------------------
def _blank_markers(text: str) -> str:
    """``<keep>`` markers as spaces of the same length: models never see them, offsets stay exact."""
    if KEEP_OPEN not in text and KEEP_CLOSE not in text:
        return text
    return text.replace(KEEP_OPEN, " " * len(KEEP_OPEN)).replace(KEEP_CLOSE, " " * len(KEEP_CLOSE))


def overlaps(starts: np.ndarray, ends: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each [start, end), does it overlap any span? Vectorised over merged, sorted spans."""
    out = np.zeros(len(starts), dtype=bool)
    if not spans or not len(starts):
        return out
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    ms = np.array([m[0] for m in merged], dtype=np.int64)
    me = np.array([m[1] for m in merged], dtype=np.int64)
    j = np.searchsorted(me, starts, side="right")  # first span ending after the unit starts
    ok = j < len(ms)
    out[ok] = ms[j[ok]] < ends[ok]
    return out


def force_spans(text: str, force: Sequence[str]) -> list[tuple[int, int]]:
    """Occurrences of force strings, at word boundaries where the string starts/ends with a word char."""
    out: list[tuple[int, int]] = []
    for f in force:
        pat = re.escape(f)
        if f[:1].isalnum() or f[:1] == "_":
            pat = r"(?<!\w)" + pat
        if f[-1:].isalnum() or f[-1:] == "_":
            pat += r"(?!\w)"
        out.extend((m.start(), m.end()) for m in re.finditer(pat, text))
    return out


def score_stats(scores: np.ndarray) -> dict[str, float]:
    """Distribution summary of per-token scores, ready to be predictor features."""
    s = scores[np.isfinite(scores)]
    if not len(s):
        return {"n": 0.0, "mean": 0.0, "std": 0.0, "p10": 0.0, "p25": 0.0, "p50": 0.0, "p75": 0.0, "p90": 0.0}
    q = np.percentile(s, [10, 25, 50, 75, 90])
    return {"n": float(len(s)), "mean": float(s.mean()), "std": float(s.std()), "p10": float(q[0]),
            "p25": float(q[1]), "p50": float(q[2]), "p75": float(q[3]), "p90": float(q[4])}


def dtype_kwarg(transformers: Any, dtype: Any) -> dict[str, Any]:
    """transformers >= 4.56 calls it ``dtype``; older releases ``torch_dtype``."""
    parts = str(transformers.__version__).split(".")
    major, minor = int(parts[0]), int(re.sub(r"\D.*", "", parts[1]) or 0)
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}
