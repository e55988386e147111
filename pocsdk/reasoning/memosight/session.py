"""``ReasoningSession``: ask a MemoSight model a question under a floor or a compression ratio, get stats back.

``floor`` (relative task performance to keep, in (0, 1]) maps to a compression ratio. pocsdk.prediction
has no MemoSight predictor, so by default a **fixed mapping** is used (:data:`FLOOR_TO_RATIO`, a heuristic
ordered like the paper's accuracy-vs-ratio trade-off, not measured by pocsdk); pass ``ratio_for_floor`` to
plug in a fitted predictor. ``stats.ratio_source`` says which one chose the ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from pocsdk.errors import ConfigError, InvalidRateError, InvalidTypeError
from pocsdk.reasoning.memosight.data import format_prompt, split_output
from pocsdk.reasoning.memosight.generate import DecodeConfig, DecodeResult, decode
from pocsdk.reasoning.memosight.tokens import SpecialTokens, TokenIds, add_special_tokens, resolve_token_ids

FLOOR_TO_RATIO: tuple[tuple[float, float | None], ...] = (
    (0.99, None),
    (0.97, 2.0),
    (0.95, 4.0),
    (0.92, 6.0),
    (0.88, 8.0),
    (0.0, 16.0),
)
"""(minimum floor, ratio): the first row whose floor is <= the requested floor wins; None = no compression."""


def ratio_for_floor(floor: float) -> float | None:
    """The fixed floor -> compression ratio mapping (see :data:`FLOOR_TO_RATIO`)."""
    if not (isinstance(floor, (int, float)) and 0.0 < floor <= 1.0) or math.isnan(floor):
        raise InvalidRateError(f"floor must be in (0, 1], got {floor!r}")
    for minimum, ratio in FLOOR_TO_RATIO:
        if floor >= minimum:
            return ratio
    return FLOOR_TO_RATIO[-1][1]


class ReasoningStats(BaseModel):
    """What one generation cost. KV counts are cache entries (tokens) per layer; bytes cover all layers."""

    prompt_tokens: int
    generated_tokens: int
    forward_passes: int
    tokens_per_forward: float
    """Generated tokens per forward pass (> 1 when foresight drafts are accepted)."""
    drafted_tokens: int
    accepted_tokens: int
    acceptance_rate: float | None
    """Accepted / drafted foresight tokens; None when nothing was drafted."""
    peak_kv_entries: int
    """Largest cache length, transient draft and foresight entries included."""
    peak_kv_bytes: int
    final_kv_entries: int
    uncompressed_kv_entries: int
    """prompt + generated tokens: what a vanilla cache holds at the end."""
    kv_saving: float
    """1 - final / uncompressed entries."""
    steps_compressed: int
    memory_tokens: int
    compression_ratio: float | None
    ratio_source: Literal["explicit", "fixed-mapping", "predictor", "none"]
    prefill_s: float = Field(description="the prompt pass")
    draft_s: float = Field(description="selecting drafts from foresight logits and acceptance bookkeeping")
    verify_s: float = Field(description="decoding forward passes (they verify drafts and draft the next ones)")
    compress_s: float = Field(description="compress passes and KV eviction")
    total_s: float


class ReasoningResult(BaseModel):
    """The answer, the visible reasoning and the stats."""

    answer: str
    """Text after the last compressed step."""
    text: str
    """All visible output (steps and answer), special tokens removed."""
    steps: list[str]
    output_ids: list[int]
    stats: ReasoningStats


def make_stats(res: DecodeResult, ratio: float | None, source: str) -> ReasoningStats:
    """Stats from raw decoder counters."""
    gen = len(res.output_ids)
    uncompressed = res.prompt_tokens + max(0, gen - 1)  # a plain cache never holds the last token generated
    return ReasoningStats(
        prompt_tokens=res.prompt_tokens, generated_tokens=gen, forward_passes=res.forward_passes,
        tokens_per_forward=gen / max(1, res.forward_passes), drafted_tokens=res.drafted,
        accepted_tokens=res.accepted, acceptance_rate=(res.accepted / res.drafted) if res.drafted else None,
        peak_kv_entries=res.peak_kv, peak_kv_bytes=res.peak_kv_bytes, final_kv_entries=res.final_kv,
        uncompressed_kv_entries=uncompressed, kv_saving=1.0 - res.final_kv / max(1, uncompressed),
        steps_compressed=res.steps, memory_tokens=res.memory_tokens, compression_ratio=ratio,
        ratio_source=source,  # type: ignore[arg-type]  # one of the literal values
        prefill_s=res.prefill_s, draft_s=res.draft_s, verify_s=res.verify_s, compress_s=res.compress_s,
        total_s=res.total_s)


class _Unset:
    """Type of :data:`UNSET`: "not given", so that ``compression_ratio=None`` can mean "no compression"."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


