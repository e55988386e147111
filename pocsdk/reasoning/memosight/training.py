"""MemoSight SFT: reasoning traces with memory tokens and foresight tokens, loss = 0.7 LM + 0.3 MTP.

The LM term is next-token cross-entropy on every position with a target except foresight tokens; the MTP
term is cross-entropy on the foresight tokens (each predicts the token ``d + 1`` ahead of its anchor).
Weights follow the official config (``lm_loss_weight`` 0.7, ``mtp_loss_weight`` 0.3); both are settings.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocsdk.compressors._torch import import_torch
from pocsdk.errors import ConfigError, InvalidInputError
from pocsdk.reasoning.memosight.data import IGNORE, RATIOS, Layout, encode_trace, split_steps
from pocsdk.reasoning.memosight.model import FEATURE, collate, model_device, model_dtype
from pocsdk.reasoning.memosight.tokens import TokenIds


@dataclass
class Trace:
    """One reasoning trace: question, steps, final answer."""

    question: str
    steps: list[str]
    answer: str
    system: str | None = None


@dataclass
class TrainConfig:
    """SFT settings. ``ratios`` are sampled per example so one model serves several compression ratios."""

    ratios: tuple[float, ...] = (4.0,)
    lm_weight: float = 0.7
    mtp_weight: float = 0.3
    max_offset: int | None = 2
    """Foresight offsets d in 0..max_offset; None trains without foresight tokens."""
    window: int = 0
    steps: int = 1000
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_accum: int = 1
    batch_size: int = 1
    max_length: int = 4096
    gradient_checkpointing: bool = True
    lora_r: int = 0
    """0 trains all weights; > 0 trains LoRA adapters plus the MemoSight token embeddings (peft)."""
    lora_alpha: int = 32
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if not self.ratios or any(r <= 0 for r in self.ratios):
            raise ConfigError("ratios must be a non-empty list of positive numbers")
        if self.lm_weight < 0 or self.mtp_weight < 0 or self.lm_weight + self.mtp_weight == 0:
            raise ConfigError("loss weights must be >= 0 and not both 0")
        if self.steps < 1 or self.grad_accum < 1 or self.batch_size < 1 or self.max_length < 1:
            raise ConfigError("steps, grad_accum, batch_size and max_length must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"the learning rate must be a finite number > 0, got {self.lr!r}")
        if self.lora_r < 0 or self.lora_alpha < 1 or self.window < 0:
            raise ConfigError("lora_r (0 for full fine-tuning) and window must be >= 0, lora_alpha >= 1")


@dataclass
class TrainResult:
    """Loss curve and wall time of one run."""

    steps: int
    seconds: float
    loss: list[float] = field(default_factory=list)
    lm_loss: list[float] = field(default_factory=list)
    mtp_loss: list[float] = field(default_factory=list)


# --- reading traces ----------------------------------------------------------------------------------------


def _strip_tags(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    j = text.find(end, i + len(start))
    return text[i + len(start): j if j >= 0 else len(text)].strip()


def parse_record(rec: dict[str, Any], split: str = "blank_line") -> Trace | None:
    """A trace from one JSON record, or None when the record has no reasoning.

    Bespoke-Stratos (``conversations`` with ``<|begin_of_thought|>`` / ``<|begin_of_solution|>``), GSM8K
    (``question`` + ``answer``: one step per line, the ``####`` line is the answer) and a generic
    ``question`` / ``reasoning`` / ``answer`` form.
    """
    if "conversations" in rec:
        turns = rec["conversations"]
        user = next((t["value"] for t in turns if t.get("from") in ("user", "human")), None)
        bot = next((t["value"] for t in turns if t.get("from") in ("assistant", "gpt")), None)
        if not user or not bot:
            return None
        thought = _strip_tags(bot, "<|begin_of_thought|>", "<|end_of_thought|>")
        solution = _strip_tags(bot, "<|begin_of_solution|>", "<|end_of_solution|>")
        if thought is None:
            parts = split_steps(bot, split)
            return Trace(user, parts[:-1], parts[-1], rec.get("system")) if len(parts) > 1 else None
        return Trace(user, split_steps(thought, split), solution or "", rec.get("system"))
    if "question" in rec and "reasoning" in rec:
        return Trace(rec["question"], split_steps(rec["reasoning"], split), str(rec.get("answer", "")))
    if "question" in rec and "answer" in rec and "####" in str(rec["answer"]):
        body, final = str(rec["answer"]).rsplit("####", 1)
        return Trace(rec["question"], split_steps(body, "line"), f"#### {final.strip()}")
    return None


def read_traces(path: str | Path, limit: int | None = None, split: str = "blank_line") -> list[Trace]:
    """Traces from a .jsonl / .jsonl.gz file or a JSON list; records without reasoning are skipped."""
    p = Path(path)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (or None for all), got {limit}")
    opener: Callable[..., Any] = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip.BadGzipFile is an OSError
        raise InvalidInputError(f"cannot read traces {p} (UTF-8 JSON or JSON Lines, gzipped or not): {exc}") \
            from exc
    records: list[tuple[str, Any]] = []  # (where, record)
    whole: Any = None
    if text.lstrip().startswith(("[", "{")):
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None  # JSON Lines after all
    if isinstance(whole, dict) and isinstance(whole.get("examples"), list):
        whole = whole["examples"]
    if isinstance(whole, list):
        records = [(f"{p} record {i}", rec) for i, rec in enumerate(whole)]
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{p}:{lineno}", json.loads(line)))
            except ValueError as exc:
                raise InvalidInputError(f"{p}:{lineno}: not valid JSON ({exc})") from None
    out: list[Trace] = []
    for where, rec in records:
        try:
            tr = parse_record(rec, split) if isinstance(rec, dict) else None
        except (TypeError, AttributeError, KeyError) as exc:
            raise InvalidInputError(f"{where}: not a reasoning record ({exc})") from None
        if tr is not None and not isinstance(tr.question, str):
            raise InvalidInputError(f"{where}: the question must be a string")
        if tr is not None and tr.steps:
            out.append(tr)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InvalidInputError(f"{p}: no reasoning traces found (expected Bespoke-Stratos, GSM8K or "
                                "question/reasoning/answer records)")
    return out


def encode_traces(tokenizer: Any, ids: TokenIds, traces: Sequence[Trace], cfg: TrainConfig) -> list[Layout]:
    """Layouts of all traces; each gets one ratio from ``cfg.ratios`` (seeded)."""
    rng = random.Random(cfg.seed)
    layouts = [encode_trace(tokenizer, ids, t.question, t.steps, t.answer, rng.choice(cfg.ratios), system=t.system,
                            window=cfg.window, max_offset=cfg.max_offset, seed=rng.randrange(2**31),
                            max_length=cfg.max_length) for t in traces]
    # a prompt that fills max_length leaves nothing to learn: training on it logs a loss of 0 and teaches nothing
    useful = [lay for lay in layouts if any(t != IGNORE for t in lay.targets)]
    if not useful:
        raise InvalidInputError(f"no trace fits max_length={cfg.max_length} with a step to learn from: raise "
                                "--max-length or use shorter traces")
    if len(useful) < len(layouts):
        warnings.warn(f"{len(layouts) - len(useful)} of {len(layouts)} traces have no step within "
                      f"max_length={cfg.max_length} and are left out", UserWarning, stacklevel=2)
    return useful


# --- loss and loop ----------------------------------------------------------------------------------------


def memosight_loss(logits: Any, targets: Any, foresight: Any, lm_weight: float = 0.7,
                   mtp_weight: float = 0.3) -> tuple[Any, Any, Any]:
    """(total, lm, mtp): mean cross-entropy over text targets and over foresight targets, weighted."""
    torch = import_torch(FEATURE)
    flat = logits.float().reshape(-1, logits.shape[-1])
    tgt = targets.reshape(-1)
    fore = foresight.reshape(-1)
    ce = torch.nn.functional.cross_entropy(flat, tgt.clamp_min(0), reduction="none")
    valid = tgt != -100
    lm_sel, mtp_sel = valid & ~fore, valid & fore
    zero = ce.sum() * 0.0
    lm = ce[lm_sel].mean() if lm_sel.any() else zero
    mtp = ce[mtp_sel].mean() if mtp_sel.any() else zero
    return lm_weight * lm + mtp_weight * mtp, lm, mtp


def _batches(layouts: list[Layout], size: int, seed: int) -> Iterator[list[Layout]]:
    rng = random.Random(seed)
    while True:
        order = list(range(len(layouts)))
        rng.shuffle(order)
        for i in range(0, len(order), size):
            yield [layouts[j] for j in order[i: i + size]]


def prepare_lora(model: Any, ids: TokenIds, cfg: TrainConfig) -> Any:
    """Wrap ``model`` with LoRA adapters (all linear projections) and trainable MemoSight token rows."""
    try:
        import peft
    except ImportError as exc:
        from pocsdk.errors import MissingDependencyError

        raise MissingDependencyError("MemoSight LoRA training", "train", "peft") from exc
    lcfg = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"],
                           trainable_token_indices=_token_rows(model, sorted(ids.special())))
    return peft.get_peft_model(model, lcfg)


def _token_rows(model: Any, rows: list[int]) -> list[int] | dict[str, list[int]]:
    """Which rows peft trains for the MemoSight tokens. With tied embeddings the input rows are the output
    rows; untied (many 7B/8B reasoning bases), the output head's rows must learn too, or the model never
    emits the splitter and never compresses."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr():
        return rows
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(inp)].rsplit(".", 1)[-1]: rows, names[id(out)].rsplit(".", 1)[-1]: rows}


