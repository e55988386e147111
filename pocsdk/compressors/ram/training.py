"""Training RAM: answer LM loss through the hybrid decoder input, plus multi-positive InfoNCE.

Per example the context is segmented and encoded with the question; a keep ratio ``rho`` is drawn
(uniform on (0, 1], or fixed), the top segments by relevance are read closely and the others
skimmed, and the frozen decoder is asked for the answer: the LM loss on answer tokens flows back
through the skim vectors into the alignment layer (and the encoder, when it is trained). The
InfoNCE term pulls the query towards segments that contain an answer and away from the others:
``-log(sum_pos exp(cos/T) / sum_all exp(cos/T))`` (the official code uses the same form, T = 0.05).

Data: NQ-style JSON lines (``question``, ``answers``, ``ctxs`` with ``title``/``text``/``isgold``),
plain or gzipped, as in ``lost_in_the_middle/nq-open-oracle.jsonl.gz``.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from pocsdk.compressors.ram.compressor import cut_segments
from pocsdk.compressors.ram.model import RAMModel
from pocsdk.errors import ConfigError, InvalidInputError


@dataclass
class Example:
    """One training item."""

    question: str
    answers: list[str]
    documents: list[str]
    gold: list[bool] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Optimisation settings; the model's own settings (temperature, weight, LoRA rank) live in RAMConfig."""

    steps: int = 100
    lr: float = 1e-4
    grad_accum: int = 1
    keep_ratio: float | None = None
    """Fixed close-reading fraction; None draws one per example, uniform on (0, 1] (as the official option)."""
    train_encoder: Literal["none", "lora", "full"] = "none"
    """'none': alignment layer only; 'lora': plus LoRA on a separate encoder copy; 'full': the whole copy."""
    max_context_tokens: int = 4096
    max_answer_tokens: int = 32
    gradient_checkpointing: bool = True
    bf16: bool | None = None
    """None: bf16 autocast on CUDA, full precision elsewhere."""
    seed: int = 0
    max_grad_norm: float = 2.0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.train_encoder not in ("none", "lora", "full"):
            raise ConfigError(f"train_encoder must be 'none', 'lora' or 'full', got {self.train_encoder!r}")
        if self.keep_ratio is not None and not 0.0 <= self.keep_ratio <= 1.0:
            raise ConfigError(f"keep_ratio must be in [0, 1], got {self.keep_ratio}")
        if self.keep_ratio == 1.0 and self.train_encoder == "none":
            raise ConfigError("keep_ratio=1 skims nothing, so the alignment layer (all that train_encoder='none' "
                              "trains) gets no gradient: use a keep ratio below 1")
        if self.steps < 1 or self.grad_accum < 1:
            raise ConfigError("steps and grad_accum must be >= 1")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.max_context_tokens < 1:
            raise ConfigError(f"max_context_tokens must be >= 1, got {self.max_context_tokens}")


