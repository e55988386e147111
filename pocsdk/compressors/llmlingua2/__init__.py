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

Modules: :mod:`.compressor` (the dataclass: score, select), :mod:`.model` (loading, optional
int8 quantization, the batched forward), :mod:`.windows` (token streams, windows, ``[NEWi]``
swaps), :mod:`.words` (token probabilities to words), :mod:`.selection` (thresholds) and
:mod:`.shared` (helpers ``selfinfo`` uses too). Importing the package never imports torch.
"""

from __future__ import annotations

from pocsdk.compressors._torch import dtype_kwarg
from pocsdk.compressors.llmlingua2.compressor import DEFAULT_MODEL, Family, LLMLingua2Compressor
from pocsdk.compressors.llmlingua2.model import FEATURE
from pocsdk.compressors.llmlingua2.selection import Layout, fit_threshold
from pocsdk.compressors.llmlingua2.shared import (
    _blank_markers,
    count_words,
    force_spans,
    in_context,
    overlaps,
    score_stats,
)
from pocsdk.compressors.llmlingua2.windows import NEW_TOKENS

__all__ = [
    "DEFAULT_MODEL",
    "FEATURE",
    "NEW_TOKENS",
    "Family",
    "LLMLingua2Compressor",
    "Layout",
    "_blank_markers",
    "count_words",
    "dtype_kwarg",
    "fit_threshold",
    "force_spans",
    "in_context",
    "overlaps",
    "score_stats",
]
