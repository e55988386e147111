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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import regex

from pocsdk.errors import ConfigError

KEEP_OPEN = "<keep>"
KEEP_CLOSE = "</keep>"
PATTERN_TIMEOUT_S = 2.0
"""Time one protect pattern may take on one document (``regex``'s timeout) before a ``ConfigError``."""

# Imperatives at the start of a sentence, and modal directives addressed to the reader. The lead-in may hold
# blockquote marks, an opening quote or bracket, a list marker, markdown emphasis ("**Never** share",
# "**IMPORTANT:** You must") and "please" / "important" / "note".
_EMPHASIS = r"[*_]{0,3}"
# List markers: bullets (with a task checkbox, "- [ ] Always ..."), "1." / "1)" / "1.1", and the lettered and
# roman ones the segmenter reads as list items ("a)", "(b)", "C.", "iv)").
_LIST_MARK = (r"(?:[-*+\u2022]\s+(?:\[[ xX]\]\s+)?|\d{1,3}(?:\.\d{1,3})*[.)]\s+|\d{1,3}(?:\.\d{1,3})+\s+"
              r"|[a-zA-Z][.)]\s+|[ivxIVX]{2,4}[.)]\s+)")
_LEAD = (r"\s*(?:>\s*)*[\"'\u201c\u2018(\[]*" + _LIST_MARK + "?" + _EMPHASIS
         + r"(?:(?:please|important|note)" + _EMPHASIS + r":?" + _EMPHASIS + r"\s+" + _EMPHASIS + r")?")
# An apostrophe is typed straight or curly (U+2019, what word processors and phones put in "don’t").
_APOS = "['\u2019]"
_IMPERATIVE = re.compile(
    _LEAD
    + r"(?:never|always|do\s+not|don" + _APOS + r"t|must|make\s+sure|ensure|avoid|only\s+(?:use|answer|respond|return)"
    r"|answer|respond|reply|return|output|format|cite|write|include|exclude|ignore|refuse|refrain|provide"
    r"|use\s+only|stick\s+to|summari[sz]e|keep\s+(?:your|the|it|answers|responses|replies)"
    r"|limit\s+(?:your|the|it|answers|responses|replies)|be\s+(?:concise|brief|polite|honest|specific|clear|precise)"
    r"|remember\s+to|translate|think\s+step)"
    r"(?!_*[^\W_]|[-\u2010]\w)",  # a whole word, and not the head of a compound ("Write-offs", "Must-have")
    re.IGNORECASE,
)
# A directive's subject opens the sentence or a clause ("When unsure, you must ask"); "you" deep inside a
# sentence ("what you should know about ...") is narrative far more often than an instruction. One rule,
# compiled per place it can start: a search for ``[,;:]`` skips ahead fast, one for a leading ``\b`` does not.
_SUBJECT_MODAL = (  # one group: the rules prefix it ("then " + ...), so no alternative may stand alone
    r"(?:(?:you|the\s+assistant|assistant|the\s+model"
    r"|(?:your\s+|the\s+|all\s+|every\s+)?(?:answers?|responses?|replies|reply|outputs?))"
    r"\s+(?:must|should|shall|need\s+to|have\s+to"
    r"|are\s+required\s+to|are\s+not\s+allowed\s+to|may\s+not|must\s+not|cannot|will\s+not"
    r"|(?:can|must|should|won|do)n?" + _APOS + r"t|never|do\s+not)(?!_*[^\W_])"
    r"|you" + _APOS + r"re\s+(?:not\s+allowed|required)\s+to\b)"
)
_DIRECTIVE_AT_START = re.compile(  # matched at the start only
    _LEAD + r"(?:" + _SUBJECT_MODAL + r"|under\s+no\s+circumstances\b)", re.IGNORECASE
)
_DIRECTIVE_IN_CLAUSE = re.compile(  # "If asked, never reveal it."
    r"[,;:]\s+(?:" + _SUBJECT_MODAL + r"|(?:never|do\s+not|don" + _APOS + r"t)\s+(?!\w+ed\b)\w)",
    re.IGNORECASE,
)
_DIRECTIVE_AFTER_THEN = re.compile(r"\bthen\s+" + _SUBJECT_MODAL, re.IGNORECASE)
_FORBIDDEN = re.compile(r"\bis\s+(?:strictly\s+)?(?:forbidden|prohibited|not\s+allowed)\b", re.IGNORECASE)
# A directive counts only in a sentence with one of these (lower-cased) words: the rule since protection began,
# and a cheap test that skips the regexes for the vast majority of sentences.
_DIRECTIVE_HINTS = ("you", "assistant", "model", "never", "not", "n't", "n\u2019t", "circumstances", "forbidden",
                    "prohibited", "answer", "respons", "repl", "output")
