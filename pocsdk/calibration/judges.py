"""Judges: how well a compressed context still serves an example, relative to the full context.

A judge scores the full context and the compressed context at each factor of the grid and
returns relative performance = score(compressed) / score(full), clipped to [0, 1]. An example
whose full context already fails (score 0) carries no information and is marked unscorable.

``retention`` (offline, deterministic) has two modes:

* **span** -- for short gold answers (every answer at most ``SHORT_ANSWER_WORDS`` words, no
  ``reference``): with SQuAD normalisation ``norm`` (lower-case, punctuation, articles and extra
  spaces removed) and whole-word containment ``a in_w t`` (`` " a " `` in `` " t " ``),
  ``full = 1 if any a in_w norm(full context)``; unscorable if ``full = 0``; otherwise
  ``perf = 1 if any answer a with a in_w norm(full) has a in_w norm(compressed) else 0``.
* **recall** -- for long answers and references (summaries, long-form QA, the correct option
  text of a multiple-choice question): with ``T(x)`` the multiset of content tokens of ``norm(x)``
  (stopwords removed) and ``R = T(reference) ∩ T(full)`` (multiset intersection: the reference
  content the context supports), ``perf = |R ∩ T(compressed)| / |R|``; ``full = |R| / |T(reference)|``
  (recorded, not divided by); unscorable if ``R`` is empty.

Few-shot prompts (task ``few_shot``) are unscorable by retention: their gold is not supported by the
context; use the ``llm`` judge for them. So are golds that are only option letters or truth values
(``True``, ``no``) without a ``reference``: they say nothing about what the context must keep.
Unanswerable questions (no gold at all) are unscorable by both judges.

This module also holds the small answer metrics shared with the LLM judge (EM, F1, ROUGE-L).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from pocsdk.errors import ConfigError
from pocsdk.text.relevance import STOPWORDS
from pocsdk.text.tokens import NO_SPACE_LETTERS

if TYPE_CHECKING:  # a runtime import would be circular (datasets imports normalize_answer)
    from pocsdk.calibration.datasets import Example

SHORT_ANSWER_WORDS = 8
UNSCORABLE_TASKS = frozenset({"few_shot"})

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile("[" + re.escape(string.punctuation + "‘’“”–—…«»") + "]")  # ASCII and common typographic marks


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, punctuation to spaces, articles removed, whitespace collapsed.

    Punctuation becomes a space (not nothing) so "25,000" and "25 000" agree and words never fuse.
    """
    text = _PUNCT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def content_tokens(text: str) -> list[str]:
    """Normalised tokens without stopwords: the content a reference asks the context to carry."""
    return [t for t in answer_tokens(text) if t not in STOPWORDS]


def contains_answer(haystack_norm: str, answer_norm: str) -> bool:
    """Whole-word containment of a normalised answer in a normalised text. Scripts written without spaces
    between words (Chinese, Japanese, Thai, Korean with its attached particles) have no word edges to
    require: next to such a character, either side of the match, any position is an edge."""
    if not answer_norm:
        return False
    padded = f" {haystack_norm} "
    if f" {answer_norm} " in padded:
        return True
    if len(answer_norm) < 2 or (not _NO_SPACE.search(answer_norm) and not _NO_SPACE.search(haystack_norm)):
        return False  # one character (否, 二) is too often part of a longer word to be found inside one
    pos = padded.find(answer_norm)
    while pos >= 0:
        before, after = padded[pos - 1], padded[pos + len(answer_norm)]
        if (before == " " or _NO_SPACE.match(before) or _NO_SPACE.match(answer_norm[0])) and \
                (after == " " or _NO_SPACE.match(after) or _NO_SPACE.match(answer_norm[-1])):
            return True
        pos = padded.find(answer_norm, pos + 1)
    return False


# Characters of scripts that do not put spaces between words.
_NO_SPACE = re.compile(f"[{NO_SPACE_LETTERS}]")


# -- answer metrics ---------------------------------------------------------------------------


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def answer_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if any normalised gold occurs (whole words) in the normalised prediction (lost-in-the-middle accuracy)."""
    p = normalize_answer(prediction)
    return float(any(contains_answer(p, normalize_answer(g)) for g in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1, maximum over golds."""
    pred = answer_tokens(prediction)
    best = 0.0
    for g in golds:
        gold = answer_tokens(g)
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, golds: Sequence[str]) -> float:
    """ROUGE-L F1 (beta = 1) on normalised tokens, maximum over golds."""
    pred = answer_tokens(prediction)
    best = 0.0
    for g in golds:
        gold = answer_tokens(g)
        if not pred or not gold:
            continue
        lcs = _lcs(pred, gold)
        if lcs:
            p, r = lcs / len(pred), lcs / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


