"""LLMLingua-2 compressor on randomly initialised tiny token classifiers (both families), CPU."""

from __future__ import annotations

import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pocsdk import Compressor
from pocsdk.compressors import CPU_COMPRESSORS, available, get_compressor, render
from pocsdk.errors import ConfigError, MissingDependencyError
from pocsdk.text.protect import Protection

pytest.importorskip("torch")
pytest.importorskip("transformers")

FAMILIES = ("bert", "xlm-roberta")

PROSE = (
    "The river city grew quickly after the new bridge opened in 1998. Traders moved their stalls closer to "
    "the water, and the old market square emptied within a year. Officials argued about the budget for "
    "months; the council finally approved 42 million for repairs. Why did the museum close early? Nobody "
    "could say for sure, but the director blamed the heating system.\n\n"
    "In the second district, schools reported higher attendance. Teachers said the free bus line made the "
    "difference, although parents pointed to the longer opening hours of the library. A study by the "
    "regional office found that reading scores rose by 3.5 points on average, with the largest gains among "
    "younger pupils. The report recommends extending the programme to three more districts next year.\n"
)


def prose(n_paragraphs: int = 4) -> str:
    return "".join(PROSE for _ in range(n_paragraphs // 2 or 1))


@pytest.fixture(scope="session")
def classifiers() -> dict[str, Path]:
    from pocsdk.testing.peers import make_random_token_classifier

    return {f: make_random_token_classifier(family=f, size="tiny") for f in FAMILIES}  # type: ignore[arg-type]


def compressor(classifiers: dict[str, Path], family: str, **kw: object) -> Any:
    return get_compressor("llmlingua2", model=str(classifiers[family]), **kw)


def test_registered_but_not_cpu_default() -> None:
    assert "llmlingua2" in available() and "selfinfo" in available()
    assert "llmlingua2" not in CPU_COMPRESSORS and "selfinfo" not in CPU_COMPRESSORS


def test_importing_pocsdk_never_imports_torch() -> None:
    code = ("import sys, pocsdk, pocsdk.compressors, pocsdk.compressors.llmlingua2, pocsdk.compressors.selfinfo; "
            "from pocsdk.compressors import get_compressor; get_compressor('llmlingua2'); get_compressor('selfinfo'); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["llmlingua2", "selfinfo"])
def test_missing_torch_raises_missing_dependency(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    c = get_compressor(name, model="/nonexistent")
    with pytest.raises(MissingDependencyError, match=r"pocsdk\[neural\]"):
        c.score(prose())


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError):
        get_compressor("llmlingua2", family="gpt")
    with pytest.raises(ConfigError):
        get_compressor("llmlingua2", force_tokens="\n")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tokenizer", [None, "tiktoken:cl100k_base"])
def test_rate_tracks_request(classifiers: dict[str, Path], family: str, tokenizer: str | None) -> None:
    c = compressor(classifiers, family, tokenizer=tokenizer)
    scored = c.score(prose(8))
    assert scored.total_tokens >= 200
    for rate in (0.1, 0.2, 0.33, 0.5, 0.7, 0.9):
        res = render(scored, c.select(scored, rate), requested_keep_rate=rate)
        assert abs(res.keep_rate / rate - 1) <= 0.10, (rate, res.keep_rate)


@pytest.mark.parametrize("family", FAMILIES)
def test_spans_are_exact_words_in_order(classifiers: dict[str, Path], family: str) -> None:
    docs = [prose(2), "Short second document about the harbour. It has two sentences only, " * 6]
    c = compressor(classifiers, family, min_tokens=0)
    scored = c.score(docs)
    res = render(scored, c.select(scored, 0.4))
    for d, out in zip(docs, res.documents, strict=True):
        prev = 0
        pieces = []
        for sp in out.spans:
            assert prev <= sp.start < sp.end <= len(d)
            piece = d[sp.start:sp.end]
            assert piece == piece.strip() and piece
            pieces.append(piece)
            prev = sp.end
        # the compressed text is the kept spans, in order, joined by whitespace only
        pos = 0
        for piece in pieces:
            at = out.text.find(piece, pos)
            assert at >= 0 and not out.text[pos:at].strip()
            pos = at + len(piece)
    u = scored.units
    assert np.all(np.diff(u.start[u.doc == 0]) > 0)  # words in order


@pytest.mark.parametrize("family", FAMILIES)
def test_selection_is_a_threshold(classifiers: dict[str, Path], family: str) -> None:
    c = compressor(classifiers, family, protect=Protection.none(), force_tokens=())
    scored = c.score(prose(4))
    prev = np.zeros(len(scored.units), dtype=bool)
    for rate in (0.1, 0.3, 0.5, 0.8):
        keep = c.select(scored, rate).keep
        assert np.all(keep >= prev)  # nested: a larger rate keeps a superset
        rel = scored.units.relevance
        if keep.any() and (~keep).any():
            assert rel[keep].min() >= rel[~keep].max()  # everything kept scores at least as high
        prev = keep


@pytest.mark.parametrize("family", FAMILIES)
def test_protected_spans_survive(classifiers: dict[str, Path], family: str) -> None:
    text = (prose(2) + "<keep>Ticket ALPHA-7 stays open.</keep> " + prose(2)
            + " Never share the access code with anyone. Reference ID-4242 belongs to the archive. " + prose(2))
    c = compressor(classifiers, family, protect=Protection(patterns=(r"ID-\d+",)))
    scored = c.score(text)
    out = render(scored, c.select(scored, 0.1)).text
    assert "Ticket ALPHA-7 stays open." in out
    assert "Never share the access code with anyone." in out
    assert "ID-4242" in out
    assert "<keep>" not in out and "</keep>" not in out


@pytest.mark.parametrize("family", FAMILIES)
def test_force_tokens_kept(classifiers: dict[str, Path], family: str) -> None:
    text = prose(4) + " Flights to New York were cancelled. " + prose(2)
    c = compressor(classifiers, family, force_tokens=("?", "\n", "New York"), protect=Protection.none())
    scored = c.score(text)
    out = render(scored, c.select(scored, 0.15)).text
    assert out.count("?") == text.count("?")
    assert "New York" in out
    assert "\n" in out  # line breaks survive in the join wherever dropped text held one


@pytest.mark.parametrize(("family", "force"), [("bert", "\U0001F680"), ("bert", "\u00a7"), ("xlm-roberta", "\uff1f")])
def test_force_tokens_the_vocabulary_spells_otherwise_are_kept(classifiers: dict[str, Path], family: str,
                                                              force: str) -> None:
    """A force string that is one token but not spelled as that token ([UNK] for an emoji in mBERT) was dropped."""
    text = (prose(4).replace("museum", f"museum {force}").replace("library", f"library {force}")) * 2
    c = compressor(classifiers, family, force_tokens=("?", "\n", force), protect=Protection.none())
    scored = c.score(text)
    out = render(scored, c.select(scored, 0.1)).text
    assert text.count(force) > 0 and out.count(force) == text.count(force)


@pytest.mark.parametrize("family", FAMILIES)
def test_extras_for_predictors(classifiers: dict[str, Path], family: str) -> None:
    c = compressor(classifiers, family)
    scored = c.score(prose(4))
    x = scored.extras
    assert x["score_kind"] == "keep_probability"
    ts = x["token_scores"]
    assert len(ts) == x["model_tokens"] and np.all((ts >= 0) & (ts <= 1))
    assert set(x["score_stats"]) >= {"mean", "std", "p10", "p50", "p90"}
    rel = scored.units.relevance
    assert len(rel) == len(scored.units) and np.all((rel >= 0) & (rel <= 1)) and rel.std() > 0


def test_featurizer_works_unchanged(classifiers: dict[str, Path]) -> None:
    features = pytest.importorskip("pocsdk.prediction.features")
    c = compressor(classifiers, "bert")
    scored = c.score(prose(4), query="What did the study find?")
    ctx, per_factor = features.featurize(c, scored, [1.0, 2.0, 4.0])
    assert np.isfinite(list(ctx.values())).all()
    assert len(per_factor) == 3


def test_short_input_and_full_rate_pass_through(classifiers: dict[str, Path]) -> None:
    c = compressor(classifiers, "bert")
    short = c.score("Just a few words here.")
    assert render(short, c.select(short, 0.3)).passthrough
    scored = c.score(prose(4))
    assert render(scored, c.select(scored, 1.0)).passthrough


def test_word_labels_only_in_compatible_mode(classifiers: dict[str, Path]) -> None:
    c = compressor(classifiers, "bert")
    with pytest.raises(ConfigError):
        c.word_labels(c.score(prose(2)), 0.5)  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", FAMILIES)
def test_long_input_windows_and_unknown_tokens(classifiers: dict[str, Path], family: str) -> None:
    text = ("Symbols like \u2603 and \u00e9t\u00e9 appear here. " + prose(2)) * 6  # > 512 tokens: several windows
    c = compressor(classifiers, family)
    scored = c.score(text)
    assert scored.extras["windows"] >= 2
    # every model token got a probability, every non-space character lies in some word
    assert len(scored.extras["token_scores"]) == scored.extras["model_tokens"]
    covered = np.zeros(len(text), dtype=bool)
    for s, e in zip(scored.units.start.tolist(), scored.units.end.tolist(), strict=True):
        covered[s:e] = True
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())


# -- precision options ----------------------------------------------------------------------------
def _agreement(c: Any, a: Any, b: Any, rate: float) -> tuple[float, float]:
    ka, kb = c.select(a, rate).keep, c.select(b, rate).keep
    assert len(ka) == len(kb)  # the same words: units come from the tokenizer, not the model
    return float((ka & kb).sum() / max((ka | kb).sum(), 1)), float(np.mean(ka == kb))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("option", "value"), [("quantize", "int8"), ("dtype", "bfloat16")])
def test_precision_options_agree_with_fp32(classifiers: dict[str, Path], family: str, option: str,
                                           value: str) -> None:
    """int8 / bfloat16 move probabilities a little: kept words differ from fp32's at the margin only."""
    kw: dict[str, Any] = {"protect": Protection.none(), "force_tokens": (), "device": "cpu"}
    ref = compressor(classifiers, family, **kw)
    low = compressor(classifiers, family, **kw, **{option: value})
    text = prose(8)
    a, b = ref.score(text), low.score(text)
    if option == "quantize":
        assert b.parameters["quantize"] == "int8" and a.parameters["quantize"] == "none"
    for rate in (0.3, 0.5):
        jaccard, same = _agreement(ref, a, b, rate)
        assert same >= 0.95 and jaccard >= 0.9, (rate, jaccard, same)
    assert not np.array_equal(a.units.relevance, b.units.relevance)  # it did run at the lower precision


def test_int8_quantizes_the_encoder_not_the_head(classifiers: dict[str, Path]) -> None:
    import torch

    c = compressor(classifiers, "bert", quantize="int8", device="cpu")
    model, _ = c._load()
    kinds = {n: type(m).__module__ for n, m in model.named_modules() if type(m).__name__ == "Linear"}
    assert type(model.classifier) is torch.nn.Linear  # the 2-label head stays float32
    assert sum("quantized.dynamic" in k for k in kinds.values()) == len(kinds) - 1
    ref, _ = compressor(classifiers, "bert", device="cpu")._load()
    assert ref is not model and type(ref.classifier) is torch.nn.Linear  # cached apart, fp32 untouched
    assert not any("quantized" in type(m).__module__ for m in ref.modules())


def test_quantize_checked() -> None:
    with pytest.raises(ConfigError, match="quantize"):
        get_compressor("llmlingua2", quantize="int4")
    # checked before any model is loaded: no CUDA and no checkpoint needed to hear about it
    with pytest.raises(ConfigError, match="CPU only"):
        get_compressor("llmlingua2", model="/nonexistent", quantize="int8", device="cuda").score(prose())
    with pytest.raises(ConfigError, match="float32"):
        get_compressor("llmlingua2", model="/nonexistent", quantize="int8", device="cpu",
                       dtype="bfloat16").score(prose())
    assert get_compressor("llmlingua2").parameters()["quantize"] == "none"  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_long_word_does_not_stop_the_threshold(classifiers: dict[str, Path], family: str) -> None:
    # a 1,280-character hash in prose used to be one unit that blocked every word after it
    text = prose(3) + " " + "0123456789abcdef" * 80 + " " + prose(3)
    c = compressor(classifiers, family)
    scored = c.score(text)
    assert (scored.units.end - scored.units.start).max() <= 64
    for rate in (0.1, 0.3, 0.5):
        res = render(scored, c.select(scored, rate))
        assert abs(res.keep_rate / rate - 1) <= 0.10, (family, rate, res.keep_rate)


def test_model_problems_are_config_errors(classifiers: dict[str, Path], tmp_path: Path) -> None:
    import torch

    with pytest.raises(ConfigError, match="window"):
        compressor(classifiers, "bert", max_seq_len=4096).score(prose())
    with pytest.raises(ConfigError, match="unknown device"):
        compressor(classifiers, "bert", device="gpu").score(prose())
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="MPS is not available"):
            compressor(classifiers, "bert", device="mps").score(prose())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            compressor(classifiers, "bert", device="cuda").score(prose())
    else:
        with pytest.raises(ConfigError, match="CUDA devices"):
            compressor(classifiers, "bert", device=f"cuda:{torch.cuda.device_count()}").score(prose())
    # a checkpoint without a trained 2-label head (here: a 3-label classifier) is refused, not run at random
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    three = tmp_path / "three-labels"
    AutoModelForTokenClassification.from_pretrained(classifiers["bert"], num_labels=3,
                                                    ignore_mismatched_sizes=True).save_pretrained(three)
    AutoTokenizer.from_pretrained(classifiers["bert"]).save_pretrained(three)
    with pytest.raises(ConfigError, match="not an LLMLingua-2 token classifier"):
        get_compressor("llmlingua2", model=str(three), device="cpu").score(prose())
    # other kinds of checkpoint, and a tokenizer that is missing or belongs to another model: refused too
    # (a sentence classifier's head ran on every token, a folder without tokenizer files read every word as
    # unknown, and another model's tokenizer crashed with an IndexError)
    import shutil

    from transformers import AutoModelForSequenceClassification, BertTokenizerFast

    sentence = tmp_path / "sentence-classifier"
    AutoModelForSequenceClassification.from_pretrained(classifiers["bert"], num_labels=2).save_pretrained(sentence)
    AutoTokenizer.from_pretrained(classifiers["bert"]).save_pretrained(sentence)
    with pytest.raises(ConfigError, match="BertForSequenceClassification"):
        get_compressor("llmlingua2", model=str(sentence), device="cpu").score(prose())
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(classifiers["bert"], bare)
    for f in bare.glob("*"):
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            f.unlink()
    other = tmp_path / "other-tokenizer"
    shutil.copytree(bare, other)
    vocab = other / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(50))]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(other)
    for folder in (bare, other):
        with pytest.raises(ConfigError, match=r"do not belong together|cannot load"):
            get_compressor("llmlingua2", model=str(folder), device="cpu").score(prose())