def _enable_checkpointing(model: Any) -> None:
    """Activation checkpointing under its transformers 5.x name, or the 4.x one."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def train(model: Any, layouts: list[Layout], cfg: TrainConfig,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """AdamW SFT over ``layouts`` for ``cfg.steps`` optimiser steps; the model is left in eval mode."""
    torch = import_torch(FEATURE)
    if not layouts:
        raise InvalidInputError("no training layouts")
    torch.manual_seed(cfg.seed)
    device, dtype = model_device(model), model_dtype(model)
    if cfg.gradient_checkpointing:
        _enable_checkpointing(model)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # float32 master weights (as RAM's training): AdamW steps of lr 1e-5 on bfloat16 weights mostly round to
    # nothing (a norm weight of 1.0 moves in steps of 0.0078); the forward runs in the model's dtype by autocast
    low = dtype in (torch.bfloat16, torch.float16)
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=low)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = _batches(layouts, cfg.batch_size, cfg.seed)
    res = TrainResult(steps=0, seconds=0.0)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        tot = lm_acc = mtp_acc = 0.0
        for _ in range(cfg.grad_accum):
            batch = collate(next(batches), device=device, dtype=dtype)
            with autocast:
                out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                            attention_mask=batch["attention_mask"], use_cache=False)
            loss, lm, mtp = memosight_loss(out.logits, batch["targets"], batch["foresight"], cfg.lm_weight,
                                           cfg.mtp_weight)
            (loss / cfg.grad_accum).backward()
            tot += float(loss.detach()) / cfg.grad_accum
            lm_acc += float(lm.detach()) / cfg.grad_accum
            mtp_acc += float(mtp.detach()) / cfg.grad_accum
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        res.loss.append(tot)
        res.lm_loss.append(lm_acc)
        res.mtp_loss.append(mtp_acc)
        res.steps = step + 1
        if log is not None and (step % max(1, cfg.log_every) == 0 or step == cfg.steps - 1):
            log(f"step {step + 1}/{cfg.steps} loss {tot:.4f} (lm {lm_acc:.4f}, mtp {mtp_acc:.4f})")
    res.seconds = time.perf_counter() - t0
    if low:  # back to the model's dtype, as it is saved and served
        for p in params:
            p.data = p.data.to(dtype)
    model.eval()
    return res


def save(model: Any, tokenizer: Any, out: str | Path, meta: dict[str, Any]) -> Path:
    """Write the (LoRA-merged) model as safetensors, the tokenizer with the MemoSight tokens, and meta."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "memosight.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return path


__all__ = [
    "RATIOS",
    "Trace",
    "TrainConfig",
    "TrainResult",
    "encode_traces",
    "memosight_loss",
    "parse_record",
    "prepare_lora",
    "read_traces",
    "save",
    "train",
]
