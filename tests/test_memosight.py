"""MemoSight on tiny random Llama / Qwen2 models (CPU, float32).

The decisive check: logits of one full-sequence forward with the training mask and EPL positions equal the
logits of incremental generation with KV eviction at the same points, foresight tokens included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pocsdk.reasoning.memosight.data import FORESIGHT, IGNORE, build_layout, num_memory, split_output  # noqa: E402
from pocsdk.reasoning.memosight.generate import DecodeConfig, decode  # noqa: E402
from pocsdk.reasoning.memosight.model import cache_keep, forward_layout, new_cache  # noqa: E402
from pocsdk.reasoning.memosight.session import ReasoningSession  # noqa: E402
from pocsdk.reasoning.memosight.tokens import SpecialTokens, TokenIds, add_special_tokens  # noqa: E402

WORDS = ["<unk>", "<eos>", *[f"w{i}" for i in range(60)]]
TOKENS = SpecialTokens(max_memory=16)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """2 shared cores: tiny models run fastest single-threaded."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_tokenizer() -> Any:
    """A word-level tokenizer over WORDS (fast, offline, built in memory)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>")


def make_model(arch: str = "llama", seed: int = 0, attn: str = "eager",
               tie: bool | None = None) -> tuple[Any, Any, TokenIds]:
    """A 2-layer, hidden-64 random model with the MemoSight tokens added."""
    tok = make_tokenizer()
    torch.manual_seed(seed)
    common: dict[str, Any] = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                  eos_token_id=tok.eos_token_id, pad_token_id=0)
    if tie is not None:
        common["tie_word_embeddings"] = tie
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    model.config._attn_implementation = attn
    ids = add_special_tokens(tok, model, TOKENS)
    return model.eval(), tok, ids


def check_equivalence(model: Any, ids: TokenIds, prompt: list[int], cfg: DecodeConfig, atol: float = 1e-4) -> int:
    """Generate with eviction, rebuild the training layout of the output, compare every logits row."""
    res = decode(model, prompt, ids, cfg, record=True)
    steps, tail = split_output(res.output_ids, ids)
    k = cfg.draft_tokens
    ratio = cfg.compression_ratio or 1.0
    lay = build_layout(prompt, steps if cfg.compression_ratio else [], tail if cfg.compression_ratio else
                       res.output_ids, ids, ratio, window=cfg.window, max_offset=k or None,
                       offsets=list(range(1, k + 1)) if k else None)
    full = forward_layout(model, lay)
    pairs = enumerate(zip(lay.targets, lay.kinds, strict=True))
    rows = [i for i, (t, kind) in pairs if t != IGNORE and kind != FORESIGHT]
    assert [lay.targets[i] for i in rows] == res.output_ids
    torch.testing.assert_close(full[rows], torch.stack(res.choice_logits), atol=atol, rtol=1e-4)
    checked = 0
    for i, kind in enumerate(lay.kinds):
        if kind == FORESIGHT:
            key = (lay.position_ids[i] - lay.offsets[i], lay.offsets[i])
            torch.testing.assert_close(full[i], res.foresight_logits[key], atol=atol, rtol=1e-4)
            checked += 1
    assert checked > 0 or not k
    assert res.steps > 0 or not cfg.compression_ratio
    return checked


@pytest.mark.parametrize(("arch", "attn", "window", "draft"), [
    ("llama", "eager", 0, 0),
    ("llama", "eager", 0, 2),
    ("qwen2", "sdpa", 0, 2),
    ("qwen2", "sdpa", 1, 2),
    ("llama", "sdpa", 2, 1),
])
def test_full_forward_equals_incremental_with_eviction(arch: str, attn: str, window: int, draft: int) -> None:
    model, _, ids = make_model(arch, seed=1, attn=attn)
    cfg = DecodeConfig(compression_ratio=3, window=window, draft_tokens=draft, max_new_tokens=26,
                       force_split_every=6, stop_at_eos=False)
    check_equivalence(model, ids, [5, 6, 7, 8, 9], cfg)


def test_equivalence_with_uneven_steps_and_ratios() -> None:
    model, _, ids = make_model("qwen2", seed=2, attn="eager")
    for ratio, every in ((2, 5), (16, 9), (6, 4)):
        cfg = DecodeConfig(compression_ratio=ratio, draft_tokens=2, max_new_tokens=20, force_split_every=every,
                           stop_at_eos=False)
        check_equivalence(model, ids, [3, 4, 5], cfg)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speculative_equals_plain_greedy(seed: int) -> None:
    model, _, ids = make_model("llama" if seed % 2 else "qwen2", seed=seed)
    for prompt in ([5, 6, 7], [10, 11, 12, 13, 14, 15], [2]):
        for ratio in (4, None):
            base = DecodeConfig(compression_ratio=ratio, draft_tokens=0, max_new_tokens=18, force_split_every=5,
                                stop_at_eos=False)
            plain = decode(model, prompt, ids, base).output_ids
            spec = decode(model, prompt, ids, DecodeConfig(**{**base.__dict__, "draft_tokens": 2})).output_ids
            assert spec == plain
            # an oracle drafter (the true continuation, every third draft spoilt) exercises acceptance
            def oracle(done: list[int], proposed: list[int], ref: list[int] = plain) -> list[int]:
                nxt = ref[len(done): len(done) + 2]
                return [t if (len(done) + j) % 3 else (t + 1) % 50 for j, t in enumerate(nxt)]
            res = decode(model, prompt, ids, DecodeConfig(**{**base.__dict__, "draft_tokens": 2}), draft_fn=oracle)
            assert res.output_ids == plain
            assert res.accepted > 0 and res.forward_passes < len(plain)


def test_eos_stops_generation_and_is_never_accepted_as_draft() -> None:
    model, _, ids = make_model("qwen2", seed=11)
    prompt = [7, 8, 9]
    free = decode(model, prompt, ids, DecodeConfig(compression_ratio=4, draft_tokens=0, max_new_tokens=16,
                                                   force_split_every=5, stop_at_eos=False)).output_ids
    stop = next(t for t in free[3:] if t != ids.splitter)
    eos_ids = TokenIds(ids.splitter, ids.continue_, ids.foresight, ids.memory, eos=stop)
    cut = free[: free.index(stop) + 1]
    for draft in (0, 2):
        cfg = DecodeConfig(compression_ratio=4, draft_tokens=draft, max_new_tokens=16, force_split_every=5)
        assert decode(model, prompt, eos_ids, cfg).output_ids == cut
        oracle = decode(model, prompt, eos_ids, cfg, draft_fn=lambda done, _p: free[len(done): len(done) + 2])
        assert oracle.output_ids == cut


def test_plain_greedy_without_compression_matches_hf_generate() -> None:
    model, _, ids = make_model("llama", seed=3)
    prompt = [5, 6, 7, 8]
    ours = decode(model, prompt, ids, DecodeConfig(compression_ratio=None, draft_tokens=2, max_new_tokens=15,
                                                   stop_at_eos=False)).output_ids
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=15, do_sample=False, min_new_tokens=15)
    assert ours == hf[0, len(prompt):].tolist()


@pytest.mark.parametrize("window", [0, 1])
def test_kv_length_after_each_step(window: int) -> None:
    model, _, ids = make_model("llama", seed=4)
    prompt = [5, 6, 7, 8, 9, 10, 11]
    every, ratio = 7, 2
    cfg = DecodeConfig(compression_ratio=ratio, window=window, draft_tokens=2, max_new_tokens=40,
                       force_split_every=every, stop_at_eos=False)
    res = decode(model, prompt, ids, cfg)
    m = num_memory(every, ratio, ids.max_memory)
    assert res.steps == 40 // every
    for j, kv in enumerate(res.kv_after_step):
        kept = (j + 1) * (m + 1)  # memory tokens + continue token of every closed step
        raw_visible = min(window, j + 1) * every  # HybridThinker keeps the last w raw steps
        assert kv == len(prompt) + kept + raw_visible
    open_step = 40 - res.steps * every
    visible = min(window, res.steps) * every
    assert res.final_kv == len(prompt) + res.steps * (m + 1) + visible + open_step - 1  # last token not fed yet
    vanilla = decode(model, prompt, ids, DecodeConfig(compression_ratio=None, draft_tokens=0, max_new_tokens=40,
                                                      stop_at_eos=False))
    assert vanilla.final_kv == len(prompt) + 40 - 1
    assert res.final_kv < vanilla.final_kv


def test_cache_keep_slices_every_layer() -> None:
    model, _, _ = make_model("qwen2", seed=5)
    cache = new_cache(model)
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8]]), past_key_values=cache, use_cache=True)
    before = [layer.keys.clone() for layer in cache.layers]
    cache_keep(cache, torch.tensor([0, 2, 3]))
    assert cache.get_seq_length() == 3
    for old, layer in zip(before, cache.layers, strict=True):
        torch.testing.assert_close(layer.keys, old[:, :, [0, 2, 3]])


def toy_traces() -> list[Any]:
    from pocsdk.reasoning.memosight.training import Trace

    out = []
    for i in range(6):
        a, b = i % 5, (i + 2) % 7
        steps = [f"w{a} w{b} w{a + b}", f"w{a + 10} w{b + 10} w20", f"w30 w{a + 31}"]
        out.append(Trace(question=f"w{a} w{b}", steps=steps, answer=f"w{a + b + 40}"))
    return out


def test_training_reduces_loss() -> None:
    from pocsdk.reasoning.memosight.training import TrainConfig, encode_traces, train

    model, tok, ids = make_model("llama", seed=6)
    cfg = TrainConfig(ratios=(2, 4), steps=30, lr=3e-3, gradient_checkpointing=False, batch_size=2, seed=0,
                      max_length=128)
    layouts = encode_traces(tok, ids, toy_traces(), cfg)
    assert all(any(k == FORESIGHT for k in lay.kinds) for lay in layouts)
    res = train(model, layouts, cfg)
    first = sum(res.loss[:3]) / 3
    last = sum(res.loss[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    assert res.mtp_loss[-1] < res.mtp_loss[0]


def test_lora_and_checkpointing_train_step(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from pocsdk.reasoning.memosight.training import TrainConfig, encode_traces, prepare_lora, save, train

    model, tok, ids = make_model("qwen2", seed=7, attn="sdpa")
    cfg = TrainConfig(steps=2, lr=1e-3, lora_r=4, gradient_checkpointing=True, max_length=128)
    layouts = encode_traces(tok, ids, toy_traces()[:2], cfg)
    peft_model = prepare_lora(model, ids, cfg)
    res = train(peft_model, layouts, cfg)
    assert len(res.loss) == 2 and all(x == x for x in res.loss)
    out = save(peft_model, tok, tmp_path / "ckpt", {"method": "memosight"})
    assert (out / "model.safetensors").exists() and (out / "memosight.json").exists()


def test_lora_trains_the_output_rows_of_untied_models() -> None:
    """peft trained the new tokens' input rows only: with untied embeddings (many 7B/8B reasoning bases) the output
    head's rows stayed at their initial mean, so the model never emitted the splitter and never compressed."""
    pytest.importorskip("peft")
    from pocsdk.reasoning.memosight.training import TrainConfig, encode_traces, prepare_lora, train

    model, tok, ids = make_model("llama", seed=3, tie=False)
    head = model.get_output_embeddings().weight
    assert head.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    special = sorted(ids.special())
    before = head.detach().clone()
    cfg = TrainConfig(ratios=(2.0,), steps=4, lr=5e-3, lora_r=4, gradient_checkpointing=False, max_length=128)
    peft_model = prepare_lora(model, ids, cfg)
    train(peft_model, encode_traces(tok, ids, toy_traces()[:2], cfg), cfg)
    after = peft_model.merge_and_unload().get_output_embeddings().weight.detach()
    others = [i for i in range(before.shape[0]) if i not in special]
    assert not torch.equal(after[special], before[special])  # the MemoSight tokens' output rows learnt
    assert torch.equal(after[others], before[others])  # and nothing else of the head


