"""Protected spans: text that compression must never drop.

Three sources, combined:

* inline markers: ``<keep>...</keep>`` around text; the markers themselves are removed
  from the output;
* user regexes: every match is protected;
* the default rules: instructions and negated directives ("Never ...", "Do not ...",
  "You must ...", "Answer in JSON"), the text users most often lose to other compressors.

A unit (sentence, row, code block) that overlaps a protected span is kept whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pocsdk.errors import ConfigError

KEEP_OPEN = "<keep>"
KEEP_CLOSE = "</keep>"

# Imperatives at the start of a sentence, and modal directives addressed to the reader.
_LEAD = r"\s*[\"'\u201c\u2018(\[]*(?:[-*+\u2022]\s+|\d{1,3}[.)]\s+)?(?:please\s+|important:?\s+|note:?\s+)?"
_IMPERATIVE = re.compile(
    _LEAD
    + r"(?:never|always|do\s+not|don't|must|make\s+sure|ensure|avoid|only\s+(?:use|answer|respond|return)"
    r"|answer|respond|reply|return|output|format|cite|write|include|exclude|ignore|refuse)\b",
    re.IGNORECASE,
)
# A directive's subject opens the sentence or a clause ("When unsure, you must ask"); "you" deep inside a
# sentence ("what you should know about ...") is narrative far more often than an instruction.
_DIRECTIVE = re.compile(
    r"(?:^" + _LEAD + r"|[,;:]\s+|\bthen\s+)"
    r"(?:you|the\s+assistant|assistant|the\s+model)\s+(?:must|should|shall|need\s+to|have\s+to"
    r"|are\s+required\s+to|are\s+not\s+allowed\s+to|may\s+not|must\s+not|cannot|can't|will\s+not"
    r"|never|do\s+not|don't)\b"
    r"|[,;:]\s+(?:never|do\s+not|don't)\s+(?!\w+ed\b)\w"  # "If asked, never reveal it."
    r"|^" + _LEAD + r"under\s+no\s+circumstances\b"
    r"|\bis\s+(?:strictly\s+)?(?:forbidden|prohibited|not\s+allowed)\b",
    re.IGNORECASE,
)


# Every _DIRECTIVE alternative contains one of these (lower-cased); a substring test skips the regex for
# the vast majority of sentences, which is most of the cost of protection on long contexts.
_DIRECTIVE_HINTS = ("you", "assistant", "model", "never", "not", "n't", "circumstances", "forbidden", "prohibited")
_CLOSERS = "\"'\u201d\u2019)]"


def is_instruction(sentence: str) -> bool:
    """True for imperative or directive sentences ("Never reveal ...", "You must cite ...").

    Questions are never instructions ("Don't you agree?"). Measured on Wikipedia, news and lecture
    transcripts (tests/test_real_data.py) these rules protect well under 5% of tokens.
    """
    if sentence.rstrip().rstrip(_CLOSERS).endswith(("?", "\uff1f")):
        return False
    if _IMPERATIVE.match(sentence):
        return True
    lowered = sentence.lower()
    if not any(hint in lowered for hint in _DIRECTIVE_HINTS):
        return False
    return bool(_DIRECTIVE.search(sentence))


def instruction_mask(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """:func:`is_instruction` for every unit ``text[starts[i]:ends[i]]`` of one document, in one pass.

    Hint words are found once in the lower-cased document (``str.find`` runs in C) and mapped to units,
    so the directive regex runs only on the few units that contain one.
    """
    n = len(starts)
    out = np.zeros(n, dtype=bool)
    if n == 0:
        return out
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters change length when lower-cased: no position mapping
        spans = zip(starts.tolist(), ends.tolist(), strict=True)
        return np.array([is_instruction(text[s:e]) for s, e in spans], dtype=bool)
    hits: list[int] = []
    for hint in _DIRECTIVE_HINTS:
        pos = lowered.find(hint)
        while pos >= 0:
            hits.append(pos)
            pos = lowered.find(hint, pos + 1)
    candidate = np.zeros(n, dtype=bool)
    if hits:
        idx = np.searchsorted(starts, np.asarray(hits, dtype=np.int64), side="right") - 1
        ok = idx >= 0
        idx = idx[ok]
        inside = np.asarray(hits, dtype=np.int64)[ok] < ends[idx]
        candidate[idx[inside]] = True
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        sentence = text[s:e]
        if sentence.rstrip().rstrip(_CLOSERS).endswith(("?", "\uff1f")):
            continue
        if _IMPERATIVE.match(sentence) or (candidate[i] and _DIRECTIVE.search(sentence)):
            out[i] = True
    return out


NEGATION = re.compile(
    r"\b(?:not|no|never|none|nor|neither|without|cannot|can't|don't|doesn't|didn't|won't|isn't|aren't"
    r"|wasn't|weren't|shouldn't|mustn't|except|unless)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Protection:
    """Which spans to protect. ``Protection.none()`` turns all of it off."""

    patterns: Sequence[str] = ()
    markers: bool = True
    instructions: bool = True
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = []
        for p in self.patterns:
            try:
                compiled.append(re.compile(p))
            except re.error as exc:
                raise ConfigError(f"invalid protect pattern {p!r}: {exc}") from exc
        object.__setattr__(self, "_compiled", tuple(compiled))

    @classmethod
    def none(cls) -> Protection:
        return cls(patterns=(), markers=False, instructions=False)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Protected character spans from markers and patterns, sorted.

        Instruction sentences are found per unit by :func:`is_instruction` when
        ``instructions`` is on.
        """
        out: list[tuple[int, int]] = []
        if self.markers:
            out.extend(marker_spans(text))
        for rx in self._compiled:
            out.extend((m.start(), m.end()) for m in rx.finditer(text) if m.end() > m.start())
        return sorted(out)


def marker_spans(text: str) -> list[tuple[int, int]]:
    """Spans from each ``<keep>`` to its ``</keep>`` (an unclosed one runs to the end)."""
    out: list[tuple[int, int]] = []
    pos = 0
    while True:
        s = text.find(KEEP_OPEN, pos)
        if s < 0:
            return out
        e = text.find(KEEP_CLOSE, s + len(KEEP_OPEN))
        end = len(text) if e < 0 else e + len(KEEP_CLOSE)
        out.append((s, end))
        pos = end


def strip_markers(text: str) -> str:
    """Remove protection markers before text is shown to a model."""
    if "<keep>" not in text and "</keep>" not in text:
        return text
    return text.replace(KEEP_OPEN, "").replace(KEEP_CLOSE, "")
