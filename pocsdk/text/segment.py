"""Segmentation into paragraphs, sentences and clauses with exact character spans.

Every non-whitespace character of the input lies in exactly one unit, and units are in
order, so selecting units and joining them never rewrites text. Structure that a
sentence splitter would tear apart is kept whole: fenced code blocks (cut at line ends
when longer than a unit may be), table rows, list items and headings are units of their
own. Sentences end at ``.!?`` followed by space, or at CJK full stops (no space needed).
Over-long units (no punctuation, JSON lines, key-value dumps) are cut at clause punctuation,
then at whitespace.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, pairwise

import numpy as np
import regex

from pocsdk.text.protect import has_negation

# Unit kinds, stored as small ints in arrays.
SENTENCE, CODE, TABLE_ROW, LIST_ITEM, HEADING, FRAGMENT = range(6)
KIND_NAMES = ("sentence", "code", "table_row", "list_item", "heading", "fragment")


@dataclass(frozen=True)
class Unit:
    start: int
    end: int
    paragraph: int
    kind: int


# A fence opens with 3+ backticks or tildes and closes with a line of at least the same run (CommonMark);
# an unclosed fence runs to the end. ``\r`` is allowed before line ends (Windows text). A backtick
# opener's info string holds no backtick (CommonMark): "```pip install x```" is inline code, not a fence
# that would turn the rest of the document into code.
_FENCE = re.compile(r"^[ \t]*(?:(`{3,})[^`\n]*|(~{3,})[^\n]*)\n.*?(?:^[ \t]*(?:\1|\2)[`~]*[ \t\r]*$|\Z)",
                    re.M | re.S)
_FENCE_LINE = re.compile(r"[ \t]*(?:`{3,}[^`\n]*|~{3,}[^\n]*)")
CODE_PIECE_CHARS = 160
"""The most characters a piece of a cut code block holds (one to a few lines)."""
# A line opening with a date, a time or an epoch timestamp: 2024-05-07, 07/05/2024, 7.5.2024, 12:25:51,
# 1715080000.123 (not a decimal like 2.5 or a range like 3-5, which open wrapped prose lines too).
_STAMP = re.compile(r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|\d{1,2}:\d{2}(?::\d{2})?"
                    r"|\d{10}(?:\.\d+)?)(?![\d])")
# A syslog or ctime stamp: "May  7 12:25:51", "Tue May  7 12:25:51" (a month name and day alone open prose too).
_NAMED_STAMP = re.compile(r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s+)?(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
                          r"\s+\d{1,2}\s+\d{1,2}:\d{2}(?::\d{2})?(?!\d)")
_THOUSANDS = re.compile(r"\d,\d{3}(?!\d)")
_OTHER_LINE_BREAKS = re.compile("\r(?!\n)|[\u2028\u2029\f]")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_HEADING = re.compile(r"[ \t]*#{1,6}\s")
_LIST = re.compile(r"[ \t]*(?:[-*+\u2022]|\d{1,3}[.)]|[a-zA-Z][.)])\s")
_TABLE = re.compile(r"[ \t]*\|")
# A line opening with a quote, brace or bracket starts a record (JSON, key-value dumps), not wrapped prose.
_RECORD_START = re.compile(r"[\"'{}\[\]<]")
# A line whose last character is one of these ends its sentence (lines are trimmed, so no regex is needed).
_LINE_END_TERMINAL = frozenset(".!?:;\u3002\uff01\uff1f\uff1a\"')]")
# A sentence ends after terminal punctuation (plus closing quotes/brackets) followed by
# whitespace, or right after a CJK full stop. The leading character class lets ``re`` skip ahead fast;
# the look-behinds pick the Latin or the CJK rule for the run that follows.
_SENT_END = re.compile(
    r"[.!?\u3002\uff01\uff1f](?:(?<=[.!?])[.!?]*[\"'\u201d\u2019)\]]*(?=\s)"
    r"|(?<=[\u3002\uff01\uff1f])[\u3002\uff01\uff1f]*[\"'\u201d\u2019\u300d\u300f)\]]*)"
)
# Abbreviations that never end a sentence (titles, Latin, units before a name or number) ...
_ABBREV = frozenset(
    "mr mrs ms dr prof sr jr st vs eg ie e.g i.e fig figs gen gov sen rep col lt sgt capt mt ft approx dept vol "
    "op u.s u.k u.n a.m p.m".split()
)
# ... and ones that end a sentence when the next word is capitalised ("... and Co. The"), but not before a
# lower-case word or a number ("No. 5", "Nov. 28").
_ABBREV_UNLESS_CAPITAL = frozenset(
    "etc no nos inc ltd co corp est al jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_TERMINALS = ".!?\u3002\uff01\uff1f"  # the characters a _SENT_END match starts with
_LATIN_TERMINALS = ".!?"
# What _SENT_END's Latin rule consumes; it matches when whitespace follows.
_LATIN_RUN = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*")
_LATIN_RUN_CHARS = frozenset(".!?\"'\u201d\u2019)]")
_LONGER_THAN_ABBREVIATIONS = 7  # letters; checked against both lists in the tests
_WORD_BEFORE = re.compile(r"([\w.]+)[.!?]*$")
_NEXT_WORD = re.compile(r"\s+[\"'\u201c\u2018(\[]*(\w)")
# A Latin comma, semicolon or colon breaks a clause only before whitespace (or the end): "2,750",
# "10:45" and "https://" stay whole. Full-width punctuation breaks as it stands.
_CLAUSE_BREAK = re.compile(r"(?:[,;:](?=\s|\Z)|[\uff0c\uff1b\uff1a\u3001])\s*")
_SPACE = re.compile(r"\s+")
TIGHT_BREAK = re.compile(r"(?<!\d)[,;]|[,;](?!\d)")
"""A comma or semicolon with no space after it, not between two digits: where text without whitespace is cut."""

MAX_UNIT_CHARS = 480


NEGATED_MAX_FACTOR = 4
"""A sentence carrying a negation stays one unit up to this many times ``max_unit_chars``: cut at its clause
punctuation, its pieces would be kept or dropped apart ("safe for adults" without "but not for children")."""


def segment(text: str, max_unit_chars: int = MAX_UNIT_CHARS) -> list[Unit]:
    """Split ``text`` into units; see the module docstring for the rules."""
    return [Unit(*row) for row in _segment_rows(text, max_unit_chars)]


def segment_arrays(text: str, max_unit_chars: int = MAX_UNIT_CHARS) -> tuple[np.ndarray, ...]:
    """:func:`segment` as int64 columns ``(start, end, paragraph, kind)``: no per-unit objects."""
    rows = _segment_rows(text, max_unit_chars)
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=4 * len(rows))
    start, end, paragraph, kind = flat.reshape(-1, 4).T.copy()  # contiguous columns
    return start, end, paragraph, kind


def _segment_rows(text: str, max_unit_chars: int) -> list[tuple[int, int, int, int]]:
    """:func:`segment` as ``(start, end, paragraph, kind)`` tuples."""
    if ("\r" in text and text.count("\r") != text.count("\r\n")) or "\u2028" in text or "\u2029" in text \
            or "\f" in text:
        # classic Mac line ends, Unicode line/paragraph separators, page breaks: read as "\n" (one character
        # for one, so every offset stays the original text's)
        text = _OTHER_LINE_BREAKS.sub("\n", text)
    rows: list[tuple[int, int, int, int]] = []
    para = 0
    pos = 0
    fences = _FENCE.finditer(text) if "```" in text or "~~~" in text else ()  # a fence needs three in a row
    for m in fences:
        para = _segment_prose(text, pos, m.start(), para, rows, max_unit_chars)
        s, e = _strip(text, m.start(), m.end())
        if s < e:
            rows.extend((cs, ce, para, CODE) for cs, ce in _code_chunks(text, s, e, max_unit_chars))
            para += 1
        pos = m.end()
    _segment_prose(text, pos, len(text), para, rows, max_unit_chars)
    return rows


def paragraphs(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Spans of blank-line separated paragraphs, whitespace trimmed."""
    end = len(text) if end is None else end
    out: list[tuple[int, int]] = []
    pos = start
    for m in _BLANK_LINES.finditer(text, start, end):
        s, e = _strip(text, pos, m.start())
        if s < e:
            out.append((s, e))
        pos = m.end()
    s, e = _strip(text, pos, end)
    if s < e:
        out.append((s, e))
    return out