def test_cli_train_memosight(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pocsdk.cli.app import app

    model, tok, _ = make_model("llama", seed=8, attn="sdpa")
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    data = tmp_path / "gsm.jsonl"
    data.write_text("\n".join(json.dumps({"question": "w1 w2", "answer": f"w{i} w3\nw4 w{i + 5}\n#### w9"})
                              for i in range(4)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", "memosight", "--base", str(base), "--data", str(data), "--out",
                                      str(out), "--steps", "2", "--ratios", "2,4", "--device", "cpu",
                                      "--no-gradient-checkpointing"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2
    session = ReasoningSession.from_pretrained(str(out), device="cpu", attn_implementation="eager")
    ans = session.generate("w1 w2", compression_ratio=2, max_new_tokens=8, force_split_every=4)
    assert ans.stats.generated_tokens <= 8
    # the trained settings become the session's defaults: the smallest trained ratio and the window
    assert session.compression_ratio == 2.0 and session.window == 0


def test_session_stats_and_floor() -> None:
    model, tok, _ = make_model("llama", seed=9)
    session = ReasoningSession(model, tok, tokens=TOKENS, draft_tokens=2)
    res = session.generate("w1 w2 w3", floor=0.95, max_new_tokens=20, force_split_every=6)
    st = res.stats
    assert st.compression_ratio == 4.0 and st.ratio_source == "fixed-mapping"
    assert st.generated_tokens == len(res.output_ids) <= 20
    assert st.steps_compressed == len(res.steps) >= 1
    assert st.forward_passes >= 1 and st.tokens_per_forward == pytest.approx(st.generated_tokens / st.forward_passes)
    assert st.peak_kv_entries >= st.final_kv_entries and st.peak_kv_bytes > 0
    assert 0 < st.kv_saving < 1
    assert st.acceptance_rate is None or 0 <= st.acceptance_rate <= 1
    assert st.total_s >= st.verify_s + st.prefill_s + st.compress_s
    none = session.generate("w1", floor=1.0, max_new_tokens=5)
    assert none.stats.compression_ratio is None and none.stats.steps_compressed == 0
    pred = ReasoningSession(model, tok, tokens=TOKENS, ratio_predictor=lambda f: 8.0)
    assert pred.generate("w1", floor=0.9, max_new_tokens=3).stats.ratio_source == "predictor"
    from pocsdk.errors import ConfigError

    with pytest.raises(ConfigError):
        session.generate("w1", floor=0.9, compression_ratio=4)
    off = session.generate("w1 w2 w3", compression_ratio=None, max_new_tokens=12, force_split_every=4)
    assert off.stats.compression_ratio is None and off.stats.steps_compressed == 0  # None turns it off


def test_bfloat16_training_keeps_float32_master_weights() -> None:
    from pocsdk.reasoning.memosight.training import TrainConfig, encode_traces, train

    model, tok, ids = make_model("llama", seed=10)
    model = model.to(torch.bfloat16)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(ratios=(2,), steps=20, lr=1e-4, batch_size=2, gradient_checkpointing=False, max_length=128)
    train(model, encode_traces(tok, ids, toy_traces(), cfg), cfg)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # back to the model's dtype
    changed = sum(int((p.detach().float() != before[n]).sum()) for n, p in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    assert changed / total > 0.9, changed / total  # steps below bf16 spacing accumulate in float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_equivalence_on_cuda() -> None:
    model, _, ids = make_model("llama", seed=10, attn="sdpa")
    model.to("cuda")
    cfg = DecodeConfig(compression_ratio=4, draft_tokens=2, max_new_tokens=30, force_split_every=7,
                       stop_at_eos=False)
    check_equivalence(model, ids, [5, 6, 7, 8], cfg, atol=1e-3)


def test_speed_benchmark_runs_on_tiny_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memosight_speed.py"
    spec = importlib.util.spec_from_file_location("memosight_speed", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "memosight_speed", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    rows = mod.main(["--model-size", "tiny", "--new-tokens", "12", "--step-tokens", "5", "--ratio", "2",
                     "--repeats", "1", "--oracle", "--skip-hf", "--json", str(tmp_path / "rows.json")])
    by_mode = {r.mode: r for r in rows}
    assert set(by_mode) == {"vanilla", "memosight", "memosight+fs", "oracle-fs"}
    assert all(r.new_tokens == 12 for r in rows)
    assert by_mode["memosight"].final_kv_entries < by_mode["vanilla"].final_kv_entries
    assert by_mode["oracle-fs"].forward_passes < by_mode["memosight"].forward_passes
    assert json.loads((tmp_path / "rows.json").read_text())[0]["mode"] == "vanilla"


def test_inputs_and_settings_are_checked(tmp_path: Path) -> None:
    """Malformed training records, ratios that grow the cache, non-string questions, a broken memosight.json
    and a missing model folder gave raw exceptions or were accepted."""
    from pocsdk.errors import ConfigError, InvalidInputError, InvalidTypeError
    from pocsdk.reasoning.memosight.model import load_model
    from pocsdk.reasoning.memosight.session import trained_defaults
    from pocsdk.reasoning.memosight.training import read_traces

    good = json.dumps({"question": "q", "reasoning": "a\n\nb", "answer": "c"})
    for bad_line, where in (("{bad json", ":2"), (json.dumps({"question": "q", "reasoning": 123}), ":2"),
                            (json.dumps({"conversations": "oops"}), ":2"),
                            (json.dumps({"question": None, "reasoning": "a\n\nb"}), ":2")):
        f = tmp_path / "traces.jsonl"
        f.write_text(good + "\n" + bad_line + "\n")
        with pytest.raises(InvalidInputError, match=where):
            read_traces(f)
    f.write_text(json.dumps({"examples": [json.loads(good), json.loads(good)]}, indent=2))
    assert len(read_traces(f)) == 2 and len(read_traces(f, limit=1)) == 1
    with pytest.raises(ConfigError):
        read_traces(f, limit=0)
    for ratio in (float("nan"), 0.5, 1.0):
        with pytest.raises(ConfigError, match="compression_ratio"):
            DecodeConfig(compression_ratio=ratio).validate()
    with pytest.raises(ConfigError):
        DecodeConfig(max_new_tokens=2.5).validate()  # type: ignore[arg-type]
    model, tok, _ = make_model("llama", seed=3)
    session = ReasoningSession(model, tok, tokens=TOKENS)
    with pytest.raises(InvalidTypeError):
        session.generate(["w1"], max_new_tokens=2)  # type: ignore[arg-type]
    plain = session.generate("w1 w2", compression_ratio=None, max_new_tokens=6)
    assert plain.stats.kv_saving == pytest.approx(0.0)  # a plain cache never holds the last token either
    for meta in ("[1]", '{"ratios": 4, "window": -3}'):
        (tmp_path / "memosight.json").write_text(meta)
        assert trained_defaults(str(tmp_path)) == {}
    with pytest.raises(ConfigError, match="cannot load model"):
        load_model(str(tmp_path / "nope"))


def test_training_inputs_fail_before_training_with_clear_errors(tmp_path: Path) -> None:
    """Undecodable or not-gzip data, a negative learning rate or LoRA rank, CUDA on a CPU-only machine, an
    unwritable output: tracebacks, silent full fine-tuning, or failures after the whole run."""
    import gzip

    from pocsdk.cli.train import check_writable
    from pocsdk.errors import ConfigError, InvalidInputError
    from pocsdk.reasoning.memosight.model import load_model
    from pocsdk.reasoning.memosight.training import TrainConfig, encode_traces, read_traces

    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe{}\n")
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip")
    for name in ("bad.jsonl", "fake.jsonl.gz"):
        with pytest.raises(InvalidInputError, match="cannot read traces"):
            read_traces(tmp_path / name)
    with gzip.open(tmp_path / "ok.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"question": "q", "reasoning": "w1 w2\n\nw3", "answer": "w4"}) + "\n")
    assert len(read_traces(tmp_path / "ok.jsonl.gz")) == 1
    for bad in ({"lr": -1.0}, {"lr": float("nan")}, {"lora_r": -1}, {"window": -1}, {"max_length": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            load_model(str(tmp_path), device="cuda")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write the checkpoint"):
        check_writable(tmp_path / "file" / "ckpt")
    # a prompt that fills max_length leaves nothing to learn: left out with a warning, or an error when all are
    _, tok, ids = make_model("llama", seed=3)
    traces = toy_traces()
    with pytest.raises(InvalidInputError, match="max_length"):
        encode_traces(tok, ids, traces, TrainConfig(max_length=3))
    long = [*traces[:2], traces[2].__class__(question=" ".join(["w1"] * 60), steps=["w2 w3"], answer="w4")]
    with pytest.warns(UserWarning, match="1 of 3 traces"):
        kept = encode_traces(tok, ids, long, TrainConfig(max_length=40))
    assert len(kept) == 2


def test_new_token_rows_start_at_the_mean_in_a_padded_table() -> None:
    """A table with spare rows (Qwen pads its vocabulary) kept random rows for the new tokens."""
    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok) + 64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    first = len(tok)
    ids = add_special_tokens(tok, model, TOKENS)
    emb = model.get_input_embeddings().weight
    mean = emb[:first].mean(dim=0)
    torch.testing.assert_close(emb[ids.splitter], mean)
    assert emb.shape[0] == first + 64  # no resize: the spare rows took the new tokens