_MARKUP = re.compile(r"[*_`#]")
_CHOICE_PREFIX = re.compile(r"\b(?:final\s+answer|answer|option|choice)(?:\s+is)?\s*[:\-]?\s*", re.I)
_CHOICE_LAST = re.compile(r"\b(?:is|it's|be)\s+[(\[]?([A-H])[)\]]?\.?$")
_CHOICE_SPLIT = re.compile(r"[\s,;&/]+")
_OPTION_LETTERS = frozenset("ABCDEFGH")


def _leading_letters(tokens: Sequence[str]) -> tuple[list[str], int]:
    """Option letters at the start of ``tokens`` and how many tokens they took.

    A token is a letter (either case) in optional brackets with an optional ``.``/``:`` after it,
    or an upper-case run like ``BD``; ``and`` may join two; anything else ends the list.
    """
    letters: list[str] = []
    used = 0
    for tok in tokens:
        if tok.lower() == "and" and letters:
            used += 1
            continue
        core = tok.strip("()[]").rstrip(".:)]").lstrip("([")
        if len(core) == 1 and core.upper() in _OPTION_LETTERS:
            letters.append(core.upper())
        elif 2 <= len(core) <= 8 and set(core) <= _OPTION_LETTERS:
            letters.extend(core)
        else:
            break
        used += 1
    return letters, used


def choice_letters(text: str) -> frozenset[str]:
    """The option letters a reply names; empty if it names none.

    Read as a choice: the whole reply (``A``, ``**B**``, ``[c]``, ``A, C``, ``A and C``, ``BD``); a
    leading letter marked as one (``B: Paris``, ``(B) Paris``, ``B. Paris``); or the letters after
    ``answer``, ``final answer``, ``option`` or ``choice`` (``Answer: B``, ``The answer is b``); the first
    line when it is only letters; a closing ``... is B``.
    Not a choice: ``A new law was passed`` (a lone leading letter followed by words).
    """
    t = _MARKUP.sub("", text).strip()
    for part in (t, t.split("\n", 1)[0]):  # the whole reply, or its first line ("C\n\nExplanation: ...")
        tokens = [x for x in _CHOICE_SPLIT.split(part) if x]
        letters, used = _leading_letters(tokens)
        if letters and used == len(tokens):
            return frozenset(letters)
    if letters and used == 1 and (tokens[0][0] in "([" or tokens[0][-1] in ".:)]"):
        return frozenset(letters)
    m = _CHOICE_PREFIX.search(t)
    if m:
        rest = [x for x in _CHOICE_SPLIT.split(t[m.end():]) if x]
        letters, used = _leading_letters(rest)
        # "The answer is a lot ...": a bare lower-case letter followed by words is a word, not a choice
        bare_word = used < len(rest) and rest[0].islower() and len(rest[0]) == 1
        if letters and not bare_word:
            return frozenset(letters)
    last = _CHOICE_LAST.search(t)  # "I think it's B."
    return frozenset(last.group(1)) if last else frozenset()


TRUTH_VALUES = {"true": True, "yes": True, "false": False, "no": False}
TRUE_FALSE = ("true", "false")
YES_NO = ("yes", "no")


def truth_value(text: str, words: Sequence[str] = TRUE_FALSE + YES_NO) -> bool | None:
    """What a text answers to a true/false or yes/no question, or None: its first word when that is a truth
    word ("No, the statement is false."), else its first word of ``words`` ("There is no doubt: True" read with
    ``TRUE_FALSE``). Yes is true and no is false."""
    tokens = answer_tokens(text)
    if tokens and tokens[0] in TRUTH_VALUES:
        return TRUTH_VALUES[tokens[0]]
    return next((TRUTH_VALUES[t] for t in tokens if t in words), None)


def is_truth_value(answer: str) -> bool:
    """Is a gold answer only a truth value ("True", "no.")?"""
    return answer_tokens(answer) in (["true"], ["false"], ["yes"], ["no"])


def choice_match(prediction: str, golds: Sequence[str]) -> float:
    """Multiple choice: 1.0 when the answer names exactly a gold's option letters.

    Letters are compared as sets, never through :func:`normalize_answer`, which drops "a" as an
    English article (every gold "A" would be unmatchable). A gold that is a truth value ("True")
    matches the answer's truth value (:func:`truth_value`: "False, it is not true" answers False, "Yes,
    it is true" True). A gold that is option text, not letters, falls back to :func:`answer_match`.
    """
    pred = choice_letters(prediction)
    for gold in golds:
        if is_truth_value(gold):
            pair = TRUE_FALSE if answer_tokens(gold)[0] in TRUE_FALSE else YES_NO
            if truth_value(prediction, pair) == truth_value(gold):
                return 1.0
            continue
        letters = choice_letters(gold)
        if letters and letters == pred:
            return 1.0
        if not letters and answer_match(prediction, [gold]):
            return 1.0
    return 0.0


