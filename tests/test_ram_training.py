"""RAM training: the InfoNCE term by hand, a toy overfit, data reading, the CLI (tiny models, CPU)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_ram import make_decoder, make_tokenizer, ram_model  # noqa: E402

from pocsdk.compressors.ram.training import (  # noqa: E402
    Example,
    TrainConfig,
    multi_positive_info_nce,
    positive_segments,
    read_examples,
    train_ram,
)


def test_info_nce_by_hand() -> None:
    sim = torch.tensor([0.3, 0.1, -0.3, 0.2], dtype=torch.float64)
    pos = torch.tensor([True, False, False, True])
    t = 0.1
    e = [math.exp(s / t) for s in sim.tolist()]
    expected = -math.log((e[0] + e[3]) / sum(e))
    assert float(multi_positive_info_nce(sim, pos, t)) == pytest.approx(expected, rel=1e-9)
    assert float(multi_positive_info_nce(sim.float(), pos, t)) == pytest.approx(expected, rel=1e-4)
    # one positive: the usual InfoNCE (cross-entropy with the positive as the label)
    one = torch.tensor([False, True, False, False])
    ce = torch.nn.functional.cross_entropy((sim / t).unsqueeze(0), torch.tensor([1]))
    assert float(multi_positive_info_nce(sim, one, t)) == pytest.approx(float(ce), rel=1e-5)
    # gradient pushes positives up and negatives down
    s = sim.clone().requires_grad_(True)
    multi_positive_info_nce(s, pos, t).backward()
    assert s.grad is not None and s.grad[0] < 0 and s.grad[1] > 0


def test_positive_segments() -> None:
    docs = ["the prize went to Wilhelm Roentgen in 1901", "nothing here"]
    offs = [[(0, 3), (4, 9)], [(10, 14), (15, 17)], [(18, 25), (26, 34)], [(35, 37), (38, 42)], [(0, 7), (8, 12)]]
    seg_doc = [0, 0, 0, 0, 1]
    assert positive_segments(docs, seg_doc, offs, ["Wilhelm Roentgen"], [True, False]) == [
        False, False, True, False, False]
    # no occurrence: fall back to the gold document's segments
    assert positive_segments(docs, seg_doc, offs, ["Curie"], [False, True]) == [False] * 4 + [True]


def test_read_examples_nq_format(tmp_path: Path) -> None:
    row = {"question": "who won", "answers": ["Roentgen"],
           "ctxs": [{"title": "Prize", "text": "Roentgen won it.", "isgold": True}]}
    p = tmp_path / "d.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n\n" + json.dumps(row) + "\n")
    ex = read_examples(p, limit=1)
    assert len(ex) == 1 and ex[0].documents == ["Prize Roentgen won it."] and ex[0].gold == [True]


def _toy() -> list[Example]:
    fill = " ".join(f"w{i}" for i in range(40))
    return [
        Example("what is the capital of france", ["paris"], [fill + " the capital of france is paris ."], [True]),
        Example("what is the capital of italy", ["rome"], ["the capital of italy is rome . " + fill], [True]),
    ]


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """Tiny matrices: one thread is ten times faster than two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("mode", ["none", "lora"])
def test_training_reduces_loss(mode: str) -> None:
    tok = make_tokenizer()
    lora = 8 if mode == "lora" else 0
    model = ram_model(tok, separate_encoder=mode != "none", lora_r=lora, temperature=0.1)
    cfg = TrainConfig(steps=16, lr=5e-2 if mode == "none" else 2e-2, keep_ratio=0.25,
                      train_encoder=mode,  # type: ignore[arg-type]
                      gradient_checkpointing=True, log_every=100)
    before = [p.detach().clone() for n, p in model.decoder.named_parameters()][:3]
    result = train_ram(model, _toy(), cfg)
    assert len(result.loss) == 16 and all(math.isfinite(x) for x in result.loss)
    # a frozen random decoder bounds how far the context can move the answer loss; it must still fall
    assert sum(result.loss[-4:]) / 4 < result.loss[0] - 0.2, result.loss
    after = [p.detach() for n, p in model.decoder.named_parameters()][:3]
    for a, b in zip(before, after, strict=True):  # the decoder stays frozen
        torch.testing.assert_close(a, b)
    assert not model.training


