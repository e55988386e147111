"""``pocsdk train memosight``: SFT a causal LM to write memory tokens after each thought step (MemoSight)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pocsdk.cli.train import check_writable, train_app
from pocsdk.errors import ConfigError, PocError


@train_app.command("memosight")
def train_memosight_command(
    base: str = typer.Option(..., help="Base causal LM: local folder, cached hub id, or .gguf file."),
    data: Path = typer.Option(..., exists=True, dir_okay=False,
                              help="Traces: Bespoke-Stratos .jsonl, GSM8K .jsonl, or question/reasoning/answer."),
    out: Path = typer.Option(Path("memosight-checkpoint"), help="Checkpoint folder to write."),
    gguf_file: Optional[str] = typer.Option(None, help="GGUF file name inside --base."),
    ratios: str = typer.Option("4", help="Compression ratios sampled per example, comma separated (2,4,6,8,16)."),
    split: str = typer.Option("blank_line", help="Step boundaries: blank_line | line."),
    max_offset: int = typer.Option(2, help="Foresight offsets 0..N; -1 trains without foresight tokens."),
    lm_weight: float = typer.Option(0.7, help="Weight of the next-token loss."),
    mtp_weight: float = typer.Option(0.3, help="Weight of the foresight (multi-token) loss."),
    window: int = typer.Option(0, help="HybridThinker: raw steps kept visible (0 = MemoSight)."),
    steps: int = typer.Option(1000, help="Optimiser steps."),
    lr: float = typer.Option(1e-5, help="Learning rate (AdamW)."),
    batch_size: int = typer.Option(1, help="Examples per micro-batch."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimiser step."),
    max_length: int = typer.Option(4096, help="Longest layout in tokens (trailing steps are dropped)."),
    max_examples: Optional[int] = typer.Option(None, help="Read at most this many traces."),
    lora_r: int = typer.Option(0, help="LoRA rank (0 = full fine-tuning)."),
    lora_alpha: int = typer.Option(32, help="LoRA alpha."),
    gradient_checkpointing: bool = typer.Option(True, help="Recompute activations in the backward pass."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", help="auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16."),
    attn_implementation: str = typer.Option("sdpa", help="sdpa | eager."),
    seed: int = typer.Option(0, help="Random seed."),
    log_every: int = typer.Option(10, help="Print the loss every N steps."),
) -> None:
    """Train MemoSight: memory tokens after each step, EPL positions, foresight tokens; 0.7 LM + 0.3 MTP."""
    try:
        from pocsdk.compressors._torch import resolve_device
        from pocsdk.reasoning.memosight.model import FEATURE, load_model
        from pocsdk.reasoning.memosight.tokens import add_special_tokens
        from pocsdk.reasoning.memosight.training import (
            TrainConfig,
            encode_traces,
            prepare_lora,
            read_traces,
            save,
            train,
        )

        try:
            ratio_list = tuple(float(r) for r in ratios.split(",") if r.strip())
        except ValueError:
            raise ConfigError(f"--ratios must be comma-separated numbers, got {ratios!r}") from None
        cfg = TrainConfig(ratios=ratio_list, lm_weight=lm_weight, mtp_weight=mtp_weight,
                          max_offset=None if max_offset < 0 else max_offset, window=window, steps=steps, lr=lr,
                          grad_accum=grad_accum, batch_size=batch_size, max_length=max_length,
                          gradient_checkpointing=gradient_checkpointing, lora_r=lora_r, lora_alpha=lora_alpha,
                          seed=seed, log_every=log_every)
        check_writable(out)
        dev = resolve_device(device, FEATURE)
        dt = ("bfloat16" if dev.startswith("cuda") else "float32") if dtype == "auto" else dtype
        traces = read_traces(data, limit=max_examples, split=split)
        model, tokenizer = load_model(base, gguf_file=gguf_file, device=dev, dtype=dt,
                                      attn_implementation=attn_implementation)
        ids = add_special_tokens(tokenizer, model)
        layouts = encode_traces(tokenizer, ids, traces, cfg)
        if lora_r > 0:
            model = prepare_lora(model, ids, cfg)
        typer.echo(f"training MemoSight on {len(layouts)} traces ({dev}, {dt}, ratios {ratio_list})", err=True)
        result = train(model, layouts, cfg, log=lambda m: typer.echo(m, err=True))
        save(model, tokenizer, out, {"method": "memosight", "base": base, "data": str(data), "ratios": ratio_list,
                                     "max_offset": cfg.max_offset, "window": window, "steps": result.steps,
                                     "lr": lr, "lm_weight": lm_weight, "mtp_weight": mtp_weight,
                                     "final_loss": result.loss[-1]})
        typer.echo(json.dumps({"checkpoint": str(out), "steps": result.steps, "seconds": round(result.seconds, 2),
                               "first_loss": result.loss[0], "final_loss": result.loss[-1]}))
    except PocError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