def test_compatible_mode_survives_text_the_model_cannot_read(classifiers: dict[str, Path]) -> None:
    c = compressor(classifiers, "bert", llmlingua_compatible=True)
    scored = c.score("\U0001f389 " * 300)  # every token [UNK]
    render(scored, c.select(scored, 0.3))


@pytest.mark.parametrize("family", FAMILIES)
def test_rate_tracks_when_the_joined_text_counts_differently(classifiers: dict[str, Path], family: str) -> None:
    # word by word, "Doc 3." costs a leading space that the first kept word of a document does not have
    many = [f"Doc {i}. The river city grew quickly." for i in range(60)]
    bullets = "\n".join(f"- item {i}: the river city grew quickly" for i in range(80))
    c = compressor(classifiers, family, tokenizer="tiktoken:cl100k_base")
    for context in (many, bullets):
        scored = c.score(context)
        for rate in (0.1, 0.3, 0.5):
            res = render(scored, c.select(scored, rate))
            assert abs(res.keep_rate / rate - 1) <= 0.10, (family, rate, res.keep_rate)


def test_text_without_spaces_is_never_compressed_to_nothing(classifiers: dict[str, Path]) -> None:
    """XLM-R reads a Japanese line as one word of ~46 tokens: at rate 0.1 no word fitted and the output was
    empty; at 0.3 it kept 0.25. CJK words are cut into pieces of 16 characters, and a threshold that stops
    short fills the rest of the budget with the words that still fit."""
    ja = ("\u4eca\u65e5\u306f\u5929\u6c17\u304c\u826f\u3044\u306e\u3067\u3001\u79c1\u305f\u3061\u306f\u516c\u5712"
          "\u3092\u6563\u6b69\u3057\u307e\u3057\u305f\u3002\u6771\u4eac\u306f\u65e5\u672c\u306e\u9996\u90fd\u3067"
          "\u3001\u4eba\u53e3\u304c\u3068\u3066\u3082\u591a\u3044\u3067\u3059\u3002\n") * 8
    c = compressor(classifiers, "xlm-roberta")
    scored = c.score(ja)
    for rate in (0.05, 0.1, 0.3):
        res = render(scored, c.select(scored, rate))
        assert res.compressed_tokens > 0 and abs(res.keep_rate / rate - 1) <= 0.25, (rate, res.keep_rate)