def trained_defaults(path: str) -> dict[str, Any]:
    """Session defaults from the ``memosight.json`` that ``pocsdk train memosight`` writes: the window it was
    trained with, and its smallest trained ratio as the default compression (the others stay choosable)."""
    import json
    from pathlib import Path

    meta_file = Path(path) / "memosight.json"
    if not meta_file.is_file():
        return {}
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict):
        return {}
    out: dict[str, Any] = {}
    window = meta.get("window")
    if isinstance(window, int) and not isinstance(window, bool) and window >= 0:
        out["window"] = window
    listed = meta.get("ratios")
    ratios = [r for r in (listed if isinstance(listed, list) else [])
              if isinstance(r, (int, float)) and not isinstance(r, bool) and r > 1]
    if ratios:
        out["compression_ratio"] = float(min(ratios))
    return out


class ReasoningSession:
    """A MemoSight model, its tokenizer and default decoding settings."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        tokens: SpecialTokens | None = None,
        compression_ratio: float | None = 4.0,
        window: int = 0,
        draft_tokens: int = 2,
        system: str | None = None,
        ratio_predictor: Callable[[float], float | None] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.ids: TokenIds = resolve_token_ids(tokenizer, tokens)
        self.compression_ratio = compression_ratio
        self.window = window
        self.draft_tokens = draft_tokens
        self.system = system
        self.ratio_predictor = ratio_predictor

    @classmethod
    def from_pretrained(cls, path: str, *, gguf_file: str | None = None, device: str = "auto",
                        dtype: str | None = None, attn_implementation: str = "sdpa",
                        tokens: SpecialTokens | None = None, **kwargs: Any) -> ReasoningSession:
        """Load a MemoSight checkpoint (or any causal LM: the tokens are added untrained if missing)."""
        from pocsdk.compressors._torch import resolve_device
        from pocsdk.reasoning.memosight.model import FEATURE, load_model

        dev = resolve_device(device, FEATURE)
        model, tokenizer = load_model(path, gguf_file=gguf_file, device=dev, dtype=dtype,
                                      attn_implementation=attn_implementation)
        add_special_tokens(tokenizer, model, tokens)
        model.eval()
        return cls(model, tokenizer, tokens=tokens, **{**trained_defaults(path), **kwargs})

    def _ratio(self, floor: float | None, compression_ratio: float | _Unset | None) -> tuple[float | None, str]:
        if not isinstance(compression_ratio, _Unset):  # a number, or None: no compression for this call
            if floor is not None and compression_ratio is not None:
                raise ConfigError("pass floor or compression_ratio, not both")
            return (None, "none") if compression_ratio is None else (float(compression_ratio), "explicit")
        if floor is not None:
            if self.ratio_predictor is not None:
                return self.ratio_predictor(floor), "predictor"
            return ratio_for_floor(floor), "fixed-mapping"
        return self.compression_ratio, ("explicit" if self.compression_ratio is not None else "none")

    def generate(
        self,
        question: str,
        *,
        floor: float | None = None,
        compression_ratio: float | _Unset | None = UNSET,
        max_new_tokens: int = 512,
        draft_tokens: int | None = None,
        window: int | None = None,
        force_split_every: int | None = None,
    ) -> ReasoningResult:
        """Answer ``question`` greedily with step compression and foresight drafting."""
        if not isinstance(question, str):
            raise InvalidTypeError(f"question must be a string, got {type(question).__name__}")
        ratio, source = self._ratio(floor, compression_ratio)
        if ratio is None:
            source = "none" if source == "explicit" else source
        cfg = DecodeConfig(compression_ratio=ratio, window=self.window if window is None else window,
                           draft_tokens=self.draft_tokens if draft_tokens is None else draft_tokens,
                           max_new_tokens=max_new_tokens, force_split_every=force_split_every)
        prompt = format_prompt(self.tokenizer, question, self.system)
        res = decode(self.model, prompt, self.ids, cfg)
        steps, tail = split_output(res.output_ids, self.ids)
        dec = lambda t: self.tokenizer.decode(t, skip_special_tokens=True).strip()  # noqa: E731
        step_texts = [dec(s) for s in steps]
        answer = dec(tail)
        text = "\n\n".join([*step_texts, answer]).strip()
        return ReasoningResult(answer=answer, text=text, steps=step_texts, output_ids=res.output_ids,
                               stats=make_stats(res, ratio, source))
