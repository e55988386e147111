"""Top up a token budget with the prefix of one unit, so small inputs still track the requested rate.

Whole sentences are coarse: at a keep rate of 0.05 a 300-token passage has a budget of 15 tokens, and
no sentence may fit at all. After the whole-unit fill, when more than :data:`MIN_SHORTFALL` of the
budget is left, the best unit that did not fit contributes the word-boundary prefix closest to what is left
(at most ``MIN_SHORTFALL`` of the budget, and one token, over it).
Code blocks and table rows are never cut; protected units are kept whole anyway; a sentence that carries a
negation is never cut, since its prefix could say the opposite ("safe for adults" out of "safe for adults but
not for children").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import regex

from pocsdk.text.protect import NEGATION, strip_markers
from pocsdk.text.segment import FRAGMENT, LIST_ITEM, SENTENCE, TIGHT_BREAK

if TYPE_CHECKING:
    from pocsdk.compressors.base import Scored

MIN_SHORTFALL = 0.05
"""Top up only when more than this share of the budget (and at least 2 tokens) is unspent."""
MAX_TRIES = 8
"""Units tried, in the caller's order, before giving up (a unit whose first word is too long)."""
CUTTABLE = (SENTENCE, FRAGMENT, LIST_ITEM)

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# Words: runs of user-perceived characters (grapheme clusters, so marks, variation selectors, joiners and
# jamo stay with their base) up to whitespace; each CJK character is a word of its own.
_WORD = regex.compile(rf"(?=[{_CJK}])\X|(?:(?=[^\s{_CJK}])\X)+")

Partial = tuple[int, int, int, int]
"""(document index, start, end, tokens) of a kept prefix of one unit."""


def top_up(
    scored: Scored,
    order: np.ndarray,
    keep: np.ndarray,
    budget: int,
    used: int | None = None,
    credit: dict[int, int] | None = None,
) -> list[Partial]:
    """At most one prefix of the first unit in ``order`` that is not kept, filling the unspent budget.

    ``credit`` maps a unit to tokens freed when its prefix replaces something already spent on it
    (a skim excerpt inside it).
    """
    u = scored.units
    spent = int(u.tokens[keep].sum()) if used is None else used
    remaining = budget - spent
    if not worth_topping_up(budget, spent):
        return []
    slack = max(1, int(MIN_SHORTFALL * budget))
    tries = 0
    for i in order:
        if keep[i] or int(u.kind[i]) not in CUTTABLE or u.protected[i]:
            continue
        doc = int(u.doc[i])
        if NEGATION.search(scored.documents[doc].text, int(u.start[i]), int(u.end[i])):
            continue
        extra = credit.get(int(i), 0) if credit else 0
        piece = _prefix(scored, doc, int(u.start[i]), int(u.end[i]), remaining + extra, slack)
        if piece is not None and piece[2] <= extra:  # no longer than what it would replace
            piece = None
        if piece is not None:
            return [(doc, *piece)]
        tries += 1
        if tries >= MAX_TRIES:
            break
    return []


def worth_topping_up(budget: int, used: int) -> bool:
    """Whether :func:`top_up` looks for a prefix at all: more than :data:`MIN_SHORTFALL` of the budget is unspent."""
    return budget - used >= max(2.0, MIN_SHORTFALL * budget)


def _prefix(scored: Scored, doc: int, start: int, end: int, limit: int, slack: int) -> tuple[int, int, int] | None:
    """Word-boundary prefix of ``text[start:end]`` closest to ``limit`` tokens, at most ``slack`` over."""
    text = scored.documents[doc].text
    cuts = [m.end() for m in _WORD.finditer(text, start, end)][:-1]  # a full unit did not fit
    if not cuts:  # one run without whitespace (minified JSON): after its commas and semicolons instead
        cuts = [m.end() for m in TIGHT_BREAK.finditer(text, start, end - 1)]
    count = scored.tokenizer.count
    lo, hi, best, over = 0, len(cuts) - 1, None, None
    while lo <= hi:
        mid = (lo + hi) // 2
        n = count(strip_markers(text[start:cuts[mid]]))
        if n <= limit:
            best = (start, cuts[mid], n)
            lo = mid + 1
        else:
            over = (start, cuts[mid], n)
            hi = mid - 1
    # one more word may be closer to the target than one fewer ("within tolerance" beats "under budget")
    if over is not None and over[2] - limit <= slack and (best is None or over[2] - limit < limit - best[2]):
        best = over
    if best is None or best[2] <= 0:
        return None
    return best
