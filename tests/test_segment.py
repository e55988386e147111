"""Segmentation: exact spans, structure kept whole, and the coverage invariant on awkward text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocsdk import Compressor
from pocsdk.text.segment import (
    _ABBREV,
    _ABBREV_UNLESS_CAPITAL,
    _LONGER_THAN_ABBREVIATIONS,
    _NEXT_WORD,
    CODE,
    FRAGMENT,
    HEADING,
    KIND_NAMES,
    LIST_ITEM,
    SENTENCE,
    TABLE_ROW,
    Unit,
    _cut_sentences,
    _is_abbreviation,
    _logical_lines,
    _SentenceEnds,
    _strip,
    clauses,
    is_fence_line,
    paragraphs,
    segment,
    segment_arrays,
    sentences,
)


def check_invariant(text: str, units: list[Unit]) -> None:
    """Units are sorted, disjoint, trimmed, and cover every non-whitespace character exactly once."""
    covered = [0] * len(text)
    prev_end = 0
    for u in units:
        assert 0 <= u.start < u.end <= len(text)
        assert u.start >= prev_end, "units overlap or are out of order"
        # trimmed, except that a piece of a long code block keeps its first line's indentation
        indented_code = u.kind == CODE and text[u.start] in " \t" and (u.start == 0 or text[u.start - 1] == "\n")
        assert (not text[u.start].isspace() or indented_code) and not text[u.end - 1].isspace()
        prev_end = u.end
        for i in range(u.start, u.end):
            covered[i] += 1
    for i, ch in enumerate(text):
        if not ch.isspace():
            assert covered[i] == 1, f"char {i} {ch!r} covered {covered[i]} times"


def texts(text: str, max_unit_chars: int = 480) -> list[str]:
    units = segment(text, max_unit_chars)
    check_invariant(text, units)
    return [text[u.start:u.end] for u in units]


def kinds(text: str) -> list[str]:
    return [KIND_NAMES[u.kind] for u in segment(text)]


def test_plain_sentences_have_exact_spans() -> None:
    text = "The cat sat.  The dog ran!   Did it? Yes."
    assert texts(text) == ["The cat sat.", "The dog ran!", "Did it?", "Yes."]


def test_cjk_sentences_split_without_spaces() -> None:
    text = "我们今天去公园。天气很好！你去吗？好的"
    assert texts(text) == ["我们今天去公园。", "天气很好！", "你去吗？", "好的"]


def test_mixed_cjk_and_latin() -> None:
    text = "東京は日本の首都です。Tokyo is big. 大阪も大きい！"
    assert texts(text) == ["東京は日本の首都です。", "Tokyo is big.", "大阪も大きい！"]


@pytest.mark.parametrize("fence", ["```", "~~~", "````"])
def test_fenced_code_is_one_unit_even_with_blank_lines_and_periods(fence: str) -> None:
    code = f"{fence}python\nx = 1. \n\ndef f():\n    return x. y\n{fence}"
    text = f"Intro. Before code.\n{code}\nAfter code."
    units = segment(text)
    check_invariant(text, units)
    code_units = [u for u in units if u.kind == CODE]
    assert len(code_units) == 1
    assert text[code_units[0].start:code_units[0].end] == code
    assert texts(text)[-1] == "After code."


def test_unclosed_fence_runs_to_end() -> None:
    text = "Intro.\n```\ncode line. more\n\nstill code"
    units = segment(text)
    check_invariant(text, units)
    assert [KIND_NAMES[u.kind] for u in units] == ["sentence", "code"]


def test_long_fence_is_cut_at_line_ends_into_one_paragraph() -> None:
    code = "```python\n" + "\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(80)) + "\n```"
    text = "Intro.\n\n" + code + "\n\nAfter."
    units = segment(text, max_unit_chars=200)
    check_invariant(text, units)
    code_units = [u for u in units if u.kind == CODE]
    assert len(code_units) > 5 and max(u.end - u.start for u in code_units) <= 200
    assert len({u.paragraph for u in code_units}) == 1
    # cut at line ends, never inside a line; together the pieces are the block
    assert all(text[u.end] == "\n" for u in code_units[:-1])
    assert text[code_units[0].start:code_units[-1].end] == code
    pieces = [text[u.start:u.end] for u in code_units]
    assert pieces[0] == "```python" and pieces[-1] == "```"  # the fences are units of their own
    assert all(is_fence_line(p) == (p.startswith("```")) for p in pieces)
    assert any(p.startswith("    return") for p in pieces)  # a piece keeps its first line's indentation


def test_unclosed_long_fence_is_cut_too() -> None:
    text = "Here is the answer:\n\n```\n" + "The refund rule number one applies. " * 60
    units = segment(text, max_unit_chars=300)
    check_invariant(text, units)
    assert [KIND_NAMES[u.kind] for u in units][:2] == ["sentence", "code"]
    assert max(u.end - u.start for u in units) <= 300  # one long line: cut at the limit


def test_inner_shorter_fence_does_not_close_longer_one() -> None:
    text = "````\nouter ``` inner\n```\nstill\n````\nDone."
    assert texts(text) == ["````\nouter ``` inner\n```\nstill\n````", "Done."]


def test_headings_and_list_items_are_units() -> None:
    text = "# Title\nIntro text. More.\n\n- first item\n- second item. Its second sentence.\n1. numbered\n2) other"
    assert texts(text) == [
        "# Title", "Intro text.", "More.", "- first item", "- second item.", "Its second sentence.",
        "1. numbered", "2) other",
    ]
    assert kinds(text) == ["heading", "sentence", "sentence", "list_item", "list_item", "sentence",
                           "list_item", "list_item"]


def test_list_marker_is_not_a_sentence_end() -> None:
    assert texts("1. first\n2. second\n- 3. nested") == ["1. first", "2. second", "- 3. nested"]


def test_each_table_row_is_a_unit() -> None:
    text = "| name | age |\n|---|---|\n| Ann. B | 3.5 |\n| Bo | 4 |\nAfter."
    assert texts(text) == ["| name | age |", "|---|---|", "| Ann. B | 3.5 |", "| Bo | 4 |", "After."]
    assert kinds(text)[:4] == ["table_row"] * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        ("Fruit, e.g. apples, i.e. food. Next one.", ["Fruit, e.g. apples, i.e. food.", "Next one."]),
        ("He lives in the U.S. now. Next.", ["He lives in the U.S. now.", "Next."]),
        ("J. R. R. Tolkien wrote it. Then more.", ["J. R. R. Tolkien wrote it.", "Then more."]),
        ("Pi is 3.14159 roughly. Version 2.0 shipped.", ["Pi is 3.14159 roughly.", "Version 2.0 shipped."]),
        ("See No. 5 and Nov. 28 here. Done.", ["See No. 5 and Nov. 28 here.", "Done."]),
        ("He said no. Then he left.", ["He said no.", "Then he left."]),
        ("Apples, pears, etc. Then more.", ["Apples, pears, etc.", "Then more."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("At 5 p.m. Sunday they met. Fine.", ["At 5 p.m. Sunday they met.", "Fine."]),
    ],
)
def test_abbreviations_initials_and_decimals(text: str, expected: list[str]) -> None:
    assert texts(text) == expected


def test_hard_wrapped_prose_is_joined_into_sentences() -> None:
    text = "This sentence is hard\nwrapped at odd\nplaces. And this one\ncontinues here."
    assert texts(text) == ["This sentence is hard\nwrapped at odd\nplaces.", "And this one\ncontinues here."]


def test_json_dump_without_sentence_punctuation_is_split_small() -> None:
    text = "{" + ", ".join(f'"key{i}": "value number {i}"' for i in range(200)) + "}"
    units = segment(text, 120)
    check_invariant(text, units)
    assert len(units) > 20
    assert all(u.end - u.start <= 120 for u in units)
    assert all(u.kind == FRAGMENT for u in units)
    # cuts land at clause punctuation, never inside a quoted key or value
    assert all(text[u.end - 1] in ",:}" for u in units)


def test_key_value_dump_and_unbroken_run_are_split() -> None:
    kv = " ".join(f"k{i}=v{i}" for i in range(300))
    assert all(len(t) <= 100 for t in texts(kv, 100))
    blob = "x" * 1000
    pieces = texts(blob, 100)
    assert pieces == ["x" * 100] * 10


def test_windows_line_endings_and_tabs() -> None:
    text = "Line one.\r\nLine two.\r\n\r\nPara two.\tTabbed.\r\n```\r\ncode\r\n```\r\nEnd."
    units = segment(text)
    check_invariant(text, units)
    assert [text[u.start:u.end] for u in units] == ["Line one.", "Line two.", "Para two.", "Tabbed.",
                                                     "```\r\ncode\r\n```", "End."]
    assert [u.paragraph for u in units][:3] == [0, 0, 1]


def test_paragraph_ids_follow_blank_lines() -> None:
    text = "A one. A two.\n\nB one.\n \t\nC one."
    assert [u.paragraph for u in segment(text)] == [0, 0, 1, 2]
    assert [text[s:e] for s, e in paragraphs(text)] == ["A one. A two.", "B one.", "C one."]


@pytest.mark.parametrize(
    "text",
    [
        "Emoji 😀 here. 👨‍👩‍👧 family. Next.",
        "Zero\u200bwidth\u200b chars. Next.\u200b\u200b",
        "lone \ud800 surrogate. And \udfff another.",
        "\ufeffBOM at start. Next.",
        "nbsp\u00a0here. Line\u2028separator. Next\u0085line.",
        "",
        "   \n\t  ",
        ".",
        "!!!???",
        "e.g.",
    ],
)
def test_odd_characters_never_crash_and_keep_the_invariant(text: str) -> None:
    texts(text)
    texts(text, 16)


def test_over_long_list_items_table_rows_and_code_are_cut() -> None:
    long_item = "- " + "word " * 200
    long_code = "```\n" + "code " * 200 + "\n```"
    text = long_item + "\n\n" + long_code
    units = segment(text, 100)
    check_invariant(text, units)
    assert max(u.end - u.start for u in units) <= 100
    assert {u.kind for u in units} == {LIST_ITEM, CODE}
    assert all(not text[u.start:u.end].startswith("ode") for u in units)  # a long code line is cut at spaces


def test_sentences_and_clauses_helpers() -> None:
    text = "One two three, four five six; seven eight nine: ten eleven twelve."
    assert sentences(text) == [(0, len(text))]
    parts = clauses(text, 0, len(text))
    assert [text[s:e] for s, e in parts] == ["One two three,", "four five six;", "seven eight nine:",
                                              "ten eleven twelve."]
    # short pieces merge into a neighbour so a clause stands on its own
    short = "Yes, but no, and then the whole thing fell apart"
    assert all(len(short[s:e].split()) >= 3 for s, e in clauses(short, 0, len(short)))


def test_kinds_are_stable_small_ints() -> None:
    assert (SENTENCE, CODE, TABLE_ROW, LIST_ITEM, HEADING, FRAGMENT) == (0, 1, 2, 3, 4, 5)


def test_one_record_per_line_json_is_one_unit_per_record() -> None:
    """Key-value dumps must not be packed into long units: a record could then never fit a small budget."""
    records = [f'"key-{i:03d}-aaaa-bbbb": "value-{i:03d}-cccc-dddd",' for i in range(40)]
    text = "{\n" + "\n".join(records) + "\n}"
    units = segment(text)
    texts = [text[u.start:u.end] for u in units]
    for rec in records:
        assert rec in texts


# -- fast paths: the same spans as the plain rules ---------------------------------------------------------
_REFERENCE_WORD_BEFORE = re.compile(r"([\w.]+)[.!?]*$")
PIECES = st.sampled_from(
    [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\u3000", ".", "!", "?", "...", "?!", ".)", '."', ",", ";", ":", "(", "-",
     "1.", "a)", "- ", "| ", "# ", "```", "the", "word", "Longword", "Mr", "Dr", "No", "no", "Inc", "etc", "U.S",
     "e.g", "approx", "J", "x", "3.14", "_x", "İ", "ı", "ſ", "東京", "。", "！", "」", "😀", "\u00a0"]
)
ROUGH_TEXT = st.lists(PIECES, min_size=0, max_size=60).map("".join)


def reference_is_abbreviation(text: str, seg_start: int, dot: int) -> bool:
    """The rule as first written: the word before the dot by a backtracking regex search."""
    m = _REFERENCE_WORD_BEFORE.search(text, max(seg_start, dot - 12), dot)
    if not m:
        return False
    word = m.group(1).lower()
    if word in _ABBREV:
        return True
    if word in _ABBREV_UNLESS_CAPITAL:
        nxt = _NEXT_WORD.match(text, dot + 1)
        return not (nxt and nxt.group(1)[0].isupper())
    return len(word) == 1 and word.isalpha() and text[dot - 1].isupper()


def test_no_abbreviation_is_as_long_as_the_long_word_shortcut() -> None:
    assert max(len(w) for w in _ABBREV | _ABBREV_UNLESS_CAPITAL) < _LONGER_THAN_ABBREVIATIONS


@settings(max_examples=300, deadline=None)
@given(text=ROUGH_TEXT, data=st.data())
def test_abbreviation_check_matches_the_regex_rule(text: str, data: st.DataObject) -> None:
    if not text:
        return
    dot = data.draw(st.integers(0, len(text) - 1))
    seg_start = data.draw(st.integers(0, dot))
    assert _is_abbreviation(text, seg_start, dot) == reference_is_abbreviation(text, seg_start, dot)


@settings(max_examples=300, deadline=None)
@given(text=ROUGH_TEXT, data=st.data())
def test_strip_matches_str_strip(text: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, len(text)))
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip())
    expected = (start + lead, start + lead + len(piece.strip())) if piece.strip() else (end, end)
    assert _strip(text, start, end) == expected


@settings(max_examples=300, deadline=None)
@given(text=ROUGH_TEXT)
def test_sentence_ends_found_once_cut_lines_as_a_bounded_search(text: str) -> None:
    ends = _SentenceEnds(text)
    for ps, pe in paragraphs(text):
        for ls, le, _ in _logical_lines(text, ps, pe):
            assert _cut_sentences(text, ls, le, ends.within(ls, le)) == sentences(text, ls, le)


@settings(max_examples=200, deadline=None)
@given(text=ROUGH_TEXT, max_chars=st.integers(16, 120))
def test_segment_arrays_are_segment_as_columns(text: str, max_chars: int) -> None:
    start, end, paragraph, kind = segment_arrays(text, max_chars)
    rows = [(u.start, u.end, u.paragraph, u.kind) for u in segment(text, max_chars)]
    assert list(zip(start.tolist(), end.tolist(), paragraph.tolist(), kind.tolist(), strict=True)) == rows


_CLAUSE_PIECES = st.sampled_from([",", ";", ":", "\uff0c", "\u3001", " ", "  ", "\n", "\u00a0", "a", "bb", "word",
                                  "x,y", "\u4e2d"])


def reference_clauses(text: str, start: int, end: int, min_words: int = 3) -> list[tuple[int, int]]:
    """The rule as first written: word counts of the merged spans recounted with ``str.split``."""
    pieces: list[list[int]] = []
    pos = start
    for m in re.finditer(r"(?:[,;:](?=\s|\Z)|[\uff0c\uff1b\uff1a\u3001])\s*", text[:end]):  # Latin: before a space
        if m.start() < start:
            continue
        s, e = _strip(text, pos, m.end())
        if s < e:
            pieces.append([s, e])
        pos = m.end()
    s, e = _strip(text, pos, end)
    if s < e:
        pieces.append([s, e])
    merged: list[list[int]] = []
    for piece in pieces:
        if merged and len(text[merged[-1][0]:merged[-1][1]].split()) < min_words:
            merged[-1][1] = piece[1]
        else:
            merged.append(piece)
    if len(merged) > 1 and len(text[merged[-1][0]:merged[-1][1]].split()) < min_words:
        last = merged.pop()
        merged[-1][1] = last[1]
    return [(s, e) for s, e in merged]


@settings(max_examples=400, deadline=None)
@given(text=st.lists(_CLAUSE_PIECES, max_size=40).map("".join), data=st.data(), min_words=st.integers(0, 5))
def test_clauses_match_the_rule_with_recounted_words(text: str, data: st.DataObject, min_words: int) -> None:
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, len(text)))
    assert clauses(text, start, end, min_words) == reference_clauses(text, start, end, min_words)


def test_log_and_csv_lines_are_records_not_wrapped_prose() -> None:
    """Lines without end punctuation used to be joined like hard-wrapped prose and then cut at ':' and
    ',' mid-line, so a compressed log held half lines ("12:25:" / "51 ERROR ...")."""
    log = "\n".join(f"2024-05-07 12:{m:02d}:51 ERROR worker-{m % 9} connection reset by peer" for m in range(40))
    epoch = "\n".join(f"{1715080000 + m}.{m:03d} INFO worker-{m % 9} job {m} done" for m in range(40))
    counts = "year,visitors,staff\n" + "\n".join(f"{2000 + i},{100 + i},{300 + i}" for i in range(40))
    shop = "name,description,price\n" + "\n".join(f"Item{i},A small blue widget for the kitchen,{i}.99"
                                                   for i in range(40))
    csv = "id,name,city,amount\n" + "\n".join(f"{i},Ann,Oslo,{i * 7}.50" for i in range(40))
    tsv = "\n".join(f"row{i}\tAnn\tOslo" for i in range(40))
    syslog = "\n".join(f"May {1 + m % 9:2d} 12:{m:02d}:51 host sshd[{900 + m}]: Accepted key for user{m}"
                       for m in range(40))
    ctime = "\n".join(f"Tue May  7 12:{m:02d}:51 2024 worker-{m % 9} connection reset" for m in range(40))
    for text in (log, csv, tsv, epoch, counts, shop, syslog, ctime):
        starts, ends, _, _ = segment_arrays(text)
        lines = text.split("\n")
        assert [text[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)] == lines
        out = Compressor(keep_rate=0.3, compressor="extractive").compress(text, "worker-3 Oslo").text
        assert set(out.split("\n")) <= set(lines)  # whole lines only
    for prose in (  # hard-wrapped prose is still one sentence (or list item) per sentence
        "The council met on Tuesday and voted to fund\nthe new bridge, the school, the library\n"
        "and two parks, all by next spring, as planned\nby the mayor.",
        "1. The company was founded in\n   1998 by two students at Stanford.",
        "The totals rose from\n1,204 in the first survey to\n3,517 in the second, which surprised them.",
        "Revenue reached $1,200,000 in the first year and\n$1,500,000 in the second year, while costs\nfell.",
        "The variables x,y,z are measured in metres and\nthe angles a,b,c are given in degrees for\nevery sample.",
        "The index rose by\n2.5 percent in May and by\n3.1 percent in June, the office said.",
        "The meeting moved from\nMay 7 at the town hall to\nJune 12 at the library, the clerk said.",
    ):
        starts, ends, _, _ = segment_arrays(prose)
        assert len(starts) == 1, prose


def test_hard_cuts_never_split_a_character() -> None:
    """A run with no spaces over the unit limit is cut hard; never inside a Thai syllable's marks, a
    decomposed accent or an emoji ZWJ sequence. The top-up prefix keeps decomposed kana whole too."""
    import unicodedata

    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    thai = "\u0e01\u0e48\u0e32\u0e27\u0e19\u0e49\u0e33" * 120  # consonants with tone and vowel marks, no spaces
    accents = unicodedata.normalize("NFD", "vi\u1ec7tn\u1eb7mqu\u1ed1cgia") * 60
    for offset in range(4):
        for run in (family * 100, thai, accents):
            text = "a" * offset + run
            starts, ends, _, _ = segment_arrays(text)
            assert len(starts) > 1
            for edge in [*starts.tolist()[1:], *ends.tolist()[:-1]]:
                assert unicodedata.category(text[edge]) not in ("Mn", "Mc", "Me") and text[edge] != "\u200d"
                assert text[edge - 1] != "\u200d", (offset, edge)
    # flags are pairs of regional indicators and decomposed Hangul syllables are jamo sequences: a cut between
    # the two halves of a flag or inside a syllable changes what the reader sees
    flags = "\U0001f1ef\U0001f1f5\U0001f1fa\U0001f1f8\U0001f1eb\U0001f1f7" * 120
    hangul = unicodedata.normalize("NFD", "\ud55c\uad6d\uc5b4\ud14d\uc2a4\ud2b8\uc640\uac01") * 80
    for offset in range(3):
        text = "a" * offset + flags
        starts, ends, _, _ = segment_arrays(text)
        assert len(starts) > 1
        assert all((edge - offset) % 2 == 0 for edge in [*starts.tolist()[1:], *ends.tolist()[:-1]]), offset
        text = "a" * offset + hangul
        starts, ends, _, _ = segment_arrays(text)
        assert len(starts) > 1
        for edge in [*starts.tolist()[1:], *ends.tolist()[:-1]]:
            assert not 0x1160 <= ord(text[edge]) <= 0x11ff, (offset, edge)  # a vowel or final jamo
    kana = unicodedata.normalize("NFD", (
        "\u30c7\u30fc\u30bf\u30d9\u30fc\u30b9\u306e\u30d0\u30c3\u30af\u30a2\u30c3\u30d7\u306f\u6bce\u65e5"
        "\u5348\u524d\u4e09\u6642\u306b\u81ea\u52d5\u3067\u5b9f\u884c\u3055\u308c\u307e\u3059\u3002\u969c\u5bb3"
        "\u304c\u767a\u751f\u3057\u305f\u5834\u5408\u306f\u3001\u30ed\u30b0\u30d5\u30a1\u30a4\u30eb\u3092\u78ba"
        "\u8a8d\u3057\u3066\u304b\u3089\u7ba1\u7406\u8005\u306b\u9023\u7d61\u3057\u3066\u304f\u3060\u3055\u3044"
        "\u3002") * 8)
    for name in ("skim", "extractive", "truncate"):
        for rate in [x / 100 for x in range(3, 95, 4)]:
            res = Compressor(keep_rate=rate, compressor=name).compress(kana, "\u30d0\u30c3\u30af\u30a2\u30c3\u30d7")
            for span in res.documents[0].spans:  # no kept span starts at, or ends just before, a voicing mark
                assert kana[span.start] not in "\u3099\u309a"
                assert span.end == len(kana) or kana[span.end] not in "\u3099\u309a", (name, rate, span)


@pytest.mark.parametrize("newline", ["\r", "\u2028", "\r\n"])
def test_other_line_breaks_segment_as_newlines(newline: str) -> None:
    """Classic Mac line ends and Unicode line separators used to leave a document one heading long."""
    prose = "The harbour grew around a fishing village. Boats found the entrance by daylight only. " * 3
    text = f"# Support policy\n\n{prose}\n\nDo not reveal the customer's address to anyone.\n\n{prose}"
    unix = segment_arrays(text)
    other = segment_arrays(text.replace("\n", newline))
    assert len(other[0]) == len(unix[0]) > 5
    out = Compressor(keep_rate=0.2, compressor="extractive").compress(text.replace("\n", newline), "boats").text
    assert "Do not reveal the customer's address" in out


def test_a_long_code_block_compresses_close_to_the_rate() -> None:
    """Pieces of a cut code block hold a few lines, so a budget takes part of it as it takes part of
    prose; with 480-character pieces a 560-token block came back as empty fences at any rate <= 0.2."""
    body = "".join(f"    result_{i} = transform(result_{i - 1}, weight={i})  # step {i}\n" for i in range(1, 50))
    text = f"Here is the code:\n\n```python\ndef pipeline(result_0):\n{body}    return result_49\n```\n\nThat was it."
    for rate in (0.1, 0.2, 0.4):
        res = Compressor(keep_rate=rate, compressor="extractive").compress(text, "transform weight")
        assert abs(res.keep_rate - rate) <= 0.1 * rate + 0.02, (rate, res.keep_rate)
        assert res.text.count("```") == 2 and "result_" in res.text  # fenced code, not empty fences


def test_latin_clause_breaks_need_a_space_after_them() -> None:
    """A comma, colon or semicolon broke a clause with nothing after it, so skim's excerpts began inside
    "2,750", "10:45" and "https://" (74 of 2,288 excerpts on multi_news were cut inside a number)."""
    from pocsdk.text.segment import clauses

    for sentence, whole in [
        ("Revenue grew to 2,750 million dollars during the last fiscal year, analysts said on Monday.", "2,750"),
        ("The train leaves at 10:45 from the central station near the river, officials said on Monday.", "10:45"),
        ("Steps are documented at https://example.com/docs/install for every platform, he said on Monday.", "https://example"),
    ]:
        pieces = [sentence[a:b] for a, b in clauses(sentence, 0, len(sentence))]
        assert len(pieces) == 2 and whole in pieces[0], pieces
    cjk = "今天天气很好，我们去公园散步吧；然后一起吃晚饭"
    assert len(clauses(cjk, 0, len(cjk), min_words=1)) == 3  # full-width punctuation breaks as it stands
    filler = " ".join(f"Paragraph {k} talks about the weather and the market in town." for k in range(40))
    target = ("Revenue at the group grew to 2,750 million dollars during the last fiscal year according to the "
              "annual filing published by the company, which analysts called strong.")
    out = Compressor(keep_rate=0.05, compressor="skim").compress(
        f"{filler}\n\n{target}\n\n{filler}", "How many million dollars of revenue according to the annual filing?")
    assert "million dollars" in out.text and "2,750 million" in out.text


def test_a_one_line_backtick_span_is_inline_code_not_an_endless_fence() -> None:
    """CommonMark: a backtick fence's info string holds no backtick. "```pip install foo```" opened a
    fence that never closed, so the rest of the document became code and its instructions lost protection."""
    text = ("Install it first.\n\n```pip install foo```\n\nAlways answer in English. The weather was mild. "
            "Markets were calm.\n\n```python\nx = 1\n```\n\nAfter the code.")
    kinds = {text[u.start:u.end]: u.kind for u in segment(text)}
    assert kinds["Always answer in English."] == SENTENCE
    assert kinds["```python\nx = 1\n```"] == CODE and kinds["After the code."] == SENTENCE
    out = Compressor(keep_rate=0.2, compressor="extractive").compress(text * 3, "weather")
    assert out.text.count("Always answer in English.") == 3
    tilde = "Intro.\n\n~~~ `shell` ~~~\nls -l\n~~~\n\nAfter."  # a tilde fence's info string may hold backticks
    assert [u.kind for u in segment(tilde)] == [SENTENCE, CODE, SENTENCE]


def test_long_code_lines_and_table_rows_are_never_cut_into_halves_that_recombine() -> None:
    """Code lines over 160 characters were cut at a space and table rows over 480 cut anywhere; the halves,
    kept or dropped apart, recombined into lines the source never had ("query_1 = ... = \\n2005 ORDER BY")."""
    lines = [f'    query_{i} = "SELECT id, name, email, created_at FROM customers WHERE region = \'r{i}\' AND '
             f'status = \'active\' AND signup_year = {2000 + i} ORDER BY created_at DESC LIMIT 100"' for i in range(8)]
    code = "Queries:\n\n```python\n" + "\n".join(lines) + "\n```\n\nThat was the code."
    units = [code[u.start:u.end] for u in segment(code) if u.kind == CODE]
    assert all(line in units for line in lines), units[:3]  # each long line is one unit, indentation kept
    cells = " | ".join(f"cell {k} holds the value {k * 37} for the regional price index" for k in range(12))
    table = "| id | data |\n|---|---|\n" + "\n".join(f"| {i} | {cells} |" for i in range(3))
    rows = [table[u.start:u.end] for u in segment(table) if u.kind == TABLE_ROW]
    assert len(rows) == 5 and all(len(r) > 480 for r in rows[2:])
    out = Compressor(keep_rate=0.3, compressor="extractive").compress(code, "signup year 2005").text
    assert all(line in code.split("\n") for line in out.split("\n") if line.strip()), out