def test_threshold_fill_counts_the_line_breaks_it_adds() -> None:
    """The fill after a short threshold prefix ignored the line breaks joins insert: 49 tokens for 40."""
    from pocsdk.compressors.llmlingua2.selection import Layout, fit_threshold

    n = 20
    tokens = np.array([12, *([4] * (n - 1))], dtype=np.int64)  # the best word is long; the others are short
    layout = Layout(doc=np.zeros(n, dtype=np.int64), nl_start=np.arange(n), nl_end=np.arange(n),
                    own_break=np.zeros(n, dtype=bool), break_tokens=1)  # every word on a line of its own
    order = np.arange(n)
    for budget in (10, 25, 40):
        keep = fit_threshold(order, tokens, budget, np.zeros(n, dtype=bool), layout)
        assert int(tokens[keep].sum()) + layout.extra_tokens(keep) <= budget, budget
        assert keep.any()


def test_thai_words_are_cut_between_whole_characters() -> None:
    from pocsdk.compressors.llmlingua2.words import _Words, split_long_words

    thai = "\u0e01\u0e48\u0e32\u0e27\u0e19\u0e49\u0e33\u0e02\u0e49\u0e32\u0e27" * 6  # marks on many letters
    w = _Words(doc=np.zeros(1, dtype=np.int64), chunk=np.zeros(1, dtype=np.int64), start=np.array([0]),
               end=np.array([len(thai)]), prob=np.ones(1), prob_raw=np.ones(1), forced=np.zeros(1, dtype=bool),
               text=[])
    out = split_long_words(w, texts=[thai])
    assert len(out.start) > 1 and out.start[0] == 0 and out.end[-1] == len(thai)
    assert (out.start[1:] == out.end[:-1]).all()
    assert all(unicodedata.category(thai[i]) != "Mn" for i in out.start.tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_lone_surrogates_are_compressed_not_a_tokenizer_type_error(classifiers: dict[str, Path], family: str) -> None:
    """Hugging Face tokenizers refuse strings holding a lone surrogate (a bare TypeError, and a UnicodeEncodeError
    in the word masks); the rest of pocsdk accepts them, so these read it as U+FFFD with the offsets intact."""
    text = prose(4).replace("museum", "mus\ud83deum")
    assert "\ud83d" in text
    for tokenizer in (None, "tiktoken:cl100k_base"):
        c = compressor(classifiers, family, tokenizer=tokenizer)
        scored = c.score(text, "museum")
        res = render(scored, c.select(scored, 0.3))
        assert 0 < res.compressed_tokens < res.original_tokens
        assert all(text[sp.start:sp.end] for _, sp in res.kept_spans)


def test_a_model_path_object_works_like_its_string(classifiers: dict[str, Path]) -> None:
    """model=pathlib.Path(...) failed with AttributeError: 'PosixPath' object has no attribute 'startswith'."""
    text = prose(4)
    by_path = Compressor(keep_rate=0.3, compressor="llmlingua2", model=classifiers["bert"]).compress(text)
    by_str = Compressor(keep_rate=0.3, compressor="llmlingua2", model=str(classifiers["bert"])).compress(text)
    assert by_path.text == by_str.text and by_path.parameters["model"] == str(classifiers["bert"])


# -- batched scoring (the service's and compress_many's hook) ------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("compatible", [False, True])
def test_score_batch_equals_scoring_each_input(classifiers: dict[str, Path], family: str, compatible: bool) -> None:
    c = compressor(classifiers, family, llmlingua_compatible=compatible)
    long_text = ("Symbols like \u2603 appear here. " + prose(2)) * 4  # several windows
    items: list[tuple[Any, str | None]] = [
        (prose(2), "Why did the museum close?"),
        ("Just a few words here.", None),  # passes through without the model
        ([{"text": prose(2)}, {"text": PROSE[:300]}], None),  # two documents
        (long_text, "reading scores"),
    ]
    batched = c.score_batch(items)
    assert len(batched) == len(items)
    for (context, query), got in zip(items, batched, strict=True):
        alone = c.score(context, query)
        assert got.query == query and got.passthrough_reason == alone.passthrough_reason
        assert [d.text for d in got.documents] == [d.text for d in alone.documents]
        assert np.array_equal(got.units.start, alone.units.start) and np.array_equal(got.units.doc, alone.units.doc)
        np.testing.assert_allclose(got.units.relevance, alone.units.relevance, atol=1e-5)
        assert got.extras.get("model_tokens") == alone.extras.get("model_tokens")
        assert got.extras.get("windows") == alone.extras.get("windows")
        assert got.score_ms > 0
    assert c.score_batch([]) == []


def test_score_batch_runs_one_forward_pass(classifiers: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import pocsdk.compressors.llmlingua2.compressor as module

    calls: list[int] = []
    real = module.forward_windows

    def counting(model: Any, tok: Any, streams: Any, chunks: Any, *rest: Any) -> None:
        calls.append(len(chunks))
        real(model, tok, streams, chunks, *rest)

    monkeypatch.setattr(module, "forward_windows", counting)
    c = compressor(classifiers, "bert")
    c.score_batch([(prose(2), None), (prose(4), None), (prose(2) * 3, None)])
    assert len(calls) == 1 and calls[0] >= 3


def test_compress_many_scores_in_groups_and_matches_compress(classifiers: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    comp = Compressor(compressor="llmlingua2", model=str(classifiers["bert"]))
    sizes: list[int] = []
    real = comp.compressor.score_batch

    def spy(items: Any) -> Any:
        sizes.append(len(items))
        return real(items)

    monkeypatch.setattr(comp.compressor, "score_batch", spy)
    texts = [prose(2), prose(4), "Too short to compress.", PROSE * 3] * 5  # 20 inputs: groups of 16 and 4
    many = comp.compress_many([(t, "What did the study find?") for t in texts], keep_rate=0.4)
    assert sizes == [16, 4]
    for t, got in zip(texts, many, strict=True):
        alone = comp.compress(t, "What did the study find?", keep_rate=0.4)
        assert got.text == alone.text and got.passthrough == alone.passthrough
        assert got.compressed_tokens == alone.compressed_tokens
        assert got.timings.total_ms >= got.timings.score_ms > 0
    with pytest.raises(TypeError):
        comp.compress_many([prose(2), prose(2)], keep_rte=0.4)
    with pytest.raises(ConfigError):  # checked before any scoring, as compress checks it
        comp.compress_many([prose(2), prose(2)], keep_rate=0.4, floor=0.9)


def test_code_is_never_protected_as_an_instruction(classifiers: dict[str, Path]) -> None:
    code = ("Here is the helper.\n\n```vb\nFunction Total(items)\n    Dim sum = 0\n    For Each x In items\n"
            "        sum = sum + x\n    Next\n    Return sum\nEnd Function\n```\n\n") + prose(2)
    c = compressor(classifiers, "bert", protect=Protection(instructions=True))
    scored = c.score(code)
    inside = (scored.units.start >= code.index("```vb")) & (scored.units.end <= code.index("End Function") + 12)
    assert inside.sum() > 10 and not scored.units.protected[inside].any()


def test_compress_many_raises_what_compress_raises_first(classifiers: dict[str, Path]) -> None:
    from pocsdk.errors import InputTooLargeError

    comp = Compressor(compressor="llmlingua2", model=str(classifiers["bert"]), max_input_chars=2000)
    items = [(prose(2), None), ("x " * 5000, None), {"context": prose(2), "query": 5}]
    with pytest.raises(InputTooLargeError):
        comp.compress(*items[1], keep_rate=0.5)
    with pytest.raises(InputTooLargeError):  # not the third input's bad query, checked first by the group
        comp.compress_many(items, keep_rate=0.5)


def test_compress_many_finds_a_bad_input_before_running_the_model(classifiers: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A group with a bad input fell back to compressing the inputs before it one by one (a model pass each)
    before raising the error it already knew."""
    import pocsdk.compressors.llmlingua2.compressor as module
    from pocsdk.errors import InputTooLargeError

    passes: list[int] = []
    real = module.forward_windows
    monkeypatch.setattr(module, "forward_windows", lambda *a: (passes.append(1), real(*a))[1])
    comp = Compressor(compressor="llmlingua2", model=str(classifiers["bert"]), max_input_chars=2000)
    with pytest.raises(InputTooLargeError):
        comp.compress_many([(prose(2), None)] * 15 + [("x " * 5000, None)], keep_rate=0.5)
    with pytest.raises(InputTooLargeError):  # past the first group of 16 too
        comp.compress_many([(prose(2), None)] * 20 + [("x " * 5000, None)], keep_rate=0.5)
    assert passes == []


@pytest.mark.parametrize("items", ["abc", None, [("x",)], [("text here", 5)], [["text", None]]])
def test_score_batch_refuses_what_is_not_a_list_of_pairs(classifiers: dict[str, Path], items: Any) -> None:
    from pocsdk.errors import InvalidTypeError

    with pytest.raises(InvalidTypeError):
        compressor(classifiers, "bert").score_batch(items)