METRICS = {"em": exact_match, "match": answer_match, "f1": f1_score, "rouge_l": rouge_l, "choice": choice_match}


# -- judges -----------------------------------------------------------------------------------


class Judgement(BaseModel):
    """A judge's verdict on one example over the factor grid."""

    scorable: bool
    reason: str | None = None
    """Why the example is unscorable."""
    full_score: float = 0.0
    performance: list[float] = Field(default_factory=list)
    """Relative performance per compressed context, clipped to [0, 1]."""
    details: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class Judge(Protocol):
    """Scores one example's full context against its compressed versions."""

    name: str

    def judge(self, example: Example, full_context: str, compressed: Sequence[str]) -> Judgement: ...


def clip01(x: float) -> float:
    return 0.0 if x != x else min(1.0, max(0.0, x))  # NaN -> 0


def is_short(answers: Sequence[str]) -> bool:
    return bool(answers) and all(len(a.split()) <= SHORT_ANSWER_WORDS for a in answers)


_OPTION_LETTER = re.compile(r"\s*\(?[A-Za-z]\)?[.:]?\s*")
"""A gold answer that is only an option letter ("B", "(c)", "D."): retention cannot judge it."""


class RetentionJudge:
    """Offline proxy: does the gold the full context supports survive compression? (formula above)"""

    name = "retention"

    def judge(self, example: Example, full_context: str, compressed: Sequence[str]) -> Judgement:
        if example.task in UNSCORABLE_TASKS:
            return Judgement(scorable=False, reason=f"task {example.task}: gold is not supported by the context")
        if example.metadata.get("unanswerable"):
            return Judgement(scorable=False, reason="unanswerable question")
        if example.reference is None and example.answers and all(_OPTION_LETTER.fullmatch(a) for a in example.answers):
            return Judgement(scorable=False, reason="multiple-choice letters say nothing about what the context "
                                                    "must keep: give the correct option's text as 'reference'")
        if example.reference is None and example.answers and all(is_truth_value(a) for a in example.answers):
            return Judgement(scorable=False, reason="a truth value (true/false, yes/no) says nothing about what the "
                                                    "context must keep: give the supporting text as 'reference'")
        answers = [a for a in example.answers if normalize_answer(a)]
        if example.reference is None and is_short(answers):
            return self._span(answers, full_context, compressed)
        reference = example.reference if example.reference is not None else max(answers, key=len, default="")
        return self._recall(reference, full_context, compressed)

    @staticmethod
    def _span(answers: list[str], full: str, compressed: Sequence[str]) -> Judgement:
        full_norm = normalize_answer(full)
        supported = [a for a in (normalize_answer(x) for x in answers) if contains_answer(full_norm, a)]
        if not supported:
            return Judgement(scorable=False, reason="no gold answer occurs in the full context")
        perf = []
        for text in compressed:
            c = normalize_answer(text)
            perf.append(1.0 if any(contains_answer(c, a) for a in supported) else 0.0)
        return Judgement(scorable=True, full_score=1.0, performance=perf,
                         details={"mode": "span", "supported_answers": len(supported)})

    @staticmethod
    def _recall(reference: str, full: str, compressed: Sequence[str]) -> Judgement:
        ref = Counter(content_tokens(reference))
        supported = ref & Counter(content_tokens(full))
        total = sum(supported.values())
        if not total:
            return Judgement(scorable=False, reason="no reference content occurs in the full context")
        perf = [clip01(sum((supported & Counter(content_tokens(t))).values()) / total) for t in compressed]
        return Judgement(scorable=True, full_score=total / sum(ref.values()), performance=perf,
                         details={"mode": "recall", "reference_tokens": sum(ref.values()), "supported_tokens": total})


def get_judge(name: str | Judge, **options: Any) -> Judge:
    """Build a judge by name (``retention`` or ``llm``) or pass an instance through."""
    if not isinstance(name, str):
        return name
    if name == "retention":
        if options:
            raise ConfigError(f"the retention judge takes no options, got {', '.join(options)}")
        return RetentionJudge()
    if name == "llm":
        from pocsdk.calibration.llm_judge import LLMJudge

        return LLMJudge(**options)
    raise ConfigError(f"unknown judge {name!r}; available: retention, llm")