# Lower-case words the last two rules need (no "i" or "s": under IGNORECASE those also match "ı", "ſ", which
# lower() keeps), so substring tests skip their slow searches.
_THEN_HINT = "then"
_FORBIDDEN_HINTS = ("forb", "proh", "allowed")
# An _IMPERATIVE match opening with a letter opens with a keyword, "please", "important" or "note", so its
# lower-cased text starts with one of these, listed by first character. Under IGNORECASE "ı" and "İ" also
# match "i" and "ſ" matches "s", and lower() keeps "ı" and "ſ" and makes "İ" "i\u0307": so the prefixes
# stop before an "i" or "s", or come in those variants too.
_IMPERATIVE_OPENINGS = {
    "a": ("alway", "ans", "an\u017f", "avo"),
    "b": ("be",),
    "c": ("cit", "ci\u0307", "c\u0131"),
    "d": ("do",),
    "e": ("ens", "en\u017f", "excl"),
    "f": ("form",),
    "i": ("inc", "ign", "imp", "i\u0307"),
    "\u0131": ("\u0131",),
    "k": ("kee",),
    "l": ("li", "l\u0131"),
    "m": ("mus", "mu\u017f", "make"),
    "n": ("neve", "note"),
    "o": ("only", "outp"),
    "p": ("plea", "prov"),
    "r": ("res", "re\u017f", "repl", "retu", "refu", "refr", "rem"),
    "s": ("st", "sum"),
    "\u017f": ("\u017ft", "\u017fum"),
    "t": ("th", "tra"),
    "u": ("us", "u\u017f"),
    "w": ("wri", "wr\u0131"),
}
_CLOSERS = "\"'\u201d\u2019)]"
_OPENERS = "\"'\u201c\u2018(["


def is_instruction(sentence: str) -> bool:
    """True for imperative or directive sentences ("Never reveal ...", "You must cite ...").

    Questions are never instructions ("Don't you agree?"). Measured on Wikipedia, news and lecture
    transcripts (tests/test_real_data.py) these rules protect well under 5% of tokens.
    """
    low = sentence.lower()
    return _is_instruction(sentence, low, _has_any(low, _DIRECTIVE_HINTS)) or (
        "\n" in sentence and _instruction_after_title(sentence))


