"""MemoSight speed and memory (issue 7): KV cache and decoding speed against vanilla greedy decoding.

Every mode decodes the same number of new tokens greedily (EOS ignored) from the same prompt:

* ``hf-generate``   transformers' own ``model.generate`` (reference for the plain decoding speed);
* ``vanilla``       pocsdk's loop without memory tokens or drafts (same code path as MemoSight);
* ``memosight``     step compression: memory tokens after every step, raw step evicted;
* ``memosight+fs``  plus fused foresight drafting (``--draft-tokens``, default 2);
* ``oracle-fs``     (``--oracle``) drafts taken from the true greedy output: the ceiling of the drafting
  mechanism at 100% acceptance, *not* a model result.

Models are randomly initialised shapes (``tiny``, ``small``, ``7b-shape`` = Qwen2.5-7B dimensions) or real
weights (``--base``, e.g. the SmolLM2-135M GGUF). Untrained models never emit the splitter, so step
boundaries are forced every ``--step-tokens`` tokens (valid for speed and memory, not for accuracy);
untrained foresight tokens are never accepted, so ``memosight+fs`` on them measures the drafting overhead.

    python benchmarks/memosight_speed.py                                   # tiny + small on CPU
    python benchmarks/memosight_speed.py --model-size 7b-shape --device cuda --new-tokens 1024 --oracle
    python benchmarks/memosight_speed.py --model-size --base /path/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from pocsdk.testing.results import write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=32000),
    "7b-shape": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064),
}
SECTION = "## MemoSight speed (issue 7)"


@dataclass
class Row:
    model: str
    mode: str
    device: str
    new_tokens: int
    seconds: float
    tokens_per_s: float
    forward_passes: int
    passes_per_token: float
    peak_kv_entries: int
    peak_kv_bytes: int
    final_kv_entries: int
    acceptance: float | None


def build_model(size: str, device: str, dtype: Any, seed: int) -> tuple[Any, Any]:
    """(model, tokens) for a random Qwen2-shaped model; tokens are fresh ids past the vocabulary."""
    import torch
    import transformers

    from pocsdk.reasoning.memosight.tokens import TokenIds

    shape: dict[str, Any] = dict(SHAPES[size])
    n_mem = 64
    vocab = shape["vocab_size"]
    shape["vocab_size"] = vocab + 3 + n_mem
    cfg = transformers.Qwen2Config(**shape, max_position_embeddings=32768, tie_word_embeddings=False)
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.config._attn_implementation = "sdpa"
    ids = TokenIds(splitter=vocab, continue_=vocab + 1, foresight=vocab + 2,
                   memory=tuple(range(vocab + 3, vocab + 3 + n_mem)), eos=None)
    return model.eval(), ids


def load_real(base: str, device: str, dtype: str) -> tuple[Any, Any]:
    from pocsdk.reasoning.memosight.model import load_model
    from pocsdk.reasoning.memosight.tokens import SpecialTokens, add_special_tokens

    model, tok = load_model(base, device=device, dtype=dtype, attn_implementation="sdpa")
    ids = add_special_tokens(tok, model, SpecialTokens(max_memory=64))
    return model.eval(), ids


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def run(model: Any, ids: Any, name: str, device: str, args: argparse.Namespace) -> list[Row]:
    import torch

    from pocsdk.reasoning.memosight.generate import DecodeConfig, decode

    gen = torch.Generator().manual_seed(args.seed)
    vocab = min(ids.splitter, 30000)
    prompt = torch.randint(10, vocab, (args.prompt_tokens,), generator=gen).tolist()
    n = args.new_tokens
    rows: list[Row] = []

    def timed(mode: str, cfg: DecodeConfig | None, draft_fn: Any = None) -> list[int]:
        times, res, out = [], None, []
        for _ in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            if cfg is None:
                with torch.no_grad():
                    seq = model.generate(torch.tensor([prompt], device=device), max_new_tokens=n,
                                         min_new_tokens=n, do_sample=False)
                out = seq[0, len(prompt):].tolist()
            else:
                res = decode(model, prompt, ids, cfg, draft_fn=draft_fn)
                out = res.output_ids
            sync(device)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        if res is None:  # hf-generate: one pass per token, plain cache
            passes, peak, peak_b, final, acc = n, len(prompt) + n - 1, 0, len(prompt) + n - 1, None
        else:
            passes, peak, peak_b, final = res.forward_passes, res.peak_kv, res.peak_kv_bytes, res.final_kv
            acc = res.accepted / res.drafted if res.drafted else None
        rows.append(Row(name, mode, device, len(out), round(sec, 3), round(len(out) / sec, 2), passes,
                        round(passes / len(out), 3), peak, peak_b, final, None if acc is None else round(acc, 3)))
        print(json.dumps(asdict(rows[-1])), flush=True)
        return out

    every, ratio, k = args.step_tokens, args.ratio, args.draft_tokens
    common: dict[str, Any] = {"max_new_tokens": n, "stop_at_eos": False}
    if not args.skip_hf:
        timed("hf-generate", None)
    timed("vanilla", DecodeConfig(compression_ratio=None, draft_tokens=0, **common))
    ref = timed("memosight", DecodeConfig(compression_ratio=ratio, draft_tokens=0, force_split_every=every,
                                          window=args.window, **common))
    cfg_fs = DecodeConfig(compression_ratio=ratio, draft_tokens=k, force_split_every=every, window=args.window,
                          **common)
    timed("memosight+fs", cfg_fs)
    if args.oracle:
        timed("oracle-fs", cfg_fs, draft_fn=lambda done, _p: ref[len(done): len(done) + k])
    if rows[0].mode == "hf-generate":  # hf-generate's KV bytes: same per-entry size as the vanilla loop
        van = next(r for r in rows if r.mode == "vanilla")
        rows[0].peak_kv_bytes = int(van.peak_kv_bytes * rows[0].peak_kv_entries / max(1, van.peak_kv_entries))
    return rows


def markdown(rows: list[Row], args: argparse.Namespace, command: str) -> str:
    lines = [SECTION, "",
             f"Greedy decoding of {args.new_tokens} new tokens after a {args.prompt_tokens}-token random prompt; "
             f"steps forced every {args.step_tokens} tokens, compression ratio {args.ratio} "
             f"(m = ceil({args.step_tokens}/{args.ratio}) memory tokens + 1 continue token kept per step), "
             f"window {args.window}, {args.draft_tokens} foresight drafts per pass; median of {args.repeats} runs. "
             "KV entries are tokens per layer (peak includes the transient draft and foresight entries of a pass); "
             "*KV saving* = 1 - peak / vanilla peak; *speed-up* = tokens/s over `vanilla`.",
             "",
             "| model | mode | device | tokens/s | speed-up | passes/token | acceptance | peak KV | peak KV MiB | "
             "KV saving | final KV |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        van = next(v for v in rows if v.model == r.model and v.mode == "vanilla")
        lines.append(
            f"| {r.model} | {r.mode} | {r.device} | {r.tokens_per_s} | {r.tokens_per_s / van.tokens_per_s:.2f}x | "
            f"{r.passes_per_token} | {'' if r.acceptance is None else r.acceptance} | {r.peak_kv_entries} | "
            f"{r.peak_kv_bytes / 2**20:.2f} | {1 - r.peak_kv_entries / van.peak_kv_entries:.1%} | "
            f"{r.final_kv_entries} |")
    lines += ["", "Untrained models: the memory tokens are forced and never learned, so these rows measure cost, not "
              "accuracy. Foresight drafts of untrained models are accepted only where greedy decoding repeats "
              "itself (random models fall into loops), so their `memosight+fs` acceptance says nothing about a "
              "trained MemoSight model; `oracle-fs` (drafts from the true greedy output) is the ceiling of the "
              "fused drafting (drafts equal to the splitter are never accepted, hence below 100%)."]
    if not any(r.device.startswith("cuda") for r in rows):
        lines += ["", "**Not measured here:** the paper's GPU targets (up to 66% less KV cache and 1.56x faster "
                  "inference at 7B) need a GPU, and none was available in this session. Command for that run: "
                  "`python benchmarks/memosight_speed.py --model-size 7b-shape --device cuda --new-tokens 1024 "
                  "--step-tokens 64 --ratio 6 --oracle --write-results`."]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    lines += ["", f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (shared machine: timings are "
              "noisy).", "", f"Command: `{command}` ({date.today().isoformat()}).", ""]
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", nargs="*", default=["tiny", "small"], choices=sorted(SHAPES),
                   help="Random shapes to run (none: only --base).")
    p.add_argument("--base", help="Also run real weights (folder or .gguf file).")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bfloat16 on CUDA, else float32).")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--step-tokens", type=int, default=48, help="Forced step length (splitter included).")
    p.add_argument("--ratio", type=float, default=6.0)
    p.add_argument("--window", type=int, default=0)
    p.add_argument("--draft-tokens", type=int, default=2)
    p.add_argument("--oracle", action="store_true", help="Also run drafts from the true greedy output (ceiling).")
    p.add_argument("--skip-hf", action="store_true", help="Skip the transformers generate() reference.")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="Write the rows here as JSON.")
    p.add_argument("--write-results", action="store_true", help="Write the section into benchmarks/RESULTS.md.")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    rows: list[Row] = []
    for size in args.model_size:
        model, ids = build_model(size, args.device, getattr(torch, dtype_name), args.seed)
        rows += run(model, ids, f"{size} (random)", args.device, args)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.base:
        model, ids = load_real(args.base, args.device, dtype_name)
        rows += run(model, ids, f"{Path(args.base).name} (real weights)", args.device, args)
    command = "python benchmarks/memosight_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(rows, args, command.strip())
    print(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2), encoding="utf-8")
    if args.write_results:
        write_section(Path(__file__).with_name("RESULTS.md"), SECTION, text)
    return rows


if __name__ == "__main__":
    main()
