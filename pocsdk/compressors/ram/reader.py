"""``RAMReader``: answer a question about a long context with RAM in front of the decoder.

``generate(context, question, keep_ratio=...)`` reads the top ``keep_ratio`` of segments closely
and skims the rest; ``floor=...`` asks :class:`pocsdk.prediction.floor.FloorPolicy` for the most
aggressive keep rate predicted to hold that share of full-context performance. No predictor is
shipped for ``ram`` yet, so a floor needs ``predictor=<directory trained for ram>``; without one
the reader falls back to ``keep_ratio`` when it is given as well, and otherwise raises
:class:`~pocsdk.errors.ConfigError` saying so.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from pocsdk.compressors.ram.compressor import RAMCompressor
from pocsdk.errors import ArtifactError, ConfigError
from pocsdk.types import ContextLike, FloorDecision


class RAMStats(BaseModel):
    """Where the tokens and the time went for one answer."""

    original_tokens: int
    decoder_tokens: int
    """Prefill length: hybrid memory plus the question prompt."""
    memory_tokens: int
    segments: int
    kept_segments: int
    skimmed_segments: int
    keep_ratio: float
    """Close-reading fraction actually used (kept / all segments)."""
    keep_rate: float
    """memory_tokens / original_tokens, the keep rate the predictor speaks in."""
    effective_factor: float
    formula_factor: float
    new_tokens: int
    encode_ms: float
    """Tokenization, segmentation and the parallel encoder pass."""
    assemble_ms: float
    prefill_ms: float
    """Up to the first generated token."""
    decode_ms: float
    total_ms: float
    passthrough: bool = False
    floor: FloorDecision | None = None
    fallback: str | None = None
    """Why a floor request fell back to keep_ratio, if it did."""


class RAMAnswer(BaseModel):
    answer: str
    stats: RAMStats


class _Clock:
    """A generate() streamer that only notes when the first new token arrives (end of prefill)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self._seen_prompt = False

    def put(self, value: Any) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        if self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        """Nothing to flush."""


class RAMReader:
    """RAM compressor + its decoder, answering questions about long contexts."""

    def __init__(self, compressor: RAMCompressor | None = None, *, predictor: Any = None,
                 calibration: Any = None, **compressor_args: Any) -> None:
        if compressor is not None and compressor_args:
            raise ConfigError("give either a RAMCompressor or its arguments, not both")
        self.compressor = compressor or RAMCompressor(**compressor_args)
        self.predictor = predictor
        self.calibration = calibration
        self._policy: Any = None

    def _floor_selection(self, scored: Any, floor: float, keep_ratio: float | None) -> tuple[Any, Any, str | None]:
        from pocsdk.prediction.floor import FloorPolicy

        try:
            if self._policy is None:
                self._policy = FloorPolicy.for_compressor("ram", predictor=self.predictor,
                                                          calibration=self.calibration)
        except (ArtifactError, ConfigError) as exc:
            if keep_ratio is None:
                raise ConfigError(
                    f"floor={floor} needs a performance predictor trained for 'ram' ({exc}); "
                    "pass predictor=<directory>, or use keep_ratio=... instead"
                ) from exc
            return self.compressor.select_ratio(scored, keep_ratio), None, f"no predictor for 'ram': {exc}"
        result = self._policy.compress(self.compressor, scored, floor)
        rate = 1.0 if result.passthrough else 1.0 / max(result.floor.chosen_factor, 1.0)
        return self.compressor.select(scored, rate), result.floor, None

    def generate(
        self,
        context: ContextLike,
        question: str,
        *,
        floor: float | None = None,
        keep_ratio: float | None = None,
        max_new_tokens: int = 64,
        min_new_tokens: int = 0,
        **generate_kwargs: Any,
    ) -> RAMAnswer:
        """Answer ``question`` from ``context``: greedy decoding unless ``generate_kwargs`` say otherwise."""
        import torch

        if floor is None and keep_ratio is None:
            raise ConfigError("give floor=... or keep_ratio=...")
        t0 = time.perf_counter()
        comp = self.compressor
        scored = comp.score(context, question)
        t1 = time.perf_counter()
        decision = fallback = None
        if floor is not None:
            selection, decision, fallback = self._floor_selection(scored, floor, keep_ratio)
        else:
            assert keep_ratio is not None
            selection = comp.select_ratio(scored, keep_ratio)
        embeds, mask = comp.decoder_inputs(scored, selection)
        model = comp.load()
        tok = model.tokenizer
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        clock = _Clock()
        kwargs: dict[str, Any] = {"do_sample": False, **generate_kwargs}
        if tok.pad_token_id is not None:
            kwargs.setdefault("pad_token_id", tok.pad_token_id)
        with torch.inference_mode():
            out = model.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                         min_new_tokens=min_new_tokens, streamer=clock, **kwargs)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        new = out[0].tolist()
        answer = tok.decode(new, skip_special_tokens=True).strip()
        plan = comp.plan(scored, selection)
        first = clock.first or t3
        return RAMAnswer(answer=answer, stats=RAMStats(
            original_tokens=plan.original_tokens, decoder_tokens=plan.decoder_tokens,
            memory_tokens=plan.memory_tokens, segments=plan.segments, kept_segments=plan.kept_segments,
            skimmed_segments=plan.skimmed_segments, keep_ratio=plan.rho, keep_rate=plan.keep_rate,
            effective_factor=plan.effective_factor, formula_factor=plan.formula_factor, new_tokens=len(new),
            encode_ms=(t1 - t0) * 1000.0, assemble_ms=(t2 - t1) * 1000.0, prefill_ms=(first - t2) * 1000.0,
            decode_ms=(t3 - first) * 1000.0, total_ms=(t3 - t0) * 1000.0,
            passthrough=bool(scored.passthrough_reason or selection.passthrough_reason),
            floor=decision, fallback=fallback,
        ))