def instruction_mask(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """:func:`is_instruction` for every unit ``text[starts[i]:ends[i]]`` of one document."""
    return instruction_flags([text[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)])


def instruction_flags(sentences: list[str]) -> np.ndarray:
    """:func:`is_instruction` of each sentence; the hint words are looked for in all of them at once."""
    lows = [x.lower() for x in sentences]
    hinted = _containing_any(lows, _DIRECTIVE_HINTS)
    out = np.zeros(len(sentences), dtype=bool)
    for i, (x, low, h) in enumerate(zip(sentences, lows, hinted, strict=True)):
        if (h or _may_be_imperative(x, low)) and _is_instruction(x, low, h):  # most sentences: neither
            out[i] = True
        elif "\n" in x and _instruction_after_title(x):
            out[i] = True
    return out


# A unit's second line opening with a capital (after emphasis marks): where a title line without punctuation
# ("Support policy") was read as wrapped prose and joined to the order under it.
_TITLED_LINE = re.compile(r"\n[ \t]*(?=[*_]{0,3}[A-Z])")
_ENDS_SENTENCE = (".", "!", "?", ":", ";", ",", "\u3002", "\uff01", "\uff1f")
TITLE_MAX_WORDS = 8
_SHOUTED_ORDERS = frozenset({"never", "always", "do", "dont", "must", "only", "avoid", "ensure", "please",
                             "important", "note", "remember", "refuse", "respond", "reply", "answer", "use",
                             "cite", "ignore", "keep", "write", "include", "exclude", "provide"})


def _instruction_after_title(unit: str) -> bool:
    """Does ``unit`` open with a title line (at most 8 words, no punctuation at its end) over a line that opens
    with an instruction ("Support policy\nNever reveal the code.")? Only the first line break counts, and a
    second line in Title Case ("Return of the Jedi", a table of contents) or opening with a word in capitals
    (SQL's "RETURN") is no order."""
    nl = unit.find("\n")
    if nl < 0:
        return False
    title = unit[:nl].strip()
    if not title or title.endswith(_ENDS_SENTENCE) or len(title.split()) > TITLE_MAX_WORDS:
        return False
    m = _TITLED_LINE.match(unit, nl)
    if m is None:
        return False
    rest = unit[m.end():]
    words = rest.split("\n", 1)[0].split()
    head = re.sub(r"\W", "", words[0]) if words else ""
    if len(head) > 1 and head.isupper() and head.lower() not in _SHOUTED_ORDERS:
        return False  # SQL's RETURN, a heading in capitals; "NEVER reveal ..." is an order all the same
    shouted = head.isupper() and head.lower() in _SHOUTED_ORDERS  # "NEVER SHARE ..."; not "Never Let Me Go"
    if not shouted and len(words) >= 3 and 2 * sum(w[:1].isupper() for w in words) > len(words):
        return False  # Title Case: a wrapped title, a table of contents ("NEVER SHARE THE KEY." is an order)
    low = rest.lower()
    hinted = _has_any(low, _DIRECTIVE_HINTS)
    return bool((hinted or _may_be_imperative(rest, low)) and _is_instruction(rest, low, hinted))


def _may_be_imperative(sentence: str, low: str) -> bool:
    """False when ``_IMPERATIVE`` cannot match: the sentence opens with a letter but with no keyword's (nor a
    lettered list marker's: "a) Never ...")."""
    return (not sentence[:1].isalpha() or low.startswith(_IMPERATIVE_OPENINGS.get(low[:1], ()))
            or _LETTER_MARK.match(sentence) is not None)


_LETTER_MARK = re.compile(r"[a-zA-Z][.)]\s|[ivxIVX]{2,4}[.)]\s")


def _is_instruction(sentence: str, low: str, hinted: bool) -> bool:
    """:func:`is_instruction` given the lower-cased sentence and whether it holds a directive hint word."""
    imperative = _may_be_imperative(sentence, low) and _IMPERATIVE.match(sentence)
    directive = hinted and _is_directive(sentence, low)
    if not (imperative or directive):
        return False
    if not directive and _CODE_LINE.match(sentence) and _CODE_MARKS.search(sentence):
        return False  # "return x.value + items[0]" opens like an order but is code
    return not _asks(sentence, bool(imperative))


def _asks(sentence: str, imperative: bool) -> bool:
    """A question ("Don't you agree?"). A "?" inside closing quotes ends a quoted question, which an order may
    hold ('Do not answer questions like "What is your prompt?"'): then a sentence led by an order does not ask,
    unless the quote opens the sentence (dialogue: '"Must we go now?"')."""
    end = sentence.rstrip()
    if end.endswith(("?", "\uff1f")):
        return True
    quoted_question = end.rstrip(_CLOSERS).endswith(("?", "\uff1f"))
    return quoted_question and (not imperative or sentence.lstrip()[:1] in _OPENERS)


# A code line that opens like an order: lower-case "return" or "include" followed by a word that is not
# prose ("return the answer ..." is an instruction; "return x.value", "return self.items[0]" are code) ...
_CODE_LINE = re.compile(
    r"(?:return|include)\s+(?!(?:the|a|an|your|our|their|its|this|that|these|those|only|all|each|every|"
    r"exactly|just|no|nothing|one|two|three|it|them|in|as|with|to|when|if|at|on|for|from|any|some)\b)")
# ... and carrying marks of code: brackets, braces, "=", ";", "#", a call ("f(") or a member access ("x.value").
_CODE_MARKS = re.compile(r"[\[\]{}=;#]|\w\(|(?<![^\W\d_])[A-Za-z_]\w+\.[A-Za-z_]")


def _is_directive(sentence: str, low: str) -> bool:
    """A modal directive addressed to the reader (the sentence holds a hint word)."""
    return bool(
        _DIRECTIVE_AT_START.match(sentence)
        or (_has_any(sentence, ",;:") and _DIRECTIVE_IN_CLAUSE.search(sentence))
        or (_THEN_HINT in low and _DIRECTIVE_AFTER_THEN.search(sentence))
        or (_has_any(low, _FORBIDDEN_HINTS) and _FORBIDDEN.search(sentence))
    )


def _has_any(text: str, parts: Iterable[str]) -> bool:
    for part in parts:
        if part in text:
            return True
    return False


def _containing_any(texts: list[str], words: Sequence[str]) -> list[bool]:
    """``_has_any(text, words)`` for each of ``texts`` (``words`` ASCII).

    The ASCII texts are joined by "\\n" (so no word is found across two) and searched once per word:
    ``str.find`` over one one-byte-per-character buffer beats many ``in`` tests. The others are tested alone.
    """
    ascii_idx = [i for i, t in enumerate(texts) if t.isascii()]
    out = [not t.isascii() and _has_any(t, words) for t in texts]
    if not ascii_idx:
        return out
    ascii_texts = [texts[i] for i in ascii_idx]
    joined = "\n".join(ascii_texts)
    hits: list[int] = []
    for word in words:
        pos = joined.find(word)
        while pos >= 0:
            hits.append(pos)
            pos = joined.find(word, pos + 1)
    if hits:
        ends = np.cumsum(np.fromiter(map(len, ascii_texts), dtype=np.int64, count=len(ascii_texts)) + 1)
        for k in np.unique(np.searchsorted(ends, hits, side="right")).tolist():
            out[ascii_idx[k]] = True
    return out


NEGATION = re.compile(
    r"\b(?:not|no|never|none|nor|neither|without|cannot|except|unless|nobody|nothing|nowhere"
    r"|(?:ca|do|does|did|wo|would|could|is|are|was|were|has|have|had|should|must|need|might|sha|ai)n" + _APOS + r"t)\b",
    re.IGNORECASE,
)
# Lower-cased substrings, one inside every word NEGATION matches ("no" is in "not", "none", "nor" and "cannot";
# "n't" ends every contraction).
_NEGATION_HINTS = ("no", "n't", "n\u2019t", "never", "neither", "without", "except", "unless")
# Under IGNORECASE "İ" and "ı" match "i" and "ſ" matches "s", but lower() does not make them those letters (and
# makes "İ" two characters); every other character that IGNORECASE matches to a letter lower-cases to that letter,
# one character for one (the tests check all of Unicode).
_FOLDS_APART = ("\u0130", "\u0131", "\u017f")


def has_negation(text: str, start: int = 0, end: int | None = None) -> bool:
    """``NEGATION.search(text, start, end) is not None``, several times faster.

    The regex opens with ``\\b`` under IGNORECASE, so ``re`` tries it at every character. Here ``str.find``
    looks for the hints in the lower-cased text, and the regex is matched only at the start of the word around
    each hit: a match starts a word (``\\b``, then a word character) and holds a hint.
    """
    start = max(start, 0)  # as ``re`` reads pos and endpos
    end = len(text) if end is None else min(end, len(text))
    piece = text[start:end]
    if not piece.isascii() and any(c in piece for c in _FOLDS_APART):
        return NEGATION.search(text, start, end) is not None
    low = piece.lower()  # same length and offsets as ``piece`` without the characters above
    match = NEGATION.match
    for hint in _NEGATION_HINTS:
        p = low.find(hint)
        while p >= 0:
            s = start + p
            while s > start and (text[s - 1].isalnum() or text[s - 1] == "_"):  # back to the word's start (\w)
                s -= 1
            if match(text, s, end):
                return True
            p = low.find(hint, p + 1)
    return False


@dataclass(frozen=True)
class Protection:
    """Which spans to protect. ``Protection.none()`` turns all of it off."""

    patterns: Sequence[str] = ()
    markers: bool = True
    instructions: bool = True
    code_fences: bool = True
    """Keep the fence lines of a long code block cut into pieces, so kept code stays fenced."""
    _compiled: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.patterns, (str, bytes)):  # a bare string would be compiled one character at a time
            raise ConfigError("patterns must be a list of regexes, not one string: patterns=[r'...']")
        compiled: list[Any] = []
        for p in self.patterns:
            if isinstance(p, re.Pattern):  # compiled by the caller with re: used as given (no timeout)
                compiled.append(p)
                continue
            if not isinstance(p, str):
                raise ConfigError(f"a protect pattern must be a string (a regex), not {type(p).__name__}: {p!r}")
            try:
                compiled.append(regex.compile(p, regex.VERSION0))
            except regex.error as exc:
                raise ConfigError(f"invalid protect pattern {p!r}: {exc}") from exc
        object.__setattr__(self, "_compiled", tuple(compiled))

    @classmethod
    def none(cls) -> Protection:
        return cls(patterns=(), markers=False, instructions=False, code_fences=False)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Protected character spans from markers and patterns, sorted.

        Instruction sentences are found per unit by :func:`is_instruction` when
        ``instructions`` is on.
        """
        out: list[tuple[int, int]] = []
        if self.markers:
            out.extend(marker_spans(text))
        for rx in self._compiled:
            try:  # a pattern that backtracks badly must not hold a worker for minutes
                found = (rx.finditer(text) if isinstance(rx, re.Pattern)
                         else rx.finditer(text, timeout=PATTERN_TIMEOUT_S))
                out.extend((m.start(), m.end()) for m in found if m.end() > m.start())
            except TimeoutError as exc:
                raise ConfigError(f"protect pattern {rx.pattern!r} ran over {PATTERN_TIMEOUT_S:g} s on a "
                                  f"{len(text):,}-character document (catastrophic backtracking?)") from exc
        return sorted(out)


_MARKER = re.compile(f"{re.escape(KEEP_OPEN)}|{re.escape(KEEP_CLOSE)}")


def marker_spans(text: str) -> list[tuple[int, int]]:
    """Spans from each outermost ``<keep>`` to the ``</keep>`` that closes it (nested pairs count; an unclosed
    one runs to the end of the document, a stray ``</keep>`` is ignored).

    One pass over the markers: each ``<keep>`` closes at the first later marker that takes the nesting
    depth below its own (found for all at once with a stack); one that never closes pairs with the first
    ``</keep>`` after it. (Searching the text again for every marker took 51 s for 1M characters.)"""
    if KEEP_OPEN not in text:
        return []
    events = [(m.start(), m.end(), m.group() == KEEP_OPEN) for m in _MARKER.finditer(text)]
    n = len(events)
    depth: list[int] = []
    d = 0
    for _, _, is_open in events:
        d += 1 if is_open else -1
        depth.append(d)
    closes_at = [n] * n  # the first later marker whose depth is lower
    stack: list[int] = []
    for j in range(n):
        while stack and depth[j] < depth[stack[-1]]:
            closes_at[stack.pop()] = j
        stack.append(j)
    next_close = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        next_close[i] = next_close[i + 1] if events[i][2] else i
    out: list[tuple[int, int]] = []
    i = 0
    while i < n:
        if not events[i][2]:
            i += 1
            continue
        j = closes_at[i] if closes_at[i] < n else next_close[i + 1]  # unclosed nesting: the first </keep>
        if j >= n:
            out.append((events[i][0], len(text)))
            break
        out.append((events[i][0], events[j][1]))
        i = j + 1
    return out


def blank_markers(text: str) -> str:
    """``<keep>`` markers as spaces of the same length: offsets stay exact, and a marker never glues two
    sentences into one unit ("<keep>A.</keep> B." segments as "A." and "B.")."""
    if KEEP_OPEN not in text and KEEP_CLOSE not in text:
        return text
    return text.replace(KEEP_OPEN, " " * len(KEEP_OPEN)).replace(KEEP_CLOSE, " " * len(KEEP_CLOSE))


def strip_markers(text: str) -> str:
    """Remove protection markers before text is shown to a model."""
    if "<keep>" not in text and "</keep>" not in text:
        return text
    return text.replace(KEEP_OPEN, "").replace(KEEP_CLOSE, "")
