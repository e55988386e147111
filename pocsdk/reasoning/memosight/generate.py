"""MemoSight generation: greedy decoding that compresses each finished step and drafts with foresight tokens.

When the splitter is produced, one *compress pass* feeds the splitter, the step's memory tokens and the
continue token (the continue token already blind to the raw step), then the raw step's KV entries are
evicted (with ``window`` = w > 0, the raw step w steps back is evicted instead: HybridThinker).

Self-speculative decoding is fused into the ordinary passes: each pass feeds the pending token, the drafts
from the previous pass, and for each of them ``draft_tokens`` foresight tokens at the next positions that
see the prefix up to that token only. The longest draft prefix equal to the greedy choice is accepted; the
foresight group of the last accepted token supplies the next drafts. Rejected drafts and every foresight
token are cut from the cache after the pass, so the output is exactly the greedy output of the same model
with the same compression (checked by the tests). The official code spends a draft pass and a separate
verify pass per step; fusing them (a tree-shaped mask over pending token, drafts and foresight groups)
commits 1 to ``draft_tokens + 1`` tokens per pass.

Batch size 1, greedy only (no sampling, no repetition penalty).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pocsdk.compressors._torch import cache_kwarg, import_torch
from pocsdk.errors import ConfigError, InvalidInputError
from pocsdk.reasoning.memosight.data import CONTINUE, FORESIGHT, MEMORY, PROMPT, TEXT, memory_positions, num_memory
from pocsdk.reasoning.memosight.model import (
    FEATURE,
    additive,
    cache_bytes,
    cache_keep,
    cache_length,
    cache_truncate,
    model_device,
    model_dtype,
    new_cache,
    visibility,
)
from pocsdk.reasoning.memosight.tokens import TokenIds


@dataclass
class DecodeConfig:
    """How one generation runs. ``compression_ratio`` None decodes without memory tokens (vanilla)."""

    compression_ratio: float | None = 4.0
    window: int = 0
    """HybridThinker: keep the last ``window`` raw steps visible (0 = MemoSight)."""
    draft_tokens: int = 2
    """Foresight drafts per pass (0 = no speculation)."""
    max_new_tokens: int = 512
    force_split_every: int | None = None
    """Force the splitter once a step has this many tokens (benchmarks with untrained models; >= 2)."""
    stop_at_eos: bool = True

    def validate(self) -> None:
        r = self.compression_ratio
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r)
                              or r <= 1):
            raise ConfigError(f"compression_ratio must be a number above 1 (or None for no compression), got {r!r}"
                              " (a ratio of 1 or less grows the cache)")
        for name in ("window", "draft_tokens", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.window < 0 or self.draft_tokens < 0 or self.max_new_tokens < 1:
            raise ConfigError("window and draft_tokens must be >= 0, max_new_tokens >= 1")
        if self.force_split_every is not None and self.force_split_every < 2:
            raise ConfigError("force_split_every must be >= 2")


@dataclass
class DecodeResult:
    """Output tokens (text, splitters, eos) and raw counters; :mod:`session` turns them into stats."""

    output_ids: list[int]
    prompt_tokens: int
    forward_passes: int = 0
    compress_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    peak_kv: int = 0
    peak_kv_bytes: int = 0
    final_kv: int = 0
    steps: int = 0
    memory_tokens: int = 0
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    compress_s: float = 0.0
    total_s: float = 0.0
    kv_after_step: list[int] = field(default_factory=list)
    """Cache entries right after each compress pass (eviction done)."""
    choice_logits: list[Any] = field(default_factory=list)
    """With ``record=True``: the logits row each output token was chosen from."""
    foresight_logits: dict[tuple[int, int], Any] = field(default_factory=dict)
    """With ``record=True``: (anchor position, offset d) -> logits of that foresight token."""


@dataclass
class _Tok:
    tok: int
    pos: int
    kind: int
    raw_step: int
    ncont: int
    anchor: int = -1
    """For foresight tokens: index of the main token in this pass they hang on."""


def decode(
    model: Any,
    prompt_ids: list[int],
    ids: TokenIds,
    cfg: DecodeConfig,
    *,
    record: bool = False,
    draft_fn: Callable[[list[int], list[int]], list[int]] | None = None,
) -> DecodeResult:
    """Greedy MemoSight decoding of one prompt (batch size 1).

    ``draft_fn(output_so_far, foresight_argmax) -> drafts`` replaces the foresight drafts (tests use an
    oracle to exercise acceptance); the result is the greedy output whatever it returns.
    """
    cfg.validate()
    if not prompt_ids:
        raise InvalidInputError("empty prompt")
    return _Decoder(model, ids, cfg, record, draft_fn).run(list(prompt_ids))


class _Decoder:
    """State of one decoding: cache, per-entry metadata, positions and counters."""

    def __init__(self, model: Any, ids: TokenIds, cfg: DecodeConfig, record: bool,
                 draft_fn: Callable[[list[int], list[int]], list[int]] | None) -> None:
        self.torch = import_torch(FEATURE)
        self.model, self.ids, self.cfg, self.record, self.draft_fn = model, ids, cfg, record, draft_fn
        self.device, self.dtype = model_device(model), model_dtype(model)
        self.cache = new_cache(model)
        self.raw: list[int] = []  # raw step id of each cache entry (-1: prompt, memory, continue)
        self.compress = cfg.compression_ratio is not None
        self.k = cfg.draft_tokens
        self.step_id = 0
        self.step_p0 = 0
        self.step_len = 0
        self.ncont = 0
        self.pos = 0  # position of the next token fed
        self.res: DecodeResult = DecodeResult(output_ids=[], prompt_tokens=0)

    # --- one forward pass ---

    def _pass(self, main: list[_Tok], anchors: list[int], last_only: bool = False) -> tuple[Any, Any]:
        """Feed ``main`` plus ``k`` foresight tokens on each main index in ``anchors``; (main, fore) logits.

        ``last_only``: only the last main token's logits are needed (prefill, compress pass), so the LM head
        runs on it and the foresight tokens alone.
        """
        torch = self.torch
        toks = list(main)
        for a in anchors:
            for d in range(1, self.k + 1):
                toks.append(_Tok(self.ids.foresight, main[a].pos + d, FORESIGHT, -1, main[a].ncont, a))
        q, past = len(toks), len(self.raw)
        tree = torch.zeros(q, q, dtype=torch.bool)
        tree[: len(main), : len(main)] = torch.ones(len(main), len(main), dtype=torch.bool).tril()
        for i in range(len(main), q):
            tree[i, : toks[i].anchor + 1] = True
            tree[i, i] = True
        base = torch.cat([torch.ones(q, past, dtype=torch.bool), tree], dim=1)
        k_raw = torch.tensor(self.raw + [t.raw_step for t in toks], dtype=torch.long)
        k_fore = torch.tensor([False] * past + [t.kind == FORESIGHT for t in toks], dtype=torch.bool)
        q_ncont = torch.tensor([t.ncont for t in toks], dtype=torch.long)
        allowed = visibility(base, q_ncont, k_raw, k_fore, torch.arange(past, past + q), self.cfg.window)
        with torch.no_grad():
            out = self.model(
                input_ids=torch.tensor([[t.tok for t in toks]], device=self.device),
                position_ids=torch.tensor([[t.pos for t in toks]], device=self.device),
                attention_mask=additive(allowed, self.dtype).to(self.device),
                use_cache=True, **cache_kwarg(self.model, self.cache),
                logits_to_keep=torch.arange(len(main) - 1 if last_only else 0, q, device=self.device))
        self.res.forward_passes += 1
        n = cache_length(self.cache)
        if n > self.res.peak_kv:
            self.res.peak_kv = n
            self.res.peak_kv_bytes = cache_bytes(self.cache)
        self.raw.extend(t.raw_step for t in toks)
        logits = out.logits[0].float()
        n_main = 1 if last_only else len(main)
        return logits[:n_main], logits[n_main:].view(len(anchors), self.k, -1) if anchors else None

    def _keep(self, keep: Any) -> None:
        cache_keep(self.cache, keep.to(self.device))
        self.raw = [self.raw[i] for i in keep.tolist()]

    def _truncate(self, length: int) -> None:
        if length < len(self.raw):
            cache_truncate(self.cache, length)
            del self.raw[length:]

    # --- choices ---

    def _choose(self, logits: Any) -> int:
        """Greedy token, or the splitter when a forced split is due."""
        every = self.cfg.force_split_every
        if self.compress and every is not None and self.step_len >= every - 1:
            return self.ids.splitter
        return int(logits.argmax())

    def _commit(self, tok: int, logits: Any) -> None:
        self.res.output_ids.append(tok)
        self.step_len += 1
        if self.record:
            self.res.choice_logits.append(logits.detach().cpu())

    def _drafts(self, fore: Any, group: int) -> list[int]:
        t0 = time.perf_counter()
        drafts = [int(x) for x in fore[group].argmax(dim=-1).tolist()]
        if self.draft_fn is not None:
            drafts = list(self.draft_fn(list(self.res.output_ids), drafts))[: self.k]
        self.res.draft_s += time.perf_counter() - t0
        return drafts

    def _record_fore(self, main: list[_Tok], fore: Any, anchors: list[int], upto: int) -> None:
        """Keep foresight logits of groups hung on main tokens that stay (index <= ``upto``)."""
        if self.record and fore is not None:
            for g, a in enumerate(anchors):
                for d in range(1, self.k + 1):
                    if a <= upto:
                        self.res.foresight_logits[(main[a].pos, d)] = fore[g, d - 1].detach().cpu()

    def _done(self, tok: int) -> bool:
        if len(self.res.output_ids) >= self.cfg.max_new_tokens:
            return True
        return self.cfg.stop_at_eos and self.ids.eos is not None and tok == self.ids.eos

    # --- the loop ---

    def run(self, prompt: list[int]) -> DecodeResult:
        t_start = time.perf_counter()
        self.res.prompt_tokens = len(prompt)
        main = [_Tok(t, i, PROMPT, -1, 0) for i, t in enumerate(prompt)]
        t0 = time.perf_counter()
        anchors = [len(main) - 1] if self.k else []
        logits, fore = self._pass(main, anchors, last_only=True)
        self.res.prefill_s += time.perf_counter() - t0
        self._record_fore(main, fore, anchors, len(main) - 1)
        self._truncate(len(prompt))
        self.pos = self.step_p0 = len(prompt)
        pending = self._choose(logits[-1])
        self._commit(pending, logits[-1])
        drafts = self._drafts(fore, 0) if fore is not None else []
        while not self._done(pending):
            if self.compress and pending == self.ids.splitter:
                pending, drafts = self._compress_step()
            else:
                pending, drafts = self._decode_step(pending, drafts)
        self.res.final_kv = cache_length(self.cache)
        self.res.total_s = time.perf_counter() - t_start
        return self.res

    def _decode_step(self, pending: int, drafts: list[int]) -> tuple[int, list[int]]:
        t0 = time.perf_counter()
        room = self.cfg.max_new_tokens - len(self.res.output_ids)
        drafts = drafts[: max(0, room - 1)]
        raw = self.step_id if self.compress else -1
        main = [_Tok(t, self.pos + i, TEXT, raw, self.ncont) for i, t in enumerate([pending, *drafts])]
        anchors = list(range(len(main))) if self.k else []
        logits, fore = self._pass(main, anchors)
        t1 = time.perf_counter()
        base = len(self.raw) - len(main) - (len(main) * self.k if fore is not None else 0)
        i = 0
        while True:
            nxt = self._choose(logits[i])
            if i < len(drafts) and drafts[i] == nxt and nxt != self.ids.splitter and nxt != self.ids.eos:
                self._commit(nxt, logits[i])
                i += 1
                continue
            break
        self.res.drafted += len(drafts)
        self.res.accepted += i
        self._record_fore(main, fore, anchors, i)
        self._truncate(base + 1 + i)
        self.pos += 1 + i
        self._commit(nxt, logits[i])
        self.res.draft_s += time.perf_counter() - t1
        self.res.verify_s += t1 - t0
        new_drafts = self._drafts(fore, i) if fore is not None else []
        return nxt, new_drafts

    def _compress_step(self) -> tuple[int, list[int]]:
        t0 = time.perf_counter()
        assert self.cfg.compression_ratio is not None
        n = self.step_len
        m = num_memory(n, self.cfg.compression_ratio, self.ids.max_memory)
        main = [_Tok(self.ids.splitter, self.pos, TEXT, self.step_id, self.ncont)]
        main += [_Tok(self.ids.memory[k], p, MEMORY, -1, self.ncont)
                 for k, p in enumerate(memory_positions(self.step_p0, n, m))]
        main.append(_Tok(self.ids.continue_, self.step_p0 + n, CONTINUE, -1, self.ncont + 1))
        anchors = [len(main) - 1] if self.k else []
        logits, fore = self._pass(main, anchors, last_only=True)
        self._record_fore(main, fore, anchors, len(main) - 1)
        keep_len = len(self.raw) - (self.k if fore is not None else 0)
        evict = self.step_id - self.cfg.window
        keep = [i for i in range(keep_len) if self.raw[i] != evict or evict < 0]
        self._keep(self.torch.tensor(keep, dtype=self.torch.long))
        self.res.steps += 1
        self.res.memory_tokens += m
        self.res.kv_after_step.append(cache_length(self.cache))
        self.ncont += 1
        self.step_id += 1
        self.step_p0 = self.pos = self.step_p0 + n + 1
        self.step_len = 0
        self.res.compress_s += time.perf_counter() - t0
        tok = self._choose(logits[-1])
        self._commit(tok, logits[-1])
        return tok, (self._drafts(fore, 0) if fore is not None else [])
