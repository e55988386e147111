"""``pocsdk train ram``: fit the RAM alignment layer (and optionally its encoder) on NQ-style data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pocsdk.cli.train import check_writable, train_app
from pocsdk.errors import PocError


@train_app.command("ram")
def train_ram_command(
    backbone: str = typer.Option(..., help="Decoder backbone: local folder, cached hub id, or .gguf file."),
    data: Path = typer.Option(..., exists=True, dir_okay=False,
                              help="NQ-style .jsonl(.gz): question, answers, ctxs."),
    out: Path = typer.Option(Path("ram-checkpoint"), help="Checkpoint folder to write."),
    gguf_file: Optional[str] = typer.Option(None, help="GGUF file name inside --backbone."),
    init: Optional[str] = typer.Option(None, help="Start from a pocsdk RAM checkpoint or an official .safetensors."),
    encoder_layers: Optional[int] = typer.Option(None, help="Backbone layers used as the encoder (default 8, as "
                                                           "the official release; with --init: the checkpoint's)."),
    segment_tokens: Optional[int] = typer.Option(None, help="Segment width w in tokens (default 32; with --init: "
                                                           "the checkpoint's)."),
    query_template: Optional[str] = typer.Option(None, help="Decoder prompt after the memory (default "
                                                          "'Question:{query}\\nAnswer:'; with --init: the "
                                                          "checkpoint's)."),
    context_prefix: Optional[str] = typer.Option(None, help="Decoder text before the memory, e.g. a chat template's "
                                                          "user turn (default none; with --init: the checkpoint's)."),
    temperature: Optional[float] = typer.Option(None, help="InfoNCE temperature (default 0.1; with --init: the "
                                                           "checkpoint's)."),
    contrastive_weight: Optional[float] = typer.Option(None, help="Weight of the InfoNCE term (default 1.0; with "
                                                                "--init: the checkpoint's)."),
    train_encoder: str = typer.Option("none", help="none (alignment only) | lora | full (separate encoder copy)."),
    lora_r: Optional[int] = typer.Option(None, help="LoRA rank when --train-encoder lora (default 16; with "
                                                   "--init: the checkpoint's, which cannot change)."),
    lora_alpha: Optional[int] = typer.Option(None, help="LoRA alpha (default 32; with --init: the checkpoint's)."),
    steps: int = typer.Option(1000, help="Optimiser steps."),
    lr: float = typer.Option(1e-4, help="Learning rate (AdamW)."),
    grad_accum: int = typer.Option(1, help="Examples per optimiser step."),
    keep_ratio: Optional[float] = typer.Option(None, help="Fixed close-reading fraction (default: uniform draw)."),
    max_examples: Optional[int] = typer.Option(None, help="Read at most this many examples."),
    max_context_tokens: int = typer.Option(4096, help="Truncate contexts to this many tokens."),
    gradient_checkpointing: bool = typer.Option(True, help="Recompute activations in the backward pass."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", help="auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16."),
    seed: int = typer.Option(0, help="Random seed."),
    log_every: int = typer.Option(10, help="Print the loss every N steps."),
    trust_remote_code: bool = typer.Option(False, help="Allow custom model code from the backbone folder."),
) -> None:
    """Train RAM: answer LM loss through the hybrid decoder input plus multi-positive InfoNCE over segments."""
    try:
        from dataclasses import replace

        from pocsdk.compressors._torch import resolve_device
        from pocsdk.compressors.ram.checkpoint import load_ram, save_ram
        from pocsdk.compressors.ram.config import RAMConfig
        from pocsdk.compressors.ram.model import RAMModel
        from pocsdk.compressors.ram.training import TrainConfig, read_examples, train_ram

        tcfg = TrainConfig(steps=steps, lr=lr, grad_accum=grad_accum, keep_ratio=keep_ratio,
                           train_encoder=train_encoder,  # type: ignore[arg-type]  # validated by TrainConfig
                           max_context_tokens=max_context_tokens, gradient_checkpointing=gradient_checkpointing,
                           seed=seed, log_every=log_every)
        check_writable(out)
        dev = resolve_device(device, "RAM training")
        dt = ("bfloat16" if dev.startswith("cuda") else "float32") if dtype == "auto" else dtype
        examples = read_examples(data, limit=max_examples)
        separate = train_encoder != "none"
        if init:
            model = load_ram(init, backbone, gguf_file=gguf_file, encoder_layers=encoder_layers,
                             segment_tokens=segment_tokens, device=dev, dtype=dt,
                             trust_remote_code=trust_remote_code, query_template=query_template,
                             context_prefix=context_prefix)
            if separate and not model.ram_config.separate_encoder:
                raise typer.BadParameter("--train-encoder needs a checkpoint with a separate encoder")
            rc = model.ram_config
            if (lora_r is not None and lora_r != rc.lora_r) or (lora_alpha is not None and lora_alpha != rc.lora_alpha):
                raise typer.BadParameter(f"--init's checkpoint has lora_r={rc.lora_r}, lora_alpha={rc.lora_alpha}; "
                                         "LoRA settings cannot change when continuing it")
            model.ram_config = replace(
                rc, temperature=rc.temperature if temperature is None else temperature,
                contrastive_weight=rc.contrastive_weight if contrastive_weight is None else contrastive_weight)
        else:
            encoder_layers = 8 if encoder_layers is None else encoder_layers
            segment_tokens = 32 if segment_tokens is None else segment_tokens
            temperature = 0.1 if temperature is None else temperature
            contrastive_weight = 1.0 if contrastive_weight is None else contrastive_weight
            lora_r = 16 if lora_r is None else lora_r
            lora_alpha = 32 if lora_alpha is None else lora_alpha
            query_template = "Question:{query}\nAnswer:" if query_template is None else query_template
            context_prefix = "" if context_prefix is None else context_prefix
            base = load_ram(None, backbone, gguf_file=gguf_file, encoder_layers=encoder_layers,
                            segment_tokens=segment_tokens, device=dev, dtype=dt,
                            trust_remote_code=trust_remote_code)
            cfg = RAMConfig(encoder_layers=encoder_layers, segment_tokens=segment_tokens, temperature=temperature,
                            contrastive_weight=contrastive_weight, separate_encoder=separate,
                            query_template=query_template, context_prefix=context_prefix,
                            lora_r=lora_r if train_encoder == "lora" else 0, lora_alpha=lora_alpha)
            model = RAMModel(base.decoder, base.tokenizer, cfg, source=base.source) if separate else base
            model.ram_config = replace(model.ram_config, temperature=temperature,
                                       contrastive_weight=contrastive_weight, query_template=query_template,
                                       context_prefix=context_prefix)
        typer.echo(f"training RAM on {len(examples)} examples ({dev}, {dt}, encoder: {train_encoder})", err=True)
        result = train_ram(model, examples, tcfg, log=lambda m: typer.echo(m, err=True))
        save_ram(model, out, extra={"training": {"data": str(data), "steps": result.steps, "lr": lr,
                                                 "train_encoder": train_encoder, "final_loss": result.loss[-1]}})
        typer.echo(json.dumps({"checkpoint": str(out), "steps": result.steps, "seconds": round(result.seconds, 2),
                               "first_loss": result.loss[0], "final_loss": result.loss[-1]}))
    except PocError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
