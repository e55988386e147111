"""Segmentation into paragraphs, sentences and clauses with exact character spans.

Every non-whitespace character of the input lies in exactly one unit, and units are in
order, so selecting units and joining them never rewrites text. Structure that a
sentence splitter would tear apart is kept whole: fenced code blocks, table rows,
list items and headings are units of their own. Sentences end at ``.!?`` followed by
space, or at CJK full stops (no space needed). Over-long units (no punctuation, JSON
lines, key-value dumps) are cut at clause punctuation, then at whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
# an unclosed fence runs to the end. ``\r`` is allowed before line ends (Windows text).
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*\1[`~]*[ \t\r]*$|\Z)", re.M | re.S)
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_HEADING = re.compile(r"[ \t]*#{1,6}\s")
_LIST = re.compile(r"[ \t]*(?:[-*+\u2022]|\d{1,3}[.)]|[a-zA-Z][.)])\s")
_TABLE = re.compile(r"[ \t]*\|")
# A line opening with a quote, brace or bracket starts a record (JSON, key-value dumps), not wrapped prose.
_RECORD_START = re.compile(r"[\"'{}\[\]<]")
_LINE_END_TERMINAL = re.compile(r"[.!?:;\u3002\uff01\uff1f\uff1a\"'\)\]]\s*$")
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
_WORD_BEFORE = re.compile(r"([\w.]+)[.!?]*$")
_NEXT_WORD = re.compile(r"\s+[\"'\u201c\u2018(\[]*(\w)")
_CLAUSE_BREAK = re.compile(r"[,;:\uff0c\uff1b\uff1a\u3001]\s*")
_SPACE = re.compile(r"\s+")

MAX_UNIT_CHARS = 480


def segment(text: str, max_unit_chars: int = MAX_UNIT_CHARS) -> list[Unit]:
    """Split ``text`` into units; see the module docstring for the rules."""
    units: list[Unit] = []
    para = 0
    pos = 0
    for m in _FENCE.finditer(text):
        para = _segment_prose(text, pos, m.start(), para, units, max_unit_chars)
        s, e = _strip(text, m.start(), m.end())
        if s < e:
            units.append(Unit(s, e, para, CODE))
            para += 1
        pos = m.end()
    _segment_prose(text, pos, len(text), para, units, max_unit_chars)
    return units


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
    out: list[tuple[int, int]] = []
    pos = start
    for m in _SENT_END.finditer(text, start, end):
        cut = m.end()
        if text[m.start()] == "." and _is_abbreviation(text, pos, m.start()):
            continue
        s, e = _strip(text, pos, cut)
        if s < e:
            out.append((s, e))
        pos = cut
    s, e = _strip(text, pos, end)
    if s < e:
        out.append((s, e))
    return out


def clauses(text: str, start: int, end: int, min_words: int = 3) -> list[tuple[int, int]]:
    """Clause spans of one sentence, split at commas, semicolons and colons.

    Pieces shorter than ``min_words`` words are merged into their neighbour so that a
    clause can stand on its own.
    """
    pieces: list[list[int]] = []
    pos = start
    for m in _CLAUSE_BREAK.finditer(text, start, end):
        s, e = _strip(text, pos, m.end())
        if s < e:
            pieces.append([s, e])
        pos = m.end()
    s, e = _strip(text, pos, end)
    if s < e:
        pieces.append([s, e])
    merged: list[list[int]] = []
    for piece in pieces:
        if merged and _word_count(text, merged[-1][0], merged[-1][1]) < min_words:
            merged[-1][1] = piece[1]
        else:
            merged.append(piece)
    if len(merged) > 1 and _word_count(text, merged[-1][0], merged[-1][1]) < min_words:
        last = merged.pop()
        merged[-1][1] = last[1]
    return [(s, e) for s, e in merged]


def _segment_prose(
    text: str, start: int, end: int, para: int, units: list[Unit], max_chars: int
) -> int:
    for ps, pe in paragraphs(text, start, end):
        for ls, le, kind in _logical_lines(text, ps, pe):
            if kind in (SENTENCE, LIST_ITEM):
                spans = _item_sentences(text, ls, le) if kind == LIST_ITEM else sentences(text, ls, le)
                kinds = [kind] + [SENTENCE] * (len(spans) - 1)
            else:
                spans, kinds = [(ls, le)], [kind]
            for (s, e), k in zip(spans, kinds, strict=True):
                if e - s > max_chars:
                    for fs, fe in _split_long(text, s, e, max_chars):
                        units.append(Unit(fs, fe, para, FRAGMENT if k == SENTENCE else k))
                else:
                    units.append(Unit(s, e, para, k))
        para += 1
    return para


def _logical_lines(text: str, start: int, end: int) -> list[tuple[int, int, int]]:
    """Join hard-wrapped prose lines; keep headings, list items and table rows apart."""
    out: list[list[int]] = []
    pos = start
    while pos < end:
        nl = text.find("\n", pos, end)
        line_end = end if nl < 0 else nl
        s, e = _strip(text, pos, line_end)
        if s < e:
            kind = _line_kind(text, pos, line_end)
            if (
                out
                and kind == SENTENCE
                and out[-1][2] in (SENTENCE, LIST_ITEM)
                and not _LINE_END_TERMINAL.search(text, out[-1][0], out[-1][1])
                and not _RECORD_START.match(text, s, e)
            ):
                out[-1][1] = e
            else:
                out.append([s, e, kind])
        pos = line_end + 1
    return [(s, e, k) for s, e, k in out]


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
            while e2 - s2 > max_chars:  # no whitespace at all: hard cut
                out.append((s2, s2 + max_chars))
                s2 += max_chars
            out.append((s2, e2))
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


def _item_sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentences of a list item; its marker ("1.", "a)") is not a sentence end."""
    body = start
    while (m := _LIST.match(text, body, end)) is not None:  # nested markers: "- 1. item"
        body = m.end()
    spans = sentences(text, body, end)
    if not spans:
        return [(start, end)]
    return [(start, spans[0][1]), *spans[1:]]


def _is_abbreviation(text: str, seg_start: int, dot: int) -> bool:
    m = _WORD_BEFORE.search(text, max(seg_start, dot - 12), dot)
    if not m:
        return False
    word = m.group(1).lower()
    if word in _ABBREV:
        return True
    if word in _ABBREV_UNLESS_CAPITAL:
        nxt = _NEXT_WORD.match(text, dot + 1)
        return not (nxt and nxt.group(1)[0].isupper())
    # initials ("J. Smith") and decimals are not ends; a lone capital letter is an initial
    if len(word) == 1 and word.isalpha() and text[dot - 1].isupper():
        return True
    return False


def _word_count(text: str, start: int, end: int) -> int:
    return len(text[start:end].split())


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` narrowed past leading and trailing whitespace (``str.isspace``); empty -> (end, end)."""
    piece = text[start:end]
    core = piece.strip()
    if not core:
        return end, end
    s = start + len(piece) - len(piece.lstrip())
    return s, s + len(core)
