"""Side by side with llmlingua 0.2.2's LLMLingua-2 on random tiny token classifiers (both families).

``llmlingua_compatible=True`` must keep exactly the words llmlingua keeps (same words, same
labels) for prose, code-like text, several documents, and force tokens that llmlingua swaps
for ``[NEWi]`` tokens. The default mode differs on purpose (see LLMLingua2Compressor's
docstring); each difference is pinned by a test below.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pocsdk.compressors import get_compressor, render
from pocsdk.text.protect import Protection

pytest.importorskip("torch")
pytest.importorskip("llmlingua")

FAMILIES = ("bert", "xlm-roberta")
SEP = "\t\t|\t\t"

PROSE = (
    "The committee met on Tuesday to review the annual report. Members asked why costs rose by 12 percent, "
    "and the treasurer explained that energy prices had doubled. Is the new plan realistic? Several members "
    "doubted it, but the chair insisted that savings would appear within two years.\n"
    "A second item concerned the library. Visitors complained about short opening hours; the staff asked "
    "for two more positions. The committee agreed to fund one position and to review the other in spring.\n\n"
)
CODE = (
    "def budget_for(scored, keep_rate):\n    return int(round(check_keep_rate(keep_rate) * scored.total_tokens))\n"
    "Values like 3.5 and e.g. self.doc_tokens.sum() or https://example.org/a.b split windows mid-word. "
)


@pytest.fixture(scope="session")
def peers() -> dict[str, tuple[Path, Any]]:
    from pocsdk.testing.peers import install_offline_cl100k, make_random_token_classifier

    install_offline_cl100k()
    from llmlingua import PromptCompressor

    out = {}
    for fam in FAMILIES:
        path = make_random_token_classifier(family=fam, size="tiny")  # type: ignore[arg-type]
        out[fam] = (path, PromptCompressor(model_name=str(path), use_llmlingua2=True, device_map="cpu"))
    return out


def llmlingua_labels(pc: Any, docs: list[str], rate: float, force: list[str]) -> tuple[list[str], list[int], str]:
    res = pc.compress_prompt(docs, rate=rate, force_tokens=force, return_word_label=True,
                             use_context_level_filter=False)
    pairs = [p.rsplit(" ", 1) for p in res["fn_labeled_original_prompt"].split(SEP)]
    return [p[0] for p in pairs], [int(p[1]) for p in pairs], res["compressed_prompt"]


def pocsdk_compatible(path: Path, force: list[str]) -> Any:
    return get_compressor("llmlingua2", model=str(path), llmlingua_compatible=True, force_tokens=force,
                          protect=Protection.none(), min_tokens=0)


CASES = [
    ("prose", [PROSE * 4], []),
    ("prose-force-newline-question", [PROSE * 4], ["\n", "?"]),
    ("code-like", [CODE * 12], []),
    ("code-like-force-dot-comma", [CODE * 12], [".", ","]),
    ("three-documents", [PROSE * 2, CODE * 3, PROSE], ["\n"]),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("case", "docs", "force"), CASES, ids=[c[0] for c in CASES])
def test_compatible_mode_keeps_the_same_words(peers: dict[str, tuple[Path, Any]], family: str, case: str,
                                              docs: list[str], force: list[str]) -> None:
    path, pc = peers[family]
    c = pocsdk_compatible(path, force)
    scored = c.score(docs)
    for rate in (0.25, 0.5, 0.75):
        words, labels, _ = llmlingua_labels(pc, docs, rate, force)
        ours, our_labels = c.word_labels(scored, rate)
        assert ours == words, f"{case} {rate}: word lists differ"
        assert our_labels.tolist() == labels, f"{case} {rate}: {int((our_labels != labels).sum())} labels differ"


@pytest.mark.parametrize("family", FAMILIES)
def test_compatible_mode_renders_the_kept_words_as_spans(peers: dict[str, tuple[Path, Any]], family: str) -> None:
    path, pc = peers[family]
    c = pocsdk_compatible(path, [])
    scored = c.score(PROSE * 4)
    words, labels, compressed = llmlingua_labels(pc, [PROSE * 4], 0.4, [])
    res = render(scored, c.select(scored, 0.4))
    kept = [w for w, k in zip(words, labels, strict=True) if k and w.strip()]
    # llmlingua rebuilds text from tokens ("costs rose , and"); pocsdk returns the same words as exact spans
    assert res.text.split() and "".join(res.text.split()) == "".join(kept)
    assert "".join(compressed.split()) == "".join(kept)


def test_difference_rate_is_per_window_in_cl100k_for_llmlingua(peers: dict[str, tuple[Path, Any]]) -> None:
    """llmlingua thresholds each 512-token window on cl100k counts of its own word strings; pocsdk's
    default thresholds the whole input in the target tokenizer, so its rate tracks the request."""
    path, _ = peers["xlm-roberta"]
    text = PROSE * 12
    default = get_compressor("llmlingua2", model=str(path), tokenizer="tiktoken:cl100k_base",
                             protect=Protection.none(), force_tokens=())
    scored = default.score(text)
    compat = pocsdk_compatible(path, [])
    scored_c = compat.score(text)
    assert scored_c.extras["windows"] >= 2
    for rate in (0.2, 0.5):
        ours = render(scored, default.select(scored, rate)).keep_rate
        assert abs(ours / rate - 1) <= 0.10
        theirs = render(scored_c, compat.select(scored_c, rate)).keep_rate
        # the same words as llmlingua (tested above); its rate is off by the "▁" and per-window effects
        assert abs(theirs / rate - 1) > abs(ours / rate - 1)


def test_difference_unknown_tokens_are_words(peers: dict[str, tuple[Path, Any]]) -> None:
    """llmlingua skips [UNK] tokens (they never reach its output); pocsdk keeps them as words."""
    path, _ = peers["bert"]
    text = (PROSE + " Weather \u2603\u2603 today. ") * 3
    kw: dict[str, Any] = {"model": str(path), "protect": Protection.none(), "force_tokens": ()}
    default = get_compressor("llmlingua2", **kw)
    compat = get_compressor("llmlingua2", llmlingua_compatible=True, **kw)
    snowman = text.index("\u2603")
    in_default = (default.score(text).units.start <= snowman) & (default.score(text).units.end > snowman)
    in_compat = (compat.score(text).units.start <= snowman) & (compat.score(text).units.end > snowman)
    assert in_default.any() and not in_compat.any()


def test_difference_windows_never_exceed_the_model(peers: dict[str, tuple[Path, Any]]) -> None:
    """llmlingua's window can hold max_seq_len - 1 tokens (its [SEP] is then truncated away); pocsdk's
    default windows hold at most max_seq_len - 2 and end at a sentence end or a line break."""
    path, _ = peers["bert"]
    text = ("word " * 1200).strip()  # no end token at all
    default = get_compressor("llmlingua2", model=str(path))
    scored = default.score(text)
    n = scored.extras["model_tokens"]
    assert scored.extras["windows"] >= int(np.ceil(n / 510))
    compat = get_compressor("llmlingua2", model=str(path), llmlingua_compatible=True)
    assert compat.score(text).extras["windows"] == int(np.ceil(n / 511))


def test_pocsdk_is_faster_when_probing_rates(peers: dict[str, tuple[Path, Any]]) -> None:
    """Probing 5 rates: pocsdk scores once and selects 5 times; llmlingua runs the model 5 times."""
    path, pc = peers["bert"]
    text = PROSE * 10
    c = get_compressor("llmlingua2", model=str(path))
    c.score(PROSE)  # warm: model loaded and cached
    pc.compress_prompt([PROSE], rate=0.5)
    rates = (0.1, 0.3, 0.5, 0.7, 0.9)
    t0 = time.perf_counter()
    scored = c.score(text)
    for r in rates:
        render(scored, c.select(scored, r))
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in rates:
        pc.compress_prompt([text], rate=r)
    theirs = time.perf_counter() - t0
    assert ours < theirs, (ours, theirs)


def test_difference_int8_moves_only_marginal_words(peers: dict[str, tuple[Path, Any]]) -> None:
    """``quantize="int8"`` is opt-in and not bit-exact: in compatible mode its labels still match
    llmlingua's (fp32) on nearly every word, the misses being words at a window's threshold."""
    path, pc = peers["bert"]
    c = get_compressor("llmlingua2", model=str(path), llmlingua_compatible=True, force_tokens=[],
                       protect=Protection.none(), min_tokens=0, quantize="int8", device="cpu")
    docs = [PROSE * 4]
    scored = c.score(docs)
    for rate in (0.3, 0.5):
        words, labels, _ = llmlingua_labels(pc, docs, rate, [])
        ours, our_labels = c.word_labels(scored, rate)
        assert ours == words  # windows and words do not depend on the model
        assert np.mean(our_labels == np.array(labels)) >= 0.95