def _write_nq(path: Path) -> Path:
    """The toy examples as the NQ-style JSONL that ``pocsdk train ram --data`` reads."""
    path.write_text("\n".join(json.dumps({"question": e.question, "answers": e.answers,
                                          "ctxs": [{"title": "", "text": e.documents[0], "isgold": True}]})
                              for e in _toy()) + "\n", encoding="utf-8")
    return path


def test_cli_train_ram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI end to end, with the backbone loader pointed at a tiny random model."""
    from typer.testing import CliRunner

    from pocsdk.cli.app import app
    from pocsdk.compressors.ram import checkpoint as ck

    tok = make_tokenizer()
    monkeypatch.setattr(ck, "load_backbone",
                        lambda *a, **k: (make_decoder("llama", len(tok.get_vocab())), tok))
    data = _write_nq(tmp_path / "nq.jsonl")
    out = tmp_path / "ck"
    res = CliRunner().invoke(app, ["train", "ram", "--backbone", "tiny", "--data", str(data), "--out", str(out),
                                   "--encoder-layers", "2", "--segment-tokens", "8", "--steps", "3",
                                   "--lr", "1e-3", "--device", "cpu", "--no-gradient-checkpointing",
                                   "--context-prefix", "User: ", "--query-template", "Q: {query} A:"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3
    meta = ck.read_meta(out)
    assert meta["config"]["segment_tokens"] == 8 and meta["source"]["backbone"] == "tiny"
    loaded = ck.load_ram(out, decoder=make_decoder("llama", len(tok.get_vocab())), tokenizer=tok)
    assert loaded.ram_config.encoder_layers == 2
    # continuing it keeps its prompts (the CLI's defaults replaced them silently)
    more = tmp_path / "ck2"
    res = CliRunner().invoke(app, ["train", "ram", "--backbone", "tiny", "--data", str(data), "--out", str(more),
                                   "--init", str(out), "--steps", "1", "--device", "cpu",
                                   "--no-gradient-checkpointing"])
    assert res.exit_code == 0, res.output
    cfg = ck.read_meta(more)["config"]
    assert (cfg["context_prefix"], cfg["query_template"]) == ("User: ", "Q: {query} A:")


def test_training_settings_that_cannot_work_are_refused() -> None:
    from pocsdk.errors import ConfigError

    with pytest.raises(ConfigError, match="keep_ratio=1"):
        TrainConfig(keep_ratio=1.0, train_encoder="none")  # nothing skimmed: the alignment layer learns nothing
    TrainConfig(keep_ratio=1.0, train_encoder="full")  # the encoder still learns from the answers


def test_training_from_an_official_file_keeps_its_decoder_and_options(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from pocsdk.cli.app import app
    from pocsdk.compressors.ram import checkpoint as ck

    tok = make_tokenizer()
    vocab = len(tok.get_vocab())
    src = make_decoder("llama", vocab, layers=4, seed=0)
    state = {f"llm_encoder.model.{n}": p.clone() + 0.5 for n, p in src.model.state_dict().items()
             if not (n.startswith("layers.") and int(n.split(".")[1]) >= 2)}
    state.update({f"llm.{n}": p.clone() + 0.3 for n, p in src.state_dict().items()})  # a decoder of its own
    hidden = src.config.hidden_size
    state["semantic_alignment_layer.weight"] = torch.randn(hidden, hidden)
    state["semantic_alignment_layer.bias"] = torch.randn(hidden)
    official = tmp_path / "official.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(official))
    monkeypatch.setattr(ck, "load_backbone", lambda *a, **k: (make_decoder("llama", vocab, layers=4, seed=0), tok))
    data = _write_nq(tmp_path / "nq.jsonl")
    out = tmp_path / "ck"
    res = CliRunner().invoke(app, ["train", "ram", "--backbone", "tiny", "--data", str(data), "--out", str(out),
                                   "--init", str(official), "--steps", "2", "--lr", "1e-3", "--device", "cpu",
                                   "--no-gradient-checkpointing", "--temperature", "0.5", "--segment-tokens", "8"])
    assert res.exit_code == 0, res.output
    cfg = ck.read_meta(out)["config"]
    assert cfg["temperature"] == 0.5 and cfg["segment_tokens"] == 8  # options given with --init are applied
    want = ck.load_ram(official, "tiny").decoder.model.layers[0].self_attn.q_proj.weight
    got = ck.load_ram(out).decoder.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(want, got)  # the official decoder, not the backbone's