@dataclass
class TrainResult:
    """Loss curves (one entry per optimiser step) and totals."""

    loss: list[float] = field(default_factory=list)
    lm_loss: list[float] = field(default_factory=list)
    contrastive_loss: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def read_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """NQ-style examples from a ``.jsonl`` or ``.jsonl.gz`` file (question, answers, ctxs)."""
    p = Path(path)
    if limit is not None and limit < 1:
        raise ConfigError(f"the example limit must be >= 1 (or none for all), got {limit}")
    opener: Callable[..., Any] = gzip.open if p.suffix == ".gz" else open
    out: list[Example] = []
    try:
        with opener(p, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InvalidInputError(f"{p}:{lineno}: not valid JSON ({exc})") from None
                try:
                    ctxs = row["ctxs"]
                    docs = [(c.get("title") + " " if c.get("title") else "") + c["text"] for c in ctxs]
                    ex = Example(question=str(row["question"]), answers=[str(a) for a in row["answers"]],
                                 documents=docs, gold=[bool(c.get("isgold", c.get("hasanswer", False))) for c in ctxs])
                except (KeyError, TypeError) as exc:
                    raise InvalidInputError(f"{p}:{lineno}: needs question, answers, ctxs[].text ({exc})") from exc
                out.append(ex)
                if limit is not None and len(out) >= limit:
                    break
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip.BadGzipFile is an OSError
        raise InvalidInputError(f"cannot read training data {p} (UTF-8 JSON Lines, gzipped or not): {exc}") \
            from exc
    if not out:
        raise InvalidInputError(f"{p} has no examples")
    return out


def multi_positive_info_nce(similarity: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """``-log(sum_pos exp(s/T) / sum_all exp(s/T))`` for one query over its segments (log-sum-exp form)."""
    if similarity.ndim != 1 or positives.shape != similarity.shape:
        raise ValueError("similarity and positives must be 1-D and of the same length")
    logits = similarity / temperature
    pos = logits.masked_fill(~positives.bool(), float("-inf"))
    return torch.logsumexp(logits, dim=0) - torch.logsumexp(pos, dim=0)


def positive_segments(documents: list[str], seg_doc: list[int], seg_offsets: list[list[tuple[int, int]]],
                      answers: list[str], gold: list[bool]) -> list[bool]:
    """Segments whose characters overlap an answer occurrence; if none, the segments of gold documents."""
    spans: list[tuple[int, int, int]] = []
    for di, text in enumerate(documents):
        low = text.lower()
        for ans in answers:
            a = ans.strip().lower()
            if not a:
                continue
            start = low.find(a)
            while start >= 0:
                spans.append((di, start, start + len(a)))
                start = low.find(a, start + 1)
    pos = [any(d == seg_doc[i] and s < offs[-1][1] and e > offs[0][0] for d, s, e in spans)
           for i, offs in enumerate(seg_offsets)]
    if not any(pos) and gold:
        pos = [bool(gold[seg_doc[i]]) if seg_doc[i] < len(gold) else False for i in range(len(seg_offsets))]
    return pos


@dataclass
class Prepared:
    segments: list[list[int]]
    positives: torch.Tensor
    query: list[int]
    prompt: list[int]
    answer: list[int]
    prefix: list[int] = field(default_factory=list)
    docs: list[int] = field(default_factory=list)
    """Each segment's document (separators go between documents)."""
    separator: list[int] = field(default_factory=list)


def prepare(model: RAMModel, ex: Example, cfg: TrainConfig) -> Prepared | None:
    """Tokenized example; None when it has no usable context or answer."""
    tok = model.tokenizer
    segs, offs, seg_doc, _ = cut_segments(tok, ex.documents, model.segment_tokens)
    limit = max(1, cfg.max_context_tokens // model.segment_tokens)
    segs, offs, seg_doc = segs[:limit], offs[:limit], seg_doc[:limit]
    answer = list(tok(" " + ex.answers[0] if ex.answers else "", add_special_tokens=False)["input_ids"])
    if not segs or not answer:
        return None
    answer = answer[: cfg.max_answer_tokens]
    if tok.eos_token_id is not None:
        answer.append(int(tok.eos_token_id))
    pos = positive_segments(ex.documents, seg_doc, offs, ex.answers, ex.gold)
    return Prepared(segments=segs, positives=torch.tensor(pos, dtype=torch.bool),
                    query=list(tok(ex.question, add_special_tokens=False)["input_ids"]),
                    prompt=model.prompt_ids(ex.question), answer=answer, prefix=model.prefix_ids(),
                    docs=list(seg_doc), separator=model.separator_ids())


def example_loss(model: RAMModel, item: Prepared, rho: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, answer LM loss, InfoNCE) for one example at close-reading fraction ``rho``."""
    enc = model.encode(item.segments, item.query)
    n = len(item.segments)
    pos = item.positives.to(enc.relevance.device)
    if bool(pos.any()) and model.ram_config.contrastive_weight > 0:
        nce = multi_positive_info_nce(enc.relevance, pos, model.ram_config.temperature)
    else:
        nce = enc.relevance.sum() * 0.0
    k = int(rho * n + 1e-9)
    keep = [False] * n
    for i in torch.argsort(enc.relevance.detach(), descending=True)[:k].tolist():
        keep[i] = True
    embeds, mask = model.assemble(item.segments, keep, model.aligned(enc.skim), item.prompt, item.answer,
                                  prefix=item.prefix, docs=item.docs or None, separator=item.separator)
    labels = torch.full(mask.shape, -100, dtype=torch.long, device=mask.device)
    labels[0, -len(item.answer):] = torch.as_tensor(item.answer, dtype=torch.long, device=mask.device)
    out = model.decoder(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)
    lm = out.loss.float()
    return lm + model.ram_config.contrastive_weight * nce, lm, nce


def trainable_parameters(model: RAMModel, mode: str) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze the alignment layer and (by ``mode``) the encoder's LoRA or copy."""
    for p in model.parameters():
        p.requires_grad_(False)
    if mode != "none" and not model.ram_config.separate_encoder:
        raise ConfigError(f"train_encoder={mode!r} needs a model built with separate_encoder=True")
    if mode == "lora" and not model.ram_config.lora_r:
        raise ConfigError("train_encoder='lora' needs RAMConfig.lora_r > 0")
    if mode == "full" and model.ram_config.lora_r:
        raise ConfigError("train_encoder='full' on a LoRA model would save only its adapters: continue it with "
                          "train_encoder='lora', or start full training from a checkpoint without LoRA")
    chosen: list[torch.nn.Parameter] = list(model.align.parameters())
    if mode == "lora":
        chosen += [p for n, p in model.encoder.named_parameters() if "lora_" in n]
    elif mode == "full":
        chosen += list(model.encoder.parameters())
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def _items(model: RAMModel, examples: list[Example], cfg: TrainConfig, rng: random.Random) -> Iterator[Prepared]:
    order = list(range(len(examples)))
    prepared: dict[int, Prepared | None] = {}
    while True:
        rng.shuffle(order)
        usable = False
        for i in order:
            if i not in prepared:
                prepared[i] = prepare(model, examples[i], cfg)
            item = prepared[i]
            if item is not None:
                usable = True
                yield item
        if not usable:
            raise InvalidInputError("no usable training example (every one lacks context or answer tokens)")


def train_ram(model: RAMModel, examples: list[Example], cfg: TrainConfig,
              log: Callable[[str], None] | None = None) -> TrainResult:
    """Optimise ``model`` in place on ``examples``; returns the loss curve."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    params = trainable_parameters(model, cfg.train_encoder)
    for p in params:  # optimiser state and updates in float32, whatever the backbone's dtype
        if p.dtype != torch.float32:
            p.data = p.data.float()
    cuda = model.device.type == "cuda"
    bf16 = cuda if cfg.bf16 is None else bool(cfg.bf16 and cuda)
    if cfg.gradient_checkpointing:
        _checkpointing(model, on=True)
    model.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    result = TrainResult()
    items = _items(model, examples, cfg, rng)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        tot = lm_sum = nce_sum = 0.0
        for _ in range(cfg.grad_accum):
            item = next(items)
            rho = cfg.keep_ratio if cfg.keep_ratio is not None else 1.0 - rng.random()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss, lm, nce = example_loss(model, item, rho)
            (loss / cfg.grad_accum).backward()
            tot += float(loss.detach()) / cfg.grad_accum
            lm_sum += float(lm.detach()) / cfg.grad_accum
            nce_sum += float(nce.detach()) / cfg.grad_accum
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        if not math.isfinite(tot):
            raise FloatingPointError(f"RAM training diverged at step {step + 1} (loss {tot})")
        result.loss.append(tot)
        result.lm_loss.append(lm_sum)
        result.contrastive_loss.append(nce_sum)
        if log is not None and (step + 1) % max(1, cfg.log_every) == 0:
            log(f"step {step + 1}/{cfg.steps} loss {tot:.4f} lm {lm_sum:.4f} infonce {nce_sum:.4f}")
    if cfg.gradient_checkpointing:
        _checkpointing(model, on=False)
    model.eval()
    result.steps = cfg.steps
    result.seconds = time.perf_counter() - t0
    return result


def _checkpointing(model: RAMModel, *, on: bool) -> None:
    """Activation checkpointing on the decoder (and a separate encoder); transformers 5 renamed the switch."""
    targets = [model.decoder]
    if model.ram_config.separate_encoder:
        targets.append(model.encoder_base())
    for t in targets:
        name = "activation_checkpointing" if hasattr(t, "activation_checkpointing_enable") else "gradient_checkpointing"
        if on:
            getattr(t, f"{name}_enable")(**{f"{name}_kwargs": {"use_reentrant": False}})
        else:
            getattr(t, f"{name}_disable")()