def sentences(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentence spans inside ``text[start:end]``, whitespace trimmed."""
    end = len(text) if end is None else end
    ends = [(m.start(), m.end()) for m in _SENT_END.finditer(text, start, end)]
    return _cut_sentences(text, start, end, ends)


def _cut_sentences(text: str, start: int, end: int, ends: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sentence spans of ``text[start:end]`` given the ``_SENT_END`` matches inside it."""
    out: list[tuple[int, int]] = []
    pos = start
    n = _LONGER_THAN_ABBREVIATIONS
    for m_start, cut in ends:
        if (
            text[m_start] == "."
            and not (m_start - pos >= n and text[m_start - n:m_start].isalnum())  # a long word: no abbreviation
            and _is_abbreviation(text, pos, m_start)
        ):
            continue
        # inline _strip for the usual sentence: one space before it (or none), punctuation at its end
        s = pos + 1 if text[pos].isspace() else pos
        if s < cut and not text[s].isspace() and not text[cut - 1].isspace():
            out.append((s, cut))
        else:
            s, e = _strip(text, pos, cut)
            if s < e:
                out.append((s, e))
        pos = cut
    s, e = _strip(text, pos, end)
    if s < e:
        out.append((s, e))
    return out


class _SentenceEnds:
    """The ``_SENT_END`` matches starting in ``text[start:end]``, found once; :meth:`within` gives one line's.

    Equal to ``_SENT_END.finditer(text, start, end)`` for a trimmed line: matches hold no whitespace,
    so none crosses into a line, and the only one a bounded search would miss (ending at ``end``,
    where its look-ahead needs the next character) cuts where the line ends anyway. Candidates come
    from ``str.find``: ``re`` scans for a leading character class several times slower.
    """

    __slots__ = ("ends", "starts")

    def __init__(self, text: str, start: int = 0, end: int | None = None) -> None:
        end = len(text) if end is None else end
        candidates: list[int] = []
        for ch in _TERMINALS:
            candidates += _find_all(text, ch, start, end)
        candidates.sort()
        self.starts: list[int] = []
        self.ends: list[int] = []
        scan = 0
        for p in candidates:
            if p < scan:
                continue
            after = text[p + 1:p + 2]
            if text[p] in _LATIN_TERMINALS and after not in _LATIN_RUN_CHARS:
                if not after.isspace():
                    continue  # "3.14", "e.g": no match, and none consumed
                scan = p + 1  # the usual ". ": the match is the one character
            else:
                scan, found = _sentence_end_at(text, p)
                if not found:
                    continue
            self.starts.append(p)
            self.ends.append(scan)

    def within(self, start: int, end: int) -> Iterable[tuple[int, int]]:
        i = bisect_left(self.starts, start)
        j = bisect_right(self.ends, end)
        return zip(self.starts[i:j], self.ends[i:j], strict=True)


def _sentence_end_at(text: str, p: int) -> tuple[int, bool]:
    """End of the ``_SENT_END`` match at ``p`` (a terminal) and whether there is one; if not, no match
    starts before that end either. The Latin rule is followed without the regex: it backtracks through
    a run of terminals at every start in it, quadratic on a long run of dots."""
    if text[p] not in _LATIN_TERMINALS:
        m = _SENT_END.match(text, p)  # a CJK stop always ends a sentence
        return (m.end(), True) if m else (p + 1, False)
    m = _LATIN_RUN.match(text, p)
    end = m.end() if m else p + 1
    return end, text[end:end + 1].isspace()


def _find_all(text: str, ch: str, start: int, end: int) -> list[int]:
    out: list[int] = []
    p = text.find(ch, start, end)
    while p >= 0:
        out.append(p)
        p = text.find(ch, p + 1, end)
    return out


def clauses(text: str, start: int, end: int, min_words: int = 3) -> list[tuple[int, int]]:
    """Clause spans of one sentence, split at commas, semicolons and colons.

    Pieces shorter than ``min_words`` words are merged into their neighbour so that a
    clause can stand on its own.
    """
    breaks = [(m.start(), m.end()) for m in _CLAUSE_BREAK.finditer(text, start, end)]
    if breaks:
        # a piece runs from the end of a break (its spaces taken: a non-space follows) to the next break's
        # punctuation; only the first and the last piece need trimming
        pieces = [_strip(text, start, breaks[0][1])]
        pieces += [(a, b + 1) for (_, a), (b, _) in pairwise(breaks)]
        pieces.append(_strip(text, breaks[-1][1], end))
    else:
        pieces = [_strip(text, start, end)]
    merged: list[list[int]] = []  # [start, end, words], words counted up to min_words
    for s, e in pieces:
        if s >= e:
            continue
        words = len(text[s:e].split(None, min_words - 1))  # min(word count, min_words)
        if merged and merged[-1][2] < min_words:
            # only whitespace lies between the pieces: the counts add up, less one word when none separates them
            last = merged[-1]
            last[2] = min(last[2] + words - (last[1] == s), min_words)
            last[1] = e
        else:
            merged.append([s, e, words])
    if len(merged) > 1 and merged[-1][2] < min_words:
        last = merged.pop()
        merged[-1][1] = last[1]
    return [(s, e) for s, e, _ in merged]


def _segment_prose(
    text: str, start: int, end: int, para: int, rows: list[tuple[int, int, int, int]], max_chars: int
) -> int:
    marks = _SentenceEnds(text, start, end)
    for ps, pe in paragraphs(text, start, end):
        for ls, le, kind in _logical_lines(text, ps, pe):
            if kind == SENTENCE:
                spans = _cut_sentences(text, ls, le, marks.within(ls, le))
            elif kind == LIST_ITEM:
                spans = _item_sentences(text, ls, le, marks)
            else:
                spans = [(ls, le)]
            for j, (s, e) in enumerate(spans):
                k = kind if j == 0 else SENTENCE
                # a negated sentence or a table row stays whole up to 4x the limit: its halves, kept or dropped
                # apart, would read as the opposite, or as a row that lost its cells unmarked
                if e - s > max_chars and not (e - s <= NEGATED_MAX_FACTOR * max_chars
                                              and (k == TABLE_ROW or has_negation(text, s, e))):
                    piece_kind = FRAGMENT if k == SENTENCE else k
                    rows.extend((fs, fe, para, piece_kind) for fs, fe in _split_long(text, s, e, max_chars))
                else:
                    rows.append((s, e, para, k))
        para += 1
    return para


def _logical_lines(text: str, start: int, end: int) -> list[tuple[int, int, int]]:
    """Join hard-wrapped prose lines; keep headings, list items and table rows apart."""
    out: list[list[int]] = []
    pos = start
    prev = (start, start)  # the last non-blank physical line
    while pos < end:
        nl = text.find("\n", pos, end)
        line_end = end if nl < 0 else nl
        s, e = _strip(text, pos, line_end)
        if s < e:
            kind = SENTENCE if _plain_start(text, s, e) else _line_kind(text, pos, line_end)
            if (
                out
                and kind == SENTENCE
                and out[-1][2] in (SENTENCE, LIST_ITEM)
                and text[out[-1][1] - 1] not in _LINE_END_TERMINAL
                and not _RECORD_START.match(text, s, e)
                and not _records(text, prev, (s, e))
            ):
                out[-1][1] = e
            else:
                out.append([s, e, kind])
            prev = (s, e)
        pos = line_end + 1
    return [(s, e, k) for s, e, k in out]


def _records(text: str, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Two lines that read as records of one file, not as prose wrapped across them: both open with a
    date or time (log lines, syslog's "May  7 12:25:51" too), or both hold a tab, or both hold the same
    number (two or more) of delimiting commas or semicolons (:func:`_delimiters`; CSV rows, a CSV header
    and its first row; prose puts a space after its commas and has many more spaces than commas)."""
    (a0, a1), (b0, b1) = a, b
    if _stamped(text, a0, a1) and _stamped(text, b0, b1):
        return True
    if text.find("\t", a0, a1) >= 0 and text.find("\t", b0, b1) >= 0:
        return True
    for sep in ",;":
        n = _delimiters(text, a0, a1, sep)
        if n >= 2 and n == _delimiters(text, b0, b1, sep):
            return True
    return False


def _stamped(text: str, start: int, end: int) -> bool:
    first = text[start]
    if first.isdigit():
        return _STAMP.match(text, start, end) is not None
    return first in "ADFJMNOSTW" and _NAMED_STAMP.match(text, start, end) is not None


def _delimiters(text: str, start: int, end: int, sep: str) -> int:
    """Delimiting ``sep`` in a line: all of them in a line without spaces ("2019,125,377"); else those
    that are no thousands separators, and 0 when they are fewer than a third of the line's spaces."""
    n = text.count(sep, start, end) - text.count(sep + " ", start, end)
    if n < 2:
        return 0
    spaces = text.count(" ", start, end)
    if not spaces:
        return n
    if sep == ",":
        n -= len(_THOUSANDS.findall(text, start, end))
    return n if 3 * n >= spaces else 0


def _plain_start(text: str, s: int, e: int) -> bool:
    """The trimmed line ``text[s:e]`` opens with a letter that starts no table row, heading or list marker."""
    return text[s].isalpha() and text[s + 1:min(s + 2, e)] not in (".", ")")


def _line_kind(text: str, start: int, end: int) -> int:
    if _TABLE.match(text, start, end):
        return TABLE_ROW
    if _HEADING.match(text, start, end):
        return HEADING
    if _LIST.match(text, start, end):
        return LIST_ITEM
    return SENTENCE


def _split_long(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut an over-long span at clause breaks, then whitespace, then hard, packing greedily."""
    cuts = [m.end() for m in _CLAUSE_BREAK.finditer(text, start, end)]
    pieces = _pack(text, start, end, cuts, max_chars)
    out: list[tuple[int, int]] = []
    for s, e in pieces:
        if e - s <= max_chars:
            out.append((s, e))
            continue
        ws = [m.end() for m in _SPACE.finditer(text, s, e)]
        for s2, e2 in _pack(text, s, e, ws, max_chars):
            if e2 - s2 <= max_chars:
                out.append((s2, e2))
                continue
            # no whitespace (minified JSON, a long URL list): after a comma or semicolon not inside a number
            # ("},{" yes, "2,750" no), else a hard cut between whole characters
            tight = [m.end() for m in TIGHT_BREAK.finditer(text, s2, e2)]
            for s3, e3 in _pack(text, s2, e2, tight, max_chars):
                while e3 - s3 > max_chars:
                    cut = grapheme_cut(text, s3 + max_chars, s3 + 1)
                    out.append((s3, cut))
                    s3 = cut
                out.append((s3, e3))
    return [(s, e) for s, e in (_strip(text, a, b) for a, b in out) if s < e]


def _pack(text: str, start: int, end: int, cuts: list[int], max_chars: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    piece_start = start
    last_cut = start
    for c in [*cuts, end]:
        if c - piece_start > max_chars and last_cut > piece_start:
            out.append((piece_start, last_cut))
            piece_start = last_cut
        last_cut = c
    if piece_start < end:
        out.append((piece_start, end))
    return out


def _item_sentences(text: str, start: int, end: int, marks: _SentenceEnds) -> list[tuple[int, int]]:
    """Sentences of a list item; its marker ("1.", "a)") is not a sentence end."""
    body = start
    while (m := _LIST.match(text, body, end)) is not None:  # nested markers: "- 1. item"
        body = m.end()
    spans = _cut_sentences(text, body, end, marks.within(body, end))
    if not spans:
        return [(start, end)]
    return [(start, spans[0][1]), *spans[1:]]


def _is_abbreviation(text: str, seg_start: int, dot: int) -> bool:
    n = _LONGER_THAN_ABBREVIATIONS
    if dot - seg_start >= n and text[dot - n:dot].isalnum():
        return False  # a word too long for an abbreviation ends at the dot
    lo = max(seg_start, dot - 12)
    ch = text[dot - 1] if dot > lo else ""
    if ch.isalnum() or ch == "_":
        word = _word_before(text, lo, dot)  # what _WORD_BEFORE finds here, without its backtracking search
    else:
        m = _WORD_BEFORE.search(text, lo, dot)
        if not m:
            return False
        word = m.group(1)
    word = word.lower()
    if word in _ABBREV:
        return True
    if word in _ABBREV_UNLESS_CAPITAL:
        nxt = _NEXT_WORD.match(text, dot + 1)
        return not (nxt and nxt.group(1)[0].isupper())
    # initials ("J. Smith") and decimals are not ends; a lone capital letter is an initial
    if len(word) == 1 and word.isalpha() and text[dot - 1].isupper():
        return True
    return False


def _word_before(text: str, lo: int, dot: int) -> str:
    """The run of word characters and dots ending at ``dot`` (``text[dot - 1]`` a word character), from ``lo``.

    Only its first ``_LONGER_THAN_ABBREVIATIONS`` characters back are read: a longer run is no abbreviation.
    """
    stop = max(lo, dot - _LONGER_THAN_ABBREVIATIONS)
    word = text[text.rfind(" ", stop, dot) + 1 or stop:dot]  # usually a space before the word
    core = word.replace(".", "").replace("_", "")
    if not core or core.isalnum():
        return word
    i = dot - 1  # other characters before it: walk back
    while i > stop and (text[i - 1].isalnum() or text[i - 1] in "._"):  # \w or "."
        i -= 1
    return text[i:dot]


def _code_chunks(text: str, start: int, end: int, max_chars: int) -> Iterable[tuple[int, int]]:
    """A fenced block as one unit, or cut into units of at most ``max_chars``.

    Kept whole, a long block (or an unclosed fence running to the end of a truncated answer)
    could only be kept or dropped entirely, so a budget smaller than it dropped all of it. Cut,
    its opening and closing fence lines are units of their own (:func:`is_fence_line`; the
    compressors always keep them, so kept code stays fenced) and the lines between are cut at
    line ends into pieces of at most ``CODE_PIECE_CHARS`` (a few lines each, so a budget can take
    part of a block as closely as it takes part of prose), each piece starting with its first
    line's indentation; a single longer line is cut at its last space that fits, else hard.
    """
    if end - start <= max_chars:
        yield start, end
        return
    first = text.find("\n", start, end)
    if first < 0:  # one line: no fences to keep apart
        first = start
    else:
        yield _strip(text, start, first)
        last = text.rfind("\n", first, end)
        if last > first and _FENCE_LINE.fullmatch(text, last + 1, end):
            yield from _code_lines(text, first + 1, last, min(max_chars, CODE_PIECE_CHARS), max_chars)
            yield _strip(text, last + 1, end)
            return
        first += 1
    yield from _code_lines(text, first, end, min(max_chars, CODE_PIECE_CHARS), max_chars)


def _code_lines(text: str, start: int, end: int, max_chars: int, line_chars: int) -> Iterable[tuple[int, int]]:
    """Pieces of whole lines, at most ``max_chars`` each; one line longer than that is a piece of its own up
    to ``line_chars`` (its halves, kept or dropped apart, recombined into lines the code never had), and only
    a longer one is cut, at a space, else at the limit."""
    pos = start
    while pos < end:
        cut = end
        if end - pos > max_chars:
            cut = text.rfind("\n", pos, pos + max_chars)
            if cut <= pos:  # the first line alone is longer than a piece
                line_end = text.find("\n", pos, end)
                line_end = end if line_end < 0 else line_end
                if line_end - pos <= line_chars:
                    cut = line_end if line_end < end else end - 1
                else:
                    cut = text.rfind(" ", pos, pos + line_chars)
                    if cut <= pos:
                        cut = grapheme_cut(text, pos + line_chars, pos + 1) - 1
            cut += 1  # past the line break or space (a hard cut was moved back one for this)
        s, e = _strip(text, pos, cut)
        if s < e:
            line = text.rfind("\n", pos, s) + 1
            yield max(line, pos), e  # keep the indentation of the piece's first line
        pos = cut


def grapheme_cut(text: str, cut: int, lowest: int) -> int:
    """``cut`` moved back (not below ``lowest``) to the nearest boundary between user-perceived characters
    (Unicode extended grapheme clusters, UAX #29): never inside a Thai syllable's marks, a decomposed accent,
    a flag, a Hangul jamo syllable or an emoji ZWJ sequence. ``lowest - 1`` must itself be a boundary; a
    single cluster longer than the whole range is cut at ``cut`` all the same."""
    if cut <= lowest or cut >= len(text):
        return cut
    best = -1
    # scanning starts at a known boundary; clusters are short, so a little lookahead settles the one at ``cut``
    for m in _GRAPHEME.finditer(text, lowest - 1, min(len(text), cut + _GRAPHEME_LOOKAHEAD)):
        if m.end() > cut:
            break
        best = m.end()
    return best if best >= lowest else cut


_GRAPHEME = regex.compile(r"\X")
_GRAPHEME_LOOKAHEAD = 64


def is_fence_line(piece: str) -> bool:
    """Is this unit text a lone fence line (````` ```python `````, ``~~~``) cut off a long code block?"""
    return "\n" not in piece and _FENCE_LINE.fullmatch(piece) is not None


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` narrowed past leading and trailing whitespace (``str.isspace``); empty -> (end, end)."""
    if start >= end:
        return end, end
    s = start
    if text[s].isspace():
        s += 1  # the usual single space after a sentence end
    if s < end and not text[s].isspace() and not text[end - 1].isspace():
        return s, end
    piece = text[start:end]  # more whitespace: let str.strip find the edges
    core = piece.strip()
    if not core:
        return end, end
    s = start + len(piece) - len(piece.lstrip())
    return s, s + len(core)
